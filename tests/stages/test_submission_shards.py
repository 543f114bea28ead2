"""Submission shards, merge, torchrun, and the output's safety: locks, trial files, resume keys, suffixes."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.__main__ import main
from pipeline.core.io_utils import write_json
from pipeline.data.layout import DataError
from pipeline.inference.review import read_review, review_path
from pipeline.masks import rle
from pipeline.masks.submission_csv import SubmissionError, read_sample_names
from pipeline.models.unet import build_model
from pipeline.stages import submission as submission_mod
from pipeline.stages.merge import merge_shards
from pipeline.stages.submission import make_submission
from pipeline.stages.submission_files import limit_path, shard_path
from tests.conftest import csv_rows as _rows
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import run_cli_stderr as _cli
from tests.conftest import tiny_config, write_recipe
from tests.conftest import tiny_submission as _sub

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recipe(tiny_data, tmp_path_factory):
    """Two members (2 fold models each; hflip TTA / none; 32x48 / full 64x96 input) with random weights."""
    root = tmp_path_factory.mktemp("shards")
    members = []
    spec = (("a", {}, ["hflip"], 2, (32, 48)), ("b", {"model.decoder_channels": "[8,8,8,8,8]"}, [], 1, (64, 96)))
    for name, over, tta, weight, (h, w) in spec:
        checkpoints = []
        for k in range(2):
            size = {"image.height": h, "image.width": w}
            cfg = tiny_config(tiny_data, root / "runs", name=name, fold=k, **over, **size)
            torch.manual_seed(100 * weight + k)
            path = root / f"{name}{k}.pt"
            torch.save({"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()}, path)
            checkpoints.append(str(path))
        members.append(
            {"name": name, "weight": weight, "checkpoints": checkpoints, "height": h, "width": w, "tta": tta}
        )
    return write_recipe(root / "recipe.json", members)


@pytest.fixture(scope="module")
def single(recipe, tiny_data, tmp_path_factory):
    """The single-process submission every sharded variant must reproduce."""
    out = tmp_path_factory.mktemp("single") / "submission.csv.gz"
    make_submission(recipe, tiny_data, out, device="cpu", num_workers=0, chunk_rows=3, quiet=True)
    return out


def _text(path: Path) -> str:
    with gzip.open(path, "rt", newline="") as f:
        return f.read()


def _run(recipe, data, out, **kw):
    return make_submission(recipe, data, out, device="cpu", quiet=True, **{"chunk_rows": 2, "num_workers": 0, **kw})


def test_single_run_has_real_rows(single, tiny_data):
    lines = _text(single).splitlines()
    assert lines[0] == "img,rle_mask" and len(lines) == 17
    assert [ln.split(",")[0] for ln in lines[1:]] == read_sample_names(tiny_data / "sample_submission.csv")
    assert any(ln.split(",")[1] for ln in lines[1:]), "all masks empty: the test would prove little"
    # The review list beside it: every image once, worst (highest score) first.
    table = read_review(review_path(single))
    assert sorted(table.img) == sorted(read_sample_names(tiny_data / "sample_submission.csv"))
    assert table.score.is_monotonic_decreasing and table.score.iloc[0] > table.score.iloc[-1]
    assert json.loads(single.with_name(single.name + ".json").read_text())["review"] == str(review_path(single))
    assert not single.with_name(single.name + ".review.part").exists()


@pytest.mark.slow
def test_shards_merge_to_the_single_run(recipe, tiny_data, single, tmp_path):
    out = tmp_path / "sub" / "other.csv.gz"
    names = read_sample_names(tiny_data / "sample_submission.csv")
    for i in range(3):
        _run(recipe, tiny_data, out, shard=(i, 3), num_workers=1 if i == 1 else 0)
        rows = _text(shard_path(out, i, 3)).splitlines()
        assert rows[0] == "img,rle_mask"
        assert [r.split(",")[0] for r in rows[1:]] == names[16 * i // 3 : 16 * (i + 1) // 3]  # contiguous
    assert not out.exists()
    assert main(["merge", "--data", str(tiny_data), "--out", str(out), "--recipe", str(recipe)]) == 0
    assert _text(out) == _text(single)
    # One review list for the whole test set, identical to the single run's (the car feature spans shards).
    assert review_path(out).read_text() == review_path(single).read_text()
    assert json.loads(out.with_name(out.name + ".json").read_text())["rows"] == 16
    # `make merge SUBMISSION=other.csv`: shards found by the name they were computed with; plain text out.
    other = tmp_path / "other.csv"
    merge_shards(tiny_data, other, shards_of=out, quiet=True)
    assert other.read_text() == _text(single)
    # The merged file is a complete submission for the single-process command: nothing is recomputed.
    assert _run(recipe, tiny_data, out)["merged_from"]


def test_merge_names_a_missing_or_incomplete_shard(recipe, tiny_data, tmp_path, capsys):
    out = tmp_path / "s.csv.gz"
    _run(recipe, tiny_data, out, shard=(0, 2))
    with pytest.raises(SubmissionError, match=r"shard\(s\) \[1\] of 2 missing.*SHARD=1/2"):
        merge_shards(tiny_data, out)
    shard_path(out, 1, 2).write_bytes(gzip.compress(b"img,rle_mask\n"))  # no summary: not complete
    assert main(["merge", "--data", str(tiny_data), "--out", str(out)]) == 2
    assert "not a complete shard 1/2" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_shard_resumes_after_kill_9(recipe, tiny_data, single, tmp_path):
    out = tmp_path / "k.csv.gz"
    shard1 = shard_path(out, 1, 2)
    # A real kill -9 of a process computing shard 1/2 (8 rows, chunks of 2), just after its second chunk
    # reached the disk and before the progress file recorded it.
    script = textwrap.dedent(f"""
        import os, signal
        from pipeline.stages import submission, submission_files
        real = submission_files.write_json
        def write_json(path, obj):
            if obj.get("rows") == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, obj)
        submission_files.write_json = write_json  # what saves the progress
        submission.make_submission({str(recipe)!r}, {str(tiny_data)!r}, {str(out)!r}, device="cpu",
                                   num_workers=0, chunk_rows=2, quiet=True, shard=(1, 2))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9
    progress = json.loads(shard1.with_name(shard1.name + ".progress.json").read_text())
    assert progress["rows"] == 2 and progress["key"]["shard"] == "1/2"
    sidecar = shard1.with_name(shard1.name + ".review.part")
    assert len(sidecar.read_text().splitlines()) == 1 + 4  # the 2nd chunk's review rows reached the disk...
    assert len(sidecar.read_bytes()[: progress["review_bytes"]].decode().splitlines()) == 1 + 2  # ...unrecorded
    assert not shard1.exists() and shard1.with_name(shard1.name + ".part").exists()
    # Shard 0 is computed meanwhile, independently; then shard 1 resumes (and must not redo its rows).
    _run(recipe, tiny_data, out, shard=(0, 2))
    calls = []
    real = rle.encode

    def counting(mask):
        calls.append(1)
        return real(mask)

    rle.encode = counting
    try:
        _run(recipe, tiny_data, out, shard=(1, 2))
    finally:
        rle.encode = real
    assert len(calls) == 6  # rows 3..8: the chunk past the recorded offset is dropped and redone
    merge_shards(tiny_data, out, recipe_path=recipe, quiet=True)
    assert _text(out) == _text(single)
    assert review_path(out).read_text() == review_path(single).read_text()  # each image's review data once


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_two_ranks_shard_and_merge(recipe, tiny_data, single, tmp_path):
    out = tmp_path / "tr" / "submission.csv.gz"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipeline"]
    cmd += ["submission", "--recipe", str(recipe), "--data", str(tiny_data), "--out", str(out)]
    cmd += ["--device", "cpu", "--num-workers", "0"]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shard_path(out, 0, 2).exists() and shard_path(out, 1, 2).exists()
    assert _text(out) == _text(single)


def test_limit_writes_a_trial_file_beside_the_submission(recipe, tiny_data, single, tmp_path):
    out = tmp_path / "submission.csv.gz"
    out.write_bytes(single.read_bytes())
    before = out.read_bytes()
    summary = _run(recipe, tiny_data, out, limit=3)
    trial = limit_path(out, 3)
    assert out.read_bytes() == before, "--limit touched the final submission"
    assert summary["file"] == str(trial) and summary["partial"] and "trial" in trial.name
    assert _text(trial).splitlines() == _text(single).splitlines()[:4]


def test_resume_key_ignores_how_the_data_path_is_spelled(recipe, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "s.csv.gz"
    _run(recipe, tiny_data, out)
    spelled = tiny_data.parent / "." / tiny_data.name / ".." / tiny_data.name
    link = tmp_path / "link"
    link.symlink_to(tiny_data)

    def boom(mask):
        raise AssertionError("recomputed a finished submission")

    monkeypatch.setattr(rle, "encode", boom)
    for data in (spelled, link, str(tiny_data) + "/"):
        assert _run(recipe, data, out)["rows"] == 16


def test_crash_after_the_final_rename_does_not_recompute(recipe, tiny_data, single, tmp_path, monkeypatch):
    out = tmp_path / "s.csv.gz"
    real_replace = os.replace

    def replace_then_die(src, dst):
        real_replace(src, dst)
        if Path(dst) == out:
            raise KeyboardInterrupt  # power cut right after the rename

    monkeypatch.setattr(submission_mod.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(recipe, tiny_data, out)
    monkeypatch.setattr(submission_mod.os, "replace", real_replace)
    monkeypatch.setattr(rle, "encode", lambda mask: pytest.fail("recomputed"))
    assert _run(recipe, tiny_data, out)["rows"] == 16
    assert _text(out) == _text(single)


@pytest.mark.slow
def test_second_writer_is_refused_and_a_stale_lock_is_not(recipe, tiny_data, single, tmp_path):
    out = tmp_path / "s.csv.gz"
    lock = out.with_name(out.name + ".lock")
    for i in range(2):
        _run(recipe, tiny_data, out, shard=(i, 2))  # shard files have locks of their own
    with open(lock, "w") as held:  # another run, alive, holding the lock
        held.write("pid 424242 on host elsewhere\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DataError, match=r"another run is writing it \(pid 424242 on host elsewhere"):
            _run(recipe, tiny_data, out)
        with pytest.raises(DataError, match="another run is writing it"):
            merge_shards(tiny_data, out)
    assert not out.exists()
    # The holder was killed: the lock file stays, the kernel lock is gone; the next run proceeds.
    assert lock.read_text().startswith("pid 424242")
    _run(recipe, tiny_data, out)
    assert _text(out) == _text(single)


def test_writer_writes_what_the_name_says(recipe, tiny_data, single, tmp_path):
    plain = tmp_path / "s.csv"
    _run(recipe, tiny_data, plain)
    assert plain.read_bytes()[:13] == b"img,rle_mask\n"
    assert plain.read_text() == _text(single)
    with pytest.raises(SubmissionError, match=r"s\.txt: a submission must be named \*\.csv\.gz"):
        _run(recipe, tiny_data, tmp_path / "s.txt")
    assert not (tmp_path / "s.txt").exists()


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
