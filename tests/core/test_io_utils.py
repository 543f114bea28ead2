"""Safe reads and writes (pipeline/core/io_utils.py): output locks, names read from files kept plain."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from pipeline.core.io_utils import OutputLock, read_json, write_json
from pipeline.data.folds import load_folds
from pipeline.data.layout import DataError
from pipeline.masks.submission_csv import read_sample_names
from tests.conftest import tiny_submission as _sub


def test_a_lock_in_a_user_s_folder_is_removed_on_release_and_still_excludes(tmp_path):
    target = tmp_path / ".predict"
    with OutputLock(target, "predicting into it", remove=True):
        with pytest.raises(Exception, match="another run is predicting into it"):
            with OutputLock(target, "predicting into it", remove=True):
                pass
        assert (tmp_path / ".predict.lock").is_file()
    assert list(tmp_path.iterdir()) == []  # nothing of ours left in the user's folder
    with OutputLock(target, remove=True):  # and the next run takes it
        pass


def test_names_read_from_files_never_leave_their_folder(lab, tiny_data, tmp_path):
    runs, recipe = lab
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    names = read_sample_names(data / "sample_submission.csv")
    train_img = sorted((data / "train").iterdir())[0].name
    sample = data / "sample_submission.csv"
    sample.write_text("img,rle_mask\n" + "".join(f"{n},1 1\n" for n in [f"../train/{train_img}", *names[1:]]))
    with pytest.raises(DataError, match=r"'\.\./train/.*' is not a plain file name"):
        _sub(recipe, data, tmp_path / "s.csv.gz")  # used to predict a train image into the submission
    folds = pd.read_csv(tiny_data.parent / "folds.csv", dtype={"car_id": str})
    folds.loc[0, "img"] = f"../test/{names[0]}"
    folds.to_csv(tmp_path / "folds.csv", index=False)
    with pytest.raises(DataError, match="not a plain file name"):
        load_folds(tmp_path / "folds.csv")
    oof = runs / "a" / "fold0" / "oof.json"
    info = read_json(oof)
    info["checkpoint"] = "../../b/fold0/best.pt"
    write_json(oof, info)
    from pipeline.lineage.runs import read_oof_summary

    with pytest.raises(DataError, match="not a plain file name"):
        read_oof_summary(oof)
