"""Issue 19, reliability round 3: each fault class through the command line, as a user meets it.

1. the report is built aside and swapped in, escapes every value, and touches only its own files;
2. nothing is written outside an output folder: no symbolic link is followed, run names are plain;
3. every consumer checks the links `lineage` prints, on the bytes it loads, and refuses what it does not know;
4. a project copied elsewhere, used from another working directory, keeps every link;
5. real-world names and processes: non-UTF-8 file names, killed pools, spaces, finished outputs;
6. the review list sees confident mistakes.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.errors import LineageError
from pipeline.core.io_utils import read_json, write_json
from pipeline.stages import submission as submission_mod
from pipeline.stages.submission import make_submission
from tests.conftest import fake_fold, tiny_config
from tests.conftest import run_cli as _cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def lab(tiny_runs, tmp_path):
    """A private copy of the two tiny trained members (fold 0) and their recipe: (runs, recipe)."""
    runs, recipe = tiny_runs
    shutil.copytree(runs, tmp_path / "runs")
    shutil.copy(recipe, tmp_path / "recipe.json")  # its paths are relative to its folder: the copy holds
    return tmp_path / "runs", tmp_path / "recipe.json"


def _srcs(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime: what "nothing was written there" compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


# -- 1. the report ---------------------------------------------------------------------------------------
def test_a_failed_report_leaves_the_last_one_whole(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    out = tmp_path / "report"
    args = ["report", "--runs", runs, "--data", data, "--recipe", recipe, "--out", out, "--jobs", "1", "--worst", "2"]
    assert _cli(capsys, *args)[0] == 0
    before = {p: (out / p).read_bytes() for p in ["index.html", *_srcs(out / "index.html")]}
    worst = re.findall(r"<h3>1\. ([^:]+):", (out / "index.html").read_text())[0]
    photo = data / "train" / worst
    photo.write_bytes(photo.read_bytes()[:200])  # truncated: the second report fails drawing it
    code, _, err = _cli(capsys, *args)
    assert code == 2 and worst in err
    assert {p: (out / p).read_bytes() for p in before} == before  # the last report, whole
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [Path(_srcs(out / "index.html")[0]).parts[0]]


def test_report_removes_and_replaces_only_its_own_files(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    out = tmp_path / "report"
    out.mkdir()
    mine = {n: f"the user's own {n}".encode() for n in ("dice_hist.png", "curves_a.png", "worst_1_overlay.png")}
    for n, data in mine.items():
        (out / n).write_bytes(data)
    args = ["report", "--runs", runs, "--data", tiny_data, "--out", out, "--jobs", "1", "--worst", "1"]
    assert _cli(capsys, *args, "--recipe", recipe)[0] == 0
    first = _srcs(out / "index.html")
    assert _cli(capsys, *args, "--recipe", tmp_path / "none.json")[0] == 0
    second = _srcs(out / "index.html")
    assert all((out / s).is_file() for s in second) and not any((out / s).exists() for s in first if s not in second)
    assert {n: (out / n).read_bytes() for n in mine} == mine
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.html").write_text("<p>my own page</p>")
    code, _, err = _cli(capsys, "report", "--runs", runs, "--data", tiny_data, "--out", other, "--jobs", "1")
    assert code == 2 and "was not written by `report`" in err
    assert (other / "index.html").read_text() == "<p>my own page</p>"


def test_report_escapes_every_value_from_names_and_paths(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    shutil.copytree(runs / "a", runs / 'a" onerror="alert(1)')  # a copy under a name no run can have
    odd = tmp_path / '<script>alert("recipe")<'
    out = tmp_path / "report"
    code, _, _ = _cli(
        capsys, "report", "--runs", runs, "--data", tiny_data, "--recipe", odd / "r.json", "--out", out, "--jobs", "1"
    )
    page = (out / "index.html").read_text()
    assert code == 0 and "<script>" not in page and "&lt;script&gt;" in page
    assert "onerror=" not in page.replace("onerror=&#34;", "")  # only ever as escaped text, never an attribute
    assert all(re.fullmatch(r"report-[\w-]+/[\w.]+\.png", s) for s in _srcs(out / "index.html"))


@pytest.mark.parametrize("name", ["../outside", "a/b", "blend", "img", "a$b", "a b", ""])
def test_run_names_are_plain_names(tiny_data, tmp_path, capsys, name):
    runs = tmp_path / "runs"
    config = REPO / "configs" / "cpu.yaml"
    code, _, err = _cli(
        capsys, "train", "--config", config, "--data", tiny_data, "--runs", runs, "--set", f"name={name}"
    )
    assert code == 2 and "name:" in err and ("plain run name" in err or "reserved" in err)
    assert not runs.exists() and not (tmp_path / "outside").exists()
    code, _, err = _cli(capsys, "smoke", "--config", config, "--data", tiny_data, "--set", f"name={name}")
    assert code == 2 and "name:" in err


# -- 2. no symbolic link is followed ----------------------------------------------------------------------
def test_submission_never_writes_through_a_link(lab, tiny_data, tmp_path, capsys):
    _, recipe = lab
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    out = tmp_path / "sub" / "s.csv.gz"
    out.parent.mkdir()
    for aux in (".part", ".review.part"):
        os.symlink(victim, out.with_name(out.name + aux))
    code, _, _ = _cli(capsys, "submission", "--recipe", recipe, "--data", tiny_data, "--out", out, "--device", "cpu")
    assert code == 0 and victim.read_text() == "keep me" and out.is_file()
    lock = tmp_path / "sub" / "t.csv.gz.lock"
    os.symlink(victim, lock)
    code, _, err = _cli(capsys, "submission", "--recipe", recipe, "--data", tiny_data, "--out", lock.with_suffix(""))
    assert code == 2 and "is a symbolic link" in err and victim.read_text() == "keep me"


def test_training_and_predict_never_write_through_a_link(lab, tiny_data, tmp_path, capsys):
    runs, _ = lab
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    cfg = tiny_config(tiny_data, tmp_path / "runs2")
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    cfg.run_dir.parent.mkdir(parents=True)
    os.symlink(victim, cfg.run_dir.with_name("fold0.lock"))
    code, _, err = _cli(capsys, "train", "--config", config)
    assert code == 2 and "fold0.lock: is a symbolic link" in err and victim.read_text() == "keep me"
    out = tmp_path / "pred"
    out.mkdir()
    os.symlink(victim, out / "lineage.jsonl")
    ckpt = runs / "a" / "fold0" / "best.pt"
    code, _, err = _cli(capsys, "predict", tiny_data / "test", "--out", out, "--checkpoint", ckpt, "--device", "cpu")
    assert code == 2 and "lineage.jsonl" in err and victim.read_text() == "keep me"


# -- 3. the links lineage prints, checked by every consumer -------------------------------------------------
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


def test_the_bytes_loaded_are_the_bytes_checked(lab, tiny_data, tmp_path, monkeypatch):
    """A checkpoint replaced between the recipe's check and the load (a retrain finishing) is refused."""
    runs, recipe = lab
    real = submission_mod.load_recipe

    def check_then_replace(path):
        checked = real(path)
        ckpt = runs / "a" / "fold0" / "best.pt"
        state = torch.load(ckpt, weights_only=True)
        first = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][first] = state["model"][first] + 1
        torch.save(state, ckpt)
        return checked

    monkeypatch.setattr(submission_mod, "load_recipe", check_then_replace)
    with pytest.raises(LineageError, match="changed since it was recorded"):
        make_submission(recipe, tiny_data, tmp_path / "s.csv.gz", device="cpu", num_workers=0, quiet=True)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"format": 4}, "format 4, which this version of the pipeline does not know"),
        ({"members_v2": []}, r"unknown key\(s\) \['members_v2'\]"),
    ],
)
def test_a_recipe_this_code_does_not_know_is_refused(lab, tiny_data, tmp_path, capsys, change, expected):
    _, recipe = lab
    write_json(recipe, {**read_json(recipe), **change})
    code, _, err = _cli(capsys, "submission", "--recipe", recipe, "--data", tiny_data, "--out", tmp_path / "s.csv.gz")
    assert code == 2 and re.search(expected, err)


def test_lineage_says_what_each_file_of_the_pipeline_is(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    out = tmp_path / "s.csv.gz"
    make_submission(recipe, tiny_data, out, device="cpu", num_workers=0, quiet=True)
    folds_gz = tmp_path / "folds.csv.gz"
    folds_gz.write_bytes(gzip.compress((tiny_data.parent / "folds.csv").read_bytes()))
    part = tmp_path / "t.csv.gz.part"
    part.write_bytes(b"")
    cases = {
        out.with_name(out.name + ".json"): "the summary of submission s.csv.gz",
        runs / "a" / "fold0" / "oof" / "source.json": "the record of what made the out-of-fold maps",
        part: "an unfinished submission",
        folds_gz: "group integrity",
    }
    for path, expected in cases.items():
        code, printed, _ = _cli(capsys, "lineage", path)
        assert code == 0 and expected in printed, (path, printed)
    code, _, err = _cli(capsys, "lineage", runs / "a")
    assert code == 2 and "a folder; give one of its files" in err
    bogus = tmp_path / "x.json"
    bogus.mkdir()
    code, _, err = _cli(capsys, "lineage", bogus)
    assert code == 2 and "a folder" in err


# -- 4. a project that moves ------------------------------------------------------------------------------
def test_a_copied_project_used_from_another_folder_keeps_every_link(lab, tiny_data, tmp_path, capsys, monkeypatch):
    runs, recipe = lab
    project = tmp_path / "copy" / "project"  # runs/ and submissions/ side by side, as a clone has them
    shutil.copytree(runs, project / "runs")
    shutil.copytree(tiny_data, project / "data")
    (project / "submissions").mkdir()
    from pipeline.stages.ensemble import tune

    monkeypatch.chdir(project)
    tune("runs", "data", "submissions/recipe.json", steps=2, n_jobs=1, quiet=True, allow_incomplete=True)
    moved = tmp_path / "attached"  # the project copied again, then used read-only from elsewhere
    shutil.copytree(project, moved)
    work = tmp_path / "working"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _tree(moved)
    r = moved / "submissions" / "recipe.json"
    code, _, err = _cli(capsys, "submission", "--recipe", r, "--data", moved / "data", "--out", work / "s.csv.gz")
    assert code == 0, err
    code, out, _ = _cli(capsys, "lineage", work / "s.csv.gz")
    assert code == 0 and "BROKEN" not in out and "all" in out
    code, _, _ = _cli(
        capsys, "report", "--runs", moved / "runs", "--data", moved / "data", "--recipe", r, "--out", work / "rep",
        "--jobs", "1", "--worst", "1",
    )  # fmt: skip
    page = (work / "rep" / "index.html").read_text()
    assert code == 0 and "<td>blend</td>" in page and "left out" not in page
    assert _tree(moved) == before  # nothing written into the attached project


# -- 5. names and processes of the real world ---------------------------------------------------------------
def test_a_photo_name_that_is_not_utf8_is_cut_out(lab, tiny_data, tmp_path):
    runs, _ = lab
    src = tmp_path / "in"
    src.mkdir()
    photos = sorted((tiny_data / "test").glob("*.jpg"))[:2]
    shutil.copy(photos[0], src / photos[0].name)
    odd = os.path.join(os.fsencode(src), b"caf\xe9 \xff.jpg")  # Latin-1 bytes: not valid UTF-8
    shutil.copy(photos[1], odd)
    out = tmp_path / "out"
    ckpt = runs / "a" / "fold0" / "best.pt"
    cmd = [sys.executable, "-m", "pipeline", "predict", str(src), "--out", str(out), "--checkpoint", str(ckpt)]
    done = subprocess.run(cmd + ["--device", "cpu"], capture_output=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = sorted(os.listdir(os.fsencode(out)))
    assert b"caf\xe9 \xff_mask.png" in written and f"{photos[0].stem}_mask.png".encode() in written


def test_predict_never_reads_its_own_outputs_as_photos(lab, tiny_data, tmp_path, capsys):
    runs, _ = lab
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((tiny_data / "test").glob("*.jpg"))[:2]:
        shutil.copy(p, folder / p.name)
    ckpt = runs / "a" / "fold0" / "best.pt"
    photo = sorted(folder.iterdir())[0]
    assert _cli(capsys, "predict", photo, "--out", folder, "--checkpoint", ckpt, "--device", "cpu")[0] == 0
    out = tmp_path / "out"
    code, printed, _ = _cli(capsys, "predict", folder, "--out", out, "--checkpoint", ckpt, "--device", "cpu")
    assert code == 0 and "2 image(s) cut out" in printed
    assert not any("_mask_mask" in p.name or "_cutout_mask" in p.name for p in out.iterdir())


def test_make_predict_takes_paths_with_spaces(lab, tiny_data, tmp_path):
    runs, _ = lab
    folder = tmp_path / "my photos"
    folder.mkdir()
    photo = folder / "car 1.jpg"
    shutil.copy(sorted((tiny_data / "test").glob("*.jpg"))[0], photo)
    ckpt = runs / "a" / "fold0" / "best.pt"
    out = tmp_path / "out dir"
    done = subprocess.run(
        ["make", "--no-print-directory", "predict", f"IN={photo}", f"OUT={out}", f"ARGS=--checkpoint {ckpt}",
         f"PY={sys.executable}", f"STAMP={REPO / 'Makefile'}", "DEVICE=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "car 1_mask.png").is_file()


def test_a_finished_submission_of_another_precision_is_never_replaced_silently(lab, tiny_data, tmp_path, capsys):
    _, recipe = lab
    out = tmp_path / "s.csv.gz"
    args = ["submission", "--recipe", recipe, "--data", tiny_data, "--out", out, "--device", "cpu"]
    assert _cli(capsys, *args)[0] == 0
    before = out.read_bytes()
    code, _, err = _cli(capsys, *args, "--precision", "bf16")
    assert code == 2 and "made with another precision" in err and "--force" in err and out.read_bytes() == before
    assert _cli(capsys, *args, "--precision", "bf16", "--force")[0] == 0
    assert read_json(out.with_name(out.name + ".json"))["key"]["precision"] == "bf16"


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def test_a_killed_ensemble_leaves_no_worker_running(tiny_data, tmp_path):
    """kill -9 of `ensemble` mid-search: its process pool's workers end within seconds (they used to wait
    minutes for work, holding their memory)."""
    layout_masks = sorted((tiny_data / "train_masks").iterdir())
    images = [p.name.replace("_mask.gif", ".jpg") for p in layout_masks]
    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    for name in ("a", "b", "c"):
        maps = [rng.integers(0, 256, (64, 96), dtype=np.uint8) for _ in images]
        fake_fold(runs, name, 0, images, maps)
    cmd = [sys.executable, "-m", "pipeline", "ensemble", "--runs", str(runs), "--data", str(tiny_data)]
    cmd += ["--out", str(tmp_path / "r.json"), "--steps", "60", "--jobs", "2", "--allow-incomplete"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers: set[int] = set()
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            workers = {
                k
                for k in _children(proc.pid)
                if "LokyProcess" in Path(f"/proc/{k}/cmdline").read_text(errors="replace")
            }
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert workers, "the ensemble finished before its workers could be seen; make the search larger"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
            time.sleep(0.2)
        alive = [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text()]
        assert not alive, f"workers {alive} outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--skip", "compil"], "--skip 'compil': unknown section(s) ['compil']"),
        (["--device", "cuda:7"], "--device=cuda:7"),
        (["--batches", "1,x"], "--batches '1,x'"),
        (["--size", "32"], "--size '32': HxW"),
        (["--models", "vgg12"], "--models: no config 'vgg12'"),
    ],
)
def test_gpu_check_checks_its_options_up_front(tiny_data, tmp_path, argv, expected):
    out = tmp_path / "gc"
    cmd = [sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--data", str(tiny_data), "--out", str(out), *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert not out.exists()


def test_smoke_cleans_up_after_a_kill(tiny_data, tmp_path, monkeypatch):
    import tempfile

    from pipeline.stages.smoke import SCRATCH_MARK, SCRATCH_PREFIX, remove_stale_scratch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{SCRATCH_PREFIX}killed"
    (stale / "runs").mkdir(parents=True)
    (stale / SCRATCH_MARK).write_text(f"{dead.pid}\n")
    (stale / "runs" / "best.pt").write_bytes(b"a checkpoint of a killed smoke")
    alive = tmp_path / f"{SCRATCH_PREFIX}running"
    alive.mkdir()
    (alive / SCRATCH_MARK).write_text(f"{os.getppid()}\n")
    users = tmp_path / f"{SCRATCH_PREFIX}not-ours"
    users.mkdir()
    assert remove_stale_scratch() == [stale]
    assert not stale.exists() and alive.is_dir() and users.is_dir()


# -- 6. the review list sees confident mistakes ---------------------------------------------------------
def test_review_ranks_a_confident_non_car_mask_first():
    from pipeline.inference.review import review_table

    h, w = 1280, 1918

    def row(img, area_share, box, soft=20_000):
        top, bottom, left, right = box
        size = {"height": h, "width": w, "top": top, "bottom": bottom, "left": left, "right": right}
        return {"img": img, "area": int(area_share * h * w), "perimeter": 4000, "soft_error": soft, "uncertain": 900,
                "disagreement": 0, **size}  # fmt: skip

    cars = [row(f"car_{v}.jpg", 0.2, (380, 1000, 300, 1600), soft=100_000 + v) for v in range(1, 9)]
    odd = [
        row("holiday.jpg", 0.56, (0, h - 1, 0, w - 1), soft=0),  # a confident mask over most of a non-car photo
        row("0123456789ab_03.jpg", 0.0, (-1, -1, -1, -1), soft=0),  # no car found on a Carvana photo: one is there
        row("empty.jpg", 0.0, (-1, -1, -1, -1), soft=0),  # no car found on another photo: maybe right
    ]
    t = review_table(pd.DataFrame(cars + odd))
    assert set(t.img[:2]) == {"holiday.jpg", "0123456789ab_03.jpg"} and t.img.iloc[-1] == "empty.jpg"
    assert (t.set_index("img").loc[[c["img"] for c in cars], "shape_dev"] == 0).all()
