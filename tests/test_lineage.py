"""Issue 11: every artifact bound to what made it, and the faults of everyday use.

Retrain a fold, re-ensemble, resubmit, copy runs between hosts, keep a backup, share a checkpoint:
each test below is one fault class that was silently wrong (or a traceback) before, on tiny data,
mostly through the command line. Lineage is pipeline/lineage/provenance.py.
"""

from __future__ import annotations

import csv
import fcntl
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.__main__ import main
from pipeline.core.errors import CheckpointError, LineageError
from pipeline.core.identity import file_sha256
from pipeline.core.io_utils import read_json, write_json
from pipeline.data.folds import load_folds
from pipeline.data.layout import DataError
from pipeline.masks.submission_csv import SubmissionError, read_sample_names
from pipeline.models.unet import read_checkpoint
from pipeline.stages import submission as submission_mod
from pipeline.stages.evaluate import score_pred_dir, score_submission
from pipeline.stages.kaggle import KaggleError, unpack
from pipeline.stages.report import make_report
from pipeline.stages.submission import make_submission, merge_shards, shard_path
from tests.conftest import fake_fold, tiny_config

REPO = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------------
@pytest.fixture
def lab(tiny_runs, tmp_path):
    """A private copy of the two tiny trained members (fold 0) and their recipe: (runs, recipe)."""
    runs, recipe = tiny_runs
    mine = tmp_path / "runs"
    shutil.copytree(runs, mine)
    text = recipe.read_text().replace(str(runs), str(mine))
    (tmp_path / "recipe.json").write_text(text)
    return mine, tmp_path / "recipe.json"


def _retrain(ckpt: Path) -> None:
    """Stand-in for a retrained (or replaced) fold: same config, other weights."""
    state = torch.load(ckpt, weights_only=True)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] = state["model"][first] + 0.5
    torch.save(state, ckpt)


def _sub(recipe, data, out, **kw):
    return make_submission(recipe, data, out, device="cpu", num_workers=0, quiet=True, **{"chunk_rows": 3, **kw})


def _rows(path: Path) -> list[list[str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return list(csv.reader(f))


def _cli(capsys, *argv) -> tuple[int, str]:
    """(exit status, stderr) of the command line; what it printed stays in ``_cli.out``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    _cli.out = captured.out
    return code, captured.err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# -- 1. one lineage, checked at every hop ------------------------------------------------------------
def test_a_changed_checkpoint_is_refused_by_submission_predict_and_lineage(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    out = tmp_path / "sub" / "s.csv.gz"
    _sub(recipe, tiny_data, out)
    code, _ = _cli(capsys, "lineage", out)
    assert code == 0 and "links hold" in _cli.out
    _retrain(runs / "a" / "fold0" / "best.pt")
    # Re-running to the old output used to answer "already complete"; now the recipe is stale.
    with pytest.raises(LineageError, match=r"a/fold0/best.pt changed since the recipe was tuned.*make ensemble"):
        _sub(recipe, tiny_data, out)
    code, err = _cli(
        capsys, "predict", tiny_data / "test", "--out", tmp_path / "p", "--recipe", recipe, "--device", "cpu"
    )
    assert code == 2 and "a/fold0/best.pt changed since the recipe was tuned" in _one_error_line(err)
    assert not (tmp_path / "p").exists()
    code, _ = _cli(capsys, "lineage", out)
    shown = _cli.out
    assert code == 1 and "BROKEN checkpoint" in shown and "a/fold0/best.pt" in shown and "links broken" in shown


def test_resume_after_a_checkpoint_changed_never_mixes_rows(lab, tiny_data, tmp_path, monkeypatch):
    runs, recipe = lab
    names = read_sample_names(tiny_data / "sample_submission.csv")
    out = tmp_path / "s.csv.gz"
    real_row = submission_mod._row

    def dying_row(name, mask, steps, photo=None, review_row=None):
        if name == names[7]:
            raise KeyboardInterrupt
        return real_row(name, mask, steps, photo, review_row)

    monkeypatch.setattr(submission_mod, "_row", dying_row)
    with pytest.raises(KeyboardInterrupt):
        _sub(recipe, tiny_data, out)
    monkeypatch.setattr(submission_mod, "_row", real_row)
    assert read_json(out.with_name(out.name + ".progress.json"))["rows"] == 7
    ckpt = runs / "b" / "fold0" / "best.pt"
    _retrain(ckpt)
    with pytest.raises(LineageError, match="b/fold0/best.pt changed since the recipe was tuned"):
        _sub(recipe, tiny_data, out)  # used to resume: 7 rows of the old model, 9 of the new one
    # The user re-tunes (the recipe now names the new checkpoint): the resume starts over.
    spec = json.loads(recipe.read_text())
    for m in spec["members"]:
        m["checkpoint_sha256"] = [file_sha256(recipe.parent / c) for c in m["checkpoints"]]  # stored relative
    write_json(recipe, spec)
    _sub(recipe, tiny_data, out)
    clean = tmp_path / "clean.csv.gz"
    _sub(recipe, tiny_data, clean)
    assert _rows(out) == _rows(clean)


def test_merge_never_replaces_a_submission_with_stale_shards(lab, tiny_data, tmp_path):
    _, recipe = lab
    out = tmp_path / "s.csv.gz"
    for i in range(2):
        _sub(recipe, tiny_data, out, shard=(i, 2))
    spec = json.loads(recipe.read_text())
    spec["threshold"] = 200  # re-tuned since the shards were made
    spec["threshold_probability"] = round(200 / 255, 6)
    write_json(recipe, spec)
    _sub(recipe, tiny_data, out)
    finished = out.read_bytes()
    with pytest.raises(SubmissionError, match="computed from an earlier version of"):
        merge_shards(tiny_data, out, quiet=True)  # no --recipe: the shards' own recipe is checked
    recipe.rename(tmp_path / "moved.json")  # the recipe is gone: the shards alone cannot replace it either
    with pytest.raises(SubmissionError, match="complete submission made from another recipe"):
        merge_shards(tiny_data, out, quiet=True)
    assert out.read_bytes() == finished
    merge_shards(tiny_data, tmp_path / "other.csv.gz", shards_of=out, quiet=True)  # elsewhere is fine
    assert len(_rows(tmp_path / "other.csv.gz")) == 17


def test_predict_resume_keeps_only_outputs_of_the_same_model_and_background(lab, tiny_data, tmp_path):
    runs, _ = lab
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted((tiny_data / "test").iterdir())[:4]:
        shutil.copy(p, src / p.name)
    a, b = str(runs / "a" / "fold0" / "best.pt"), str(runs / "b" / "fold0" / "best.pt")
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    base = ["predict", str(src), "--device", "cpu"]
    assert main(base + ["--out", str(out), "--checkpoint", a, "--background", "#00ff00"]) == 0
    assert main(base + ["--out", str(fresh), "--checkpoint", b, "--background", "#ff0000"]) == 0
    masks = {p.name: cv2.imread(str(p), -1) for p in out.glob("*_mask.png")}
    other = {p.name: cv2.imread(str(p), -1) for p in fresh.glob("*_mask.png")}
    assert any(not np.array_equal(masks[n], other[n]) for n in masks), "the two models agree: test proves nothing"
    assert main(base + ["--out", str(out), "--checkpoint", b, "--background", "#ff0000", "--resume"]) == 0
    for p in fresh.iterdir():  # masks, cut-outs and composites (red, not the first run's green)
        if p.suffix in (".png", ".jpg"):
            assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    # The same model and background again: nothing to redo (the log says every output is done).
    assert (
        main(base + ["--out", str(out), "--checkpoint", b, "--background", "#ff0000", "--resume", "--batch-size", "1"])
        == 0
    )


def test_backup_copies_of_a_fold_are_not_runs(lab, tiny_data, tmp_path, capsys):
    from pipeline.stages.ensemble import tune

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


@pytest.mark.parametrize("fault", ["split car", "repeated row", "fold numbers 0,1,3", "car id of another"])
def test_folds_csv_that_would_leak_is_refused(tiny_data, tmp_path, capsys, fault):
    df = pd.read_csv(tiny_data.parent / "folds.csv", dtype={"car_id": str})
    car = df.car_id.iloc[0]
    if fault == "split car":
        df.loc[df.index[df.car_id == car][:3], "fold"] = (df.fold[df.car_id == car].iloc[0] + 1) % 3
    elif fault == "repeated row":
        df = pd.concat([df, df.iloc[[5]]])
    elif fault == "fold numbers 0,1,3":
        df.loc[df.fold == 2, "fold"] = 3
    else:
        df.loc[df.index[0], "car_id"] = df.car_id[df.car_id != car].iloc[0]
    bad = tmp_path / "folds.csv"
    df.to_csv(bad, index=False)
    expected = {
        "split car": f"car {car} is in folds",
        "repeated row": "is listed 2 times",
        "fold numbers 0,1,3": r"fold numbers \[0, 1, 3\]",
        "car id of another": "the name says",
    }[fault]
    with pytest.raises(DataError, match=expected):
        load_folds(bad)
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    code, err = _cli(capsys, "train", "--config", config, "--folds-csv", bad)
    assert code == 2 and str(bad) in _one_error_line(err)
    assert not (tmp_path / "runs").exists()


# -- 2. nothing foreign runs, nothing of the user's is overwritten --------------------------------------
def _side_effect(path):  # what a crafted checkpoint would make torch.load call
    Path(path).write_text("foreign code ran")


class _Crafted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_side_effect, (self.marker,))


def test_a_crafted_checkpoint_does_not_run_code(tiny_data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    evil = tmp_path / "best.pt"
    torch.save({"config": cfg.to_dict(), "model": {}, "extra": _Crafted(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused: it holds Python objects"):
        read_checkpoint(evil)
    assert not marker.exists()
    cfg.run_dir.mkdir(parents=True)
    shutil.copy(evil, cfg.run_dir / "last.pt")  # a shared run folder: resume reads it
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    code, err = _cli(capsys, "train", "--config", config)
    assert code == 2 and "refused" in _one_error_line(err) and not marker.exists()


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


def test_a_zip_never_unpacks_one_member_over_another(tmp_path):
    archive = tmp_path / "train.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/0123456789ab_01.jpg", b"first")
        zf.writestr("train/extra/0123456789ab_01.jpg", b"second")
    with pytest.raises(KaggleError, match="would both unpack to 0123456789ab_01.jpg"):
        unpack(archive, tmp_path / "data", "train", quiet=True)
    assert not (tmp_path / "data" / "train").exists()


def test_predict_never_overwrites_its_inputs_or_the_users_files(lab, tiny_data, tmp_path, capsys):
    runs, _ = lab
    src = tmp_path / "in"
    src.mkdir()
    first = sorted((tiny_data / "test").iterdir())[0]
    for p in sorted((tiny_data / "test").iterdir())[:2]:
        shutil.copy(p, src / p.name)
    ckpt = str(runs / "a" / "fold0" / "best.pt")
    code, err = _cli(capsys, "predict", src, "--out", src, "--checkpoint", ckpt, "--device", "cpu")
    assert code == 2 and "--out is the input folder" in _one_error_line(err)
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in sorted((tiny_data / "test").iterdir())[:2])
    out = tmp_path / "out"
    out.mkdir()
    mine = out / f"{first.stem}_mask.png"
    mine.write_bytes(b"the user's own mask, drawn by hand")
    code, err = _cli(capsys, "predict", src, "--out", out, "--checkpoint", ckpt, "--device", "cpu")
    assert code == 2 and f"{mine}: exists and was not written by predict" in _one_error_line(err)
    assert mine.read_bytes() == b"the user's own mask, drawn by hand"
    single = tmp_path / "single"
    single.mkdir()
    photo = single / "car_mask.png"  # a photo named like an output, predicted into its own folder
    cv2.imwrite(str(photo), cv2.imread(str(first)))
    before = photo.read_bytes()
    assert main(["predict", str(photo), "--out", str(single), "--checkpoint", ckpt, "--device", "cpu"]) == 0
    assert photo.read_bytes() == before and (single / "car_mask_mask.png").is_file()


def test_an_output_that_cannot_be_written_is_found_before_the_work(lab, tiny_data, tmp_path, capsys, monkeypatch):
    runs, recipe = lab
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")

    def no_models(*a, **k):
        raise AssertionError("loaded models before checking the output")

    monkeypatch.setattr(submission_mod, "load_members", no_models)
    args = ["--data", tiny_data, "--device", "cpu", "--num-workers", "0", "--recipe", recipe]
    code, err = _cli(capsys, "submission", "--out", blocker / "s.csv.gz", *args)
    assert code == 2 and f"{blocker}: cannot write the submission here" in _one_error_line(err)
    # A disk without room for the rows: refused up front, with the estimate.
    monkeypatch.setattr(submission_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    code, err = _cli(capsys, "submission", "--out", tmp_path / "s.csv.gz", *args)
    assert code == 2 and "MB free, but 16 rows need about" in _one_error_line(err)
    code, err = _cli(capsys, "report", "--runs", runs, "--data", tiny_data, "--out", blocker / "r", "--jobs", "1")
    assert code == 2 and "cannot write the report here" in _one_error_line(err)
    ckpt = runs / "a" / "fold0" / "best.pt"
    code, err = _cli(capsys, "predict", tiny_data / "test", "--out", blocker / "p", "--checkpoint", ckpt)
    assert code == 2 and "cannot write the predictions here" in _one_error_line(err)


def test_a_full_disk_mid_run_keeps_the_rows_written_and_names_the_file(lab, tiny_data, tmp_path):
    _, recipe = lab
    out = tmp_path / "s.csv.gz"
    # A real write failure: the file-size limit makes write() fail with EFBIG once the .part passes it.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pipeline.stages import submission
        from pipeline.core.errors import PipelineError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (700, 700))
        try:
            submission.make_submission({str(recipe)!r}, {str(tiny_data)!r}, {str(out)!r}, device="cpu",
                                       num_workers=0, chunk_rows=2, quiet=True)
        except PipelineError as e:
            print(e)
            sys.exit(2)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    part = out.with_name(out.name + ".part")
    assert f"{part}: cannot write" in proc.stdout and "rows written so far are kept" in proc.stdout
    kept = read_json(out.with_name(out.name + ".progress.json"))["rows"]
    assert 0 < kept < 16
    calls = []
    real = submission_mod._row
    submission_mod._row = lambda *a: calls.append(1) or real(*a)
    try:
        _sub(recipe, tiny_data, out, chunk_rows=2)  # resumes after the rows on disk
    finally:
        submission_mod._row = real
    assert len(calls) == 16 - kept
    _sub(recipe, tiny_data, tmp_path / "clean.csv.gz")
    assert _rows(out) == _rows(tmp_path / "clean.csv.gz")


def test_a_second_training_of_the_same_fold_stops_and_names_the_holder(tiny_data, tmp_path, capsys):
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    cfg.run_dir.mkdir(parents=True)
    with open(cfg.run_dir.with_name("fold0.lock"), "w") as held:
        held.write("pid 4242 on host gpu7\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        code, err = _cli(capsys, "train", "--config", config)
    line = _one_error_line(err)
    assert code == 2 and f"{cfg.run_dir}: another run is training this fold (pid 4242 on host gpu7" in line
    assert not (cfg.run_dir / "last.pt").exists()


# -- 3. readers as strict as the writer ---------------------------------------------------------------
def test_evaluate_reads_submissions_and_masks_as_strictly_as_validate(tiny_data, tmp_path):
    masks = tiny_data / "train_masks"
    images = sorted(p.name.replace("_mask.gif", ".jpg") for p in masks.iterdir())

    def write(rows):
        p = tmp_path / "s.csv"
        p.write_text("img,rle_mask\n" + "".join(rows))
        return p

    full = [f"{i},1 1\n" for i in images]
    with pytest.raises(DataError, match=r"row 3: .* again \(first in row 2\)"):
        score_submission(write(full[:1] + full), masks, n_jobs=1)
    with pytest.raises(DataError, match="not a plain file name"):
        score_submission(write([f"../x/{images[0]},1 1\n"] + full[1:]), masks, n_jobs=1)
    with pytest.raises(DataError, match=r"row 2: 1 field\(s\), expected 2"):
        score_submission(write([f"{images[0]}\n"] + full[1:]), masks, n_jobs=1)
    # Prediction PNGs at any bit depth read as what they show.
    from pipeline.data.layout import read_mask

    pred = tmp_path / "pred"
    pred.mkdir()
    for img in images:
        m = read_mask(masks / img.replace(".jpg", "_mask.gif"))
        cv2.imwrite(str(pred / img.replace(".jpg", "_mask.png")), m.astype(np.uint16))  # 16-bit 0/1
    assert (score_pred_dir(pred, masks, n_jobs=1).dice == 1).all()
    colour = np.zeros((64, 96, 3), np.uint8)
    colour[..., 2] = 255
    cv2.imwrite(str(pred / images[0].replace(".jpg", "_mask.png")), colour)
    with pytest.raises(DataError, match="a colour picture, not a mask"):
        score_pred_dir(pred, masks, n_jobs=1)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"threshold": 0}, "'threshold' 0 is not an integer in 1..255"),
        ({"threshold_probability": 1.7}, "'threshold_probability' 1.7 is not in"),
        ({"postprocess": ["despeckle"]}, "postprocess .*unknown step"),
        ({"m.weight": -1}, "negative weight"),
        ({"m.weight": 1.5}, "wrong type for \\['weight'\\]"),
        ({"m.weight": True}, "wrong type for \\['weight'\\]"),
        ({"m.tta": ["vflip"]}, "unknown TTA \\['vflip'\\]"),
        ({"m.checkpoints": []}, "'checkpoints' must be a non-empty list"),
        ({"m.height": 0}, "input size 0x48"),
        ({"m.checkpoint_sha256": None}, "no content hash for each checkpoint"),
        ({"m.width": 64}, "trained at 32x48, but the recipe runs member '.' at 32x64"),
    ],
)
def test_recipe_is_checked_completely_before_any_model_loads(lab, tiny_data, tmp_path, monkeypatch, change, expected):
    _, recipe = lab
    spec = json.loads(recipe.read_text())
    used = next(m for m in spec["members"] if m["weight"] > 0)  # the one whose models would load
    for key, value in change.items():
        target = used if key.startswith("m.") else spec
        target[key.removeprefix("m.")] = value
    write_json(recipe, spec)

    def no_models(*a, **k):
        raise AssertionError("a model was built before the recipe was checked")

    monkeypatch.setattr(submission_mod, "load_checkpoint", no_models)
    with pytest.raises((DataError, LineageError), match=expected):
        _sub(recipe, tiny_data, tmp_path / "s.csv.gz")


def test_report_works_on_runs_in_every_state(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    killed = runs / "c" / "fold0"
    killed.mkdir(parents=True)
    (killed / "history.csv").write_text("")  # killed before its first epoch
    header_only = runs / "c" / "fold1"
    header_only.mkdir(parents=True)
    (header_only / "history.csv").write_text("epoch,lr,train_loss,val_loss,val_dice,val_iou,seconds,best_val_dice\n")
    training = runs / "d" / "fold0"  # still training: epochs recorded, no oof.json yet
    shutil.copytree(runs / "a" / "fold0", training)
    (training / "oof.json").unlink()
    shutil.copytree(runs / "a" / "fold0", runs / "a" / "fold0.bak")  # a backup
    index = make_report(runs, tiny_data, tmp_path / "r", recipe_path=recipe, n_worst=1, n_jobs=1, quiet=True)
    page = index.read_text()
    assert "<td>a</td>" in page and "<td>blend</td>" in page
    assert "d (no completed fold yet" in page and "<h3>c" not in page  # c has no epoch recorded
    assert len(re.findall(r'src="[^"]+/curves_\d+\.png"', page)) == 3  # a, b and d
    assert "Lineage of the recipe (all " in page
    # A fold retrained since the recipe: the members are reported, the stale blend is not.
    _retrain(runs / "b" / "fold0" / "best.pt")
    (runs / "b" / "fold0" / "oof.json").write_text(
        (runs / "b" / "fold0" / "oof.json").read_text().replace('"n_images"', '"retrained": 1, "n_images"')
    )
    info = read_json(runs / "b" / "fold0" / "oof.json")
    info["checkpoint_sha256"] = file_sha256(runs / "b" / "fold0" / "best.pt")
    write_json(runs / "b" / "fold0" / "oof.json", info)
    source = runs / "b" / "fold0" / "oof" / "source.json"  # re-predicted by the retrained model, as training does
    write_json(source, {**read_json(source), "checkpoint_sha256": info["checkpoint_sha256"]})
    page = make_report(
        runs, tiny_data, tmp_path / "r2", recipe_path=recipe, n_worst=1, n_jobs=1, quiet=True
    ).read_text()
    assert "The blend is left out" in page and "oof.json changed since the recipe was tuned" in page
    assert "<td>blend</td>" not in page and "<td>b</td>" in page
    assert "Lineage of the recipe (2 broken link(s))" in page and "BROKEN checkpoint" in page


@pytest.mark.parametrize(
    "shard, expected",
    [
        ("0/0", "expected i/N with 0 <= i < N"),
        ("3/2", "expected i/N with 0 <= i < N"),
        ("-1/2", "expected i/N with 0 <= i < N"),
        ("1/2x", "expected i/N with 0 <= i < N"),
        ("20/32", "--shard 20/32: empty, since .* has only 16 rows; use at most 16 shards"),
    ],
)
def test_shard_specs_are_clear_errors(lab, tiny_data, tmp_path, capsys, shard, expected):
    _, recipe = lab
    out = tmp_path / "s.csv.gz"
    code, err = _cli(capsys, "submission", "--recipe", recipe, "--data", tiny_data, "--out", out, "--shard", shard)
    assert code == 2
    assert pytest.importorskip("re").search(expected, _one_error_line(err)), err
    assert not any(tmp_path.glob("s.*"))


def test_an_empty_shard_is_refused(lab, tiny_data, tmp_path):
    _, recipe = lab
    out = tmp_path / "s.csv.gz"
    with pytest.raises(SubmissionError, match="empty"):
        _sub(recipe, tiny_data, out, shard=(0, 17))
    assert not shard_path(out, 0, 17).exists()


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


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["predict", "{test}", "--checkpoint", "{ckpt}", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
        (["report", "--runs", "{runs}", "--data", "{data}", "--worst", "-1"], "--worst -1: must be at least 0"),
        (["report", "--runs", "{runs}", "--data", "{data}", "--jobs", "0"], "--jobs 0: use -1 (all cores)"),
        (["evaluate", "--runs", "{runs}", "--data", "{data}", "--jobs", "-3"], "--jobs -3: use -1 (all cores)"),
        (["report", "--runs", "{runs}", "--data", "{tmp}/nowhere"], "nowhere/train_masks: not found. Expected"),
        (
            ["lineage", "{data}/sample_submission.csv"],
            "not a submission, recipe, checkpoint, oof.json, full.json or folds CSV",
        ),
    ],
)
def test_user_stage_options_are_one_line_errors(lab, tiny_data, tmp_path, capsys, argv, expected):
    runs, _ = lab
    values = {"test": tiny_data / "test", "ckpt": runs / "a/fold0/best.pt", "runs": runs, "data": tiny_data}
    values["tmp"] = tmp_path
    argv = [a.format(**values) for a in argv] + (
        ["--out", str(tmp_path / "out")] if argv[0] in ("predict", "report") else []
    )
    code, err = _cli(capsys, *argv)
    assert code == 2 and expected in _one_error_line(err)
    assert not (tmp_path / "out").exists()


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
