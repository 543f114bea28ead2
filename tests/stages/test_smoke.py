"""make smoke: a real config through every stage on a handful of images, in a scratch folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import main
from tests.conftest import REAL, needs_real_data

STAGES = [
    "build model",
    "train step 1 (warm-up)",
    "train step 2",
    "validate (2 images)",
    "out-of-fold (2 images)",
    "ensemble",
    "submission (4 images)",
    "predict (1 image)",
]


SMALL = ["--set", "model.encoder_weights=none", "--set", "train.num_workers=0", "--set", "predict.num_workers=0"]


def _smoke(data, tmp_path, capsys, size, config):
    out = tmp_path / "smoke.json"
    h, w = size
    args = ["smoke", "--config", config, "--data", str(data), "--device", "cpu", "--json", str(out)]
    assert main(args + SMALL + ["--set", f"image.height={h}", "--set", f"image.width={w}"]) == 0
    printed = capsys.readouterr().out
    scratch = re.search(r"scratch (\S+)", printed)[1]
    return json.loads(out.read_text()), printed, scratch


@pytest.mark.slow
def test_smoke_on_tiny_data(tiny_data, tmp_path, capsys):
    res, printed, scratch = _smoke(tiny_data, tmp_path, capsys, (32, 48), "configs/demo-mobilenetv3.yaml")
    assert [s["stage"] for s in res["stages"]] == STAGES
    assert all(s["seconds"] > 0 and s["peak_gb"] > 0 for s in res["stages"])
    assert res["submission_rows"] == 4 and 0 <= res["oof_dice"] <= 1
    assert (res["size"], res["train_precision"], res["inference_precision"]) == ("32x48", "fp32", "fp32")
    assert res["memory"]["peaks_reset_per_stage"]  # Linux: each stage's own peak, not the process's so far
    assert "largest batch on this device" in printed
    assert not Path(scratch).exists()  # a temporary folder, removed; nothing in runs/


@pytest.mark.slow
@needs_real_data()
def test_smoke_on_two_real_cars_at_reduced_size(tmp_path, capsys):
    res, _, _ = _smoke(REAL, tmp_path, capsys, (128, 192), "configs/vgg11.yaml")
    assert [s["stage"] for s in res["stages"]] == STAGES and res["submission_rows"] == 4
    memory = res["memory"]  # at 128x192 a training image's activations are ~30 MB: measurable
    assert memory["train"]["per_image_gb"] > 0 and memory["train"]["max_batch"] >= 1


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
