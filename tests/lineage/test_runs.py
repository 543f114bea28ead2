"""Runs as training left them (pipeline/lineage/runs.py): completed folds found, backups skipped, the
out-of-fold summaries checked against what made the maps."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline.core.io_utils import read_json, write_json
from pipeline.data.folds import load_folds
from pipeline.data.layout import DataError
from pipeline.lineage.runs import discover
from pipeline.stages.ensemble import tune
from tests.conftest import fake_fold
from tests.conftest import run_cli as _cli


def test_backup_copies_of_a_fold_are_not_runs(lab, tiny_data, tmp_path, capsys):
    runs, _ = lab
    shutil.copytree(runs / "a" / "fold0", runs / "a" / "fold0.bak")
    shutil.copytree(runs / "a" / "fold0", runs / "a" / "fold0_old")
    shutil.copytree(runs / "a", runs / "a_v1")
    (runs / "a" / "fold0_old" / "best.pt").write_bytes(b"a stale backup: must not block the real runs")
    recipe = tune(runs, tiny_data, tmp_path / "r.json", steps=2, n_jobs=1, quiet=True, allow_incomplete=True)
    assert [m["name"] for m in recipe["members"]] == ["a", "b"]
    assert recipe["members"][0]["checkpoints"] == ["runs/a/fold0/best.pt"]  # relative to the recipe's folder
    err = capsys.readouterr().err
    for copy in ("a/fold0.bak", "a/fold0_old", "a_v1/fold0"):
        assert f"{copy}: skipped" in err


def test_fake_fold_helper_is_a_complete_run(tiny_data, tmp_path):
    """The stand-in runs the other tests use pass the same checks as real ones (and fail like them)."""
    from pipeline.lineage.runs import discover

    folds = load_folds(tiny_data.parent / "folds.csv")
    images = sorted(folds[folds.fold == 0].img)[:2]
    fake_fold(tmp_path, "m", 0, images, [np.zeros((64, 96), np.uint8)] * 2)
    assert [f["fold"] for f in discover(tmp_path, quiet=True)["m"]] == [0]
    (tmp_path / "m" / "fold0" / "best.pt").write_bytes(b"other")
    with pytest.raises(DataError, match="written for another best.pt"):
        discover(tmp_path, quiet=True)


def test_same_recipe_ignores_speed_and_how_often_a_fold_is_scored():
    """A full run (never validated) and the fold that stands for it may differ in val_every, workers and
    caching: still one recipe. Any setting that changes the training is a different one."""
    from pipeline.lineage.runs import same_recipe

    fold = {
        "seed": 42,
        "model": {"encoder": "mobilenet_v2"},
        "train": {"epochs": 46, "val_every": 46, "num_workers": 0},
    }
    full = {**fold, "train": {"epochs": 46, "val_every": 8, "num_workers": 2, "cache_images": False}}
    assert same_recipe(fold, full) == []
    assert same_recipe(fold, {**full, "train": {**full["train"], "epochs": 23}}) == ["train"]
    assert same_recipe(fold, {**full, "seed": 1}) == ["seed"]


def test_folds_of_a_member_must_share_a_precision(tmp_path):
    runs = tmp_path / "runs"
    for fold, precision in ((0, "bf16"), (1, "fp32")):
        run = fake_fold(runs, "m", fold, ["a_01.jpg"], [np.zeros((4, 4), np.uint8)])
        write_json(run / "oof.json", {**read_json(run / "oof.json"), "precision": precision})
    with pytest.raises(DataError, match=r"different precisions \(fold0 bf16, fold1 fp32\)"):
        discover(runs, quiet=True)


def test_malformed_oof_json_is_named(cli, tiny_data, tmp_path):
    fold = tmp_path / "runs" / "m" / "fold0"
    fold.mkdir(parents=True)
    (fold / "oof.json").write_text('{"fold": 0, "tta": [')
    assert f"{fold / 'oof.json'}: not valid JSON" in cli("ensemble", "--runs", tmp_path / "runs", "--data", tiny_data)
    (fold / "oof.json").write_text('{"fold": "zero"}')
    err = cli("ensemble", "--runs", tmp_path / "runs", "--data", tiny_data)
    assert f"{fold / 'oof.json'}: malformed oof.json" in err


def test_submission_and_predict_check_the_oof_summary_the_recipe_was_tuned_on(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    oof = runs / "a" / "fold0" / "oof.json"
    write_json(oof, {**read_json(oof), "note": "re-predicted since"})
    expected = "oof.json changed since the recipe was tuned"
    code, _, err = _cli(capsys, "submission", "--recipe", recipe, "--data", tiny_data, "--out", tmp_path / "s.csv.gz")
    assert code == 2 and expected in err
    code, _, err = _cli(capsys, "predict", tiny_data / "test", "--out", tmp_path / "p", "--recipe", recipe)
    assert code == 2 and expected in err
    code, out, _ = _cli(capsys, "lineage", recipe)
    assert code == 1 and "BROKEN" in out


@pytest.mark.parametrize("field, value", [("tta", ["hflip", "scale1.25"]), ("precision", "bf16"), ("threshold", 90)])
def test_a_hand_edited_oof_summary_is_refused_everywhere(lab, tiny_data, tmp_path, capsys, field, value):
    runs, _ = lab
    oof = runs / "b" / "fold0" / "oof.json"
    write_json(oof, {**read_json(oof), field: value})
    code, _, err = _cli(capsys, "ensemble", "--runs", runs, "--data", tiny_data, "--out", tmp_path / "r.json")
    assert code == 2 and "disagree(s) with" in err and field in err
    code, _, err = _cli(capsys, "evaluate", "--runs", runs, "--data", tiny_data, "--jobs", "1")
    assert code == 2 and "disagree(s) with" in err
    code, out, _ = _cli(capsys, "lineage", oof)
    assert code == 1 and "BROKEN" in out
