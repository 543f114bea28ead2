"""Records and outputs, through the command line: every export records the cars its weights saw (a fold's
checkpoint too), a score that may include them is refused or marked in every output, `predict` removes
only the scratch folders it made, `ensemble --out` and `evaluate --json` replace only their own kind of
file, and a killed export's staging folder is cleaned up."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from pipeline.core.io_utils import read_json
from pipeline.data.folds import load_folds, load_test_split
from pipeline.stages.export import export_model
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_a_fold_checkpoint_s_export_records_its_cars_and_is_kept_off_them(split_model, tiny_data, tmp_path, capsys):
    split, _, saw = split_model
    best = saw.parent / "runs" / "saw" / "fold0" / "best.pt"
    out = tmp_path / "fold0"
    assert run_cli(capsys, "export", "--checkpoint", best, "--out", out, "--dtype", "fp32")[0] == 0
    folds = load_folds(tiny_data.parent / "folds.csv")
    cars = read_json(out / "pipeline.json")["source"]["cars"]
    assert cars == {"trained_on": sorted(set(folds.car_id[folds.fold != 0])), "tuned_on": []}
    # It trained on a car of the test split (no split was set when it trained): its score there is refused.
    assert set(cars["trained_on"]) & load_test_split(split)
    code, out_text, err = run_cli(capsys, "evaluate", "--pretrained", out, "--data", tiny_data, "--test-split", split)
    assert code == 2 and "trained on 1 cars of the test split" in err
    # Without --test-split it is scored on fold 0's cars alone, and nothing says it may have seen them.
    per_image = tmp_path / "per.csv"
    code, out_text, err = run_cli(
        capsys, "evaluate", "--pretrained", out, "--data", tiny_data, "--per-image", per_image
    )
    assert code == 0 and "note" not in out_text + err
    assert {i[:12] for i in pd.read_csv(per_image).img} == set(folds.car_id[folds.fold == 0])


def test_a_full_run_exported_without_a_recipe_is_not_scored_on_its_cars(split_model, tiny_data, tmp_path, capsys):
    split, apart, saw = split_model
    for model, unseen in ((apart, load_test_split(split)), (saw, set())):  # trained on all but the split; on all
        out = tmp_path / f"{model.parent.name}-norecipe"
        export_model(model.parent / "runs" / model.parent.name / "full" / "final.pt", out, dtype="fp32", quiet=True)
        assert read_json(out / "pipeline.json")["source"]["cars"]["tuned_on"] == []  # nothing tuned it
        per_image = tmp_path / f"{model.parent.name}.csv"
        code, text, err = run_cli(
            capsys, "evaluate", "--pretrained", out, "--data", tiny_data, "--per-image", per_image
        )
        if unseen:
            assert code == 0 and "note" not in text + err
            assert {i[:12] for i in pd.read_csv(per_image).img} == unseen  # its training cars left out
        else:
            assert code == 2 and "was trained or tuned on every car here" in err


def test_a_score_that_may_include_seen_cars_is_marked_in_every_output(split_model, tiny_data, tmp_path, capsys):
    _, apart, _ = split_model
    folder = tmp_path / "old"
    shutil.copytree(apart, folder)
    spec = read_json(folder / "pipeline.json")
    spec["source"].update(trained=None, cars=None)  # a folder exported before its cars were recorded
    (folder / "pipeline.json").write_text(json.dumps(spec))
    summary = tmp_path / "summary.json"
    code, out, _ = run_cli(capsys, "evaluate", "--pretrained", folder, "--data", tiny_data, "--json", summary)
    assert code == 0 and "note on model:" in out and "does not record the cars it was trained on" in out
    assert "does not record the cars it was trained on" in read_json(summary)["note"]


def test_ensemble_and_evaluate_replace_only_their_own_kind_of_file(tiny_runs, tiny_data, tmp_path, capsys):
    runs, _ = tiny_runs
    folds = tmp_path / "folds.csv"
    shutil.copy(tiny_data.parent / "folds.csv", folds)
    before = folds.read_bytes()
    argv = ["ensemble", "--runs", runs, "--data", tiny_data, "--jobs", "1", "--steps", "1", "--allow-incomplete"]
    code, _, err = run_cli(capsys, *argv, "--postprocess", "none", "--out", folds)
    assert code == 2 and "exists and is not a recipe written by `make ensemble`" in err and folds.read_bytes() == before
    code, _, err = run_cli(capsys, "evaluate", "--runs", runs, "--data", tiny_data, "--jobs", "1", "--json", folds)
    assert code == 2 and "exists and is not an evaluate summary" in err and folds.read_bytes() == before
    recipe = tmp_path / "recipe.json"
    assert run_cli(capsys, *argv, "--postprocess", "none", "--out", recipe)[0] == 0
    assert run_cli(capsys, *argv, "--postprocess", "none", "--out", recipe)[0] == 0  # its own: replaced
    summary = tmp_path / "s.json"
    for _ in range(2):
        assert (
            run_cli(capsys, "evaluate", "--runs", runs, "--data", tiny_data, "--jobs", "1", "--json", summary)[0] == 0
        )
    assert run_cli(capsys, *argv, "--postprocess", "none", "--out", folds, "--force")[0] == 0  # asked for
    assert "members" in read_json(folds)


def test_predict_removes_only_the_scratch_folders_it_made(split_model, tiny_data, tmp_path, capsys):
    from PIL import Image

    _, apart, _ = split_model
    src = next((tiny_data / "test").glob("*.jpg"))
    rotated = tmp_path / "in" / "phone.jpg"
    rotated.parent.mkdir()
    im = Image.open(src)
    exif = im.getexif()
    exif[0x0112] = 6  # stored sideways: predict makes an upright copy in its scratch folder
    im.save(rotated, exif=exif)
    out = tmp_path / "p"
    (out / ".upright-mine").mkdir(parents=True)
    (out / ".upright-mine" / "keep.txt").write_text("the user's")
    for _ in range(2):
        assert run_cli(capsys, "predict", rotated, "--pretrained", apart, "--out", out)[0] == 0
    assert (out / ".upright-mine" / "keep.txt").read_text() == "the user's"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".upright")) == [".upright-mine"]


def test_a_killed_export_s_staging_folder_is_recognised_and_removed(split_model, tmp_path, capsys):
    _, apart, _ = split_model
    final = apart.parent / "runs" / "apart" / "full" / "final.pt"
    out = tmp_path / "models" / "m"
    export_model(final, out, dtype="fp32", quiet=True)
    (out / "NOTES.txt").write_text("mine")
    # Killed in the middle of writing: the model's files, one under its temporary name, and the user's notes
    # that the swap had moved over from the model folder.
    stage = tmp_path / "models" / ".m.export-k1ll3d"
    stage.mkdir()
    for name in ("config.json", "model.safetensors", ".pipeline.json.x1y2z3.tmp", ".README.md.q9.tmp"):
        (stage / name).write_text("partial")
    (out / "NOTES.txt").rename(stage / "NOTES.txt")
    code, _, err = run_cli(capsys, "export", "--checkpoint", final, "--out", out, "--dtype", "fp32")
    assert code == 0 and "warning" not in err
    assert not stage.exists() and (out / "NOTES.txt").read_text() == "mine"
