"""No cell of a review list is a spreadsheet formula: a photo or test image named ``=...``, ``+...``, ``-...``
or ``@...`` is written with a leading single quote, by predict and by the submission (shards and their merge
too, which reads the lists back)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from pipeline.inference.review import read_review, review_path
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

NAMES = ["=HYPERLINK(1).jpg", "+1.jpg", "-2.jpg", "@SUM(A1).jpg"]


def _cells(path) -> list[str]:
    return pd.read_csv(path, dtype=str, keep_default_na=False)["img"].tolist()


def test_predict_s_review_list_has_no_formula_cell(split_model, tiny_data, tmp_path, capsys):
    _, apart, _ = split_model
    photos = tmp_path / "in"
    photos.mkdir()
    for name, src in zip(NAMES, sorted((tiny_data / "test").glob("*.jpg"))):
        shutil.copy(src, photos / name)
    code, _, _ = run_cli(capsys, "predict", photos, "--pretrained", apart, "--out", tmp_path / "p")
    assert code == 0
    assert sorted(_cells(tmp_path / "p" / "review.csv")) == sorted(f"'{n}" for n in NAMES)


def test_the_submission_s_review_lists_have_no_formula_cell(split_model, tiny_data, tmp_path, capsys):
    _, apart, _ = split_model
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    for name, src in zip(NAMES, sorted((tiny_data / "test").glob("*.jpg"))):
        shutil.copy(src, data / "test" / name)
    pd.DataFrame({"img": NAMES, "rle_mask": ""}).to_csv(data / "sample_submission.csv", index=False)
    out = tmp_path / "sub" / "s.csv.gz"
    for shard in ("0/2", "1/2"):
        argv = ["submission", "--pretrained", apart, "--data", data, "--out", out, "--shard", shard]
        assert run_cli(capsys, *argv)[0] == 0
    assert run_cli(capsys, "merge", "--data", data, "--out", out)[0] == 0  # reads the shards' lists back
    assert sorted(_cells(review_path(out))) == sorted(f"'{n}" for n in NAMES)
    assert sorted(read_review(review_path(out)).img) == sorted(NAMES)
