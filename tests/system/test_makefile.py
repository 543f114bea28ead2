"""The Makefile's targets as a user calls them: paths with spaces, a recipe only when asked."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_make_predict_takes_paths_with_spaces(lab, tiny_data, tmp_path):
    runs, _ = lab
    folder = tmp_path / "my photos"
    folder.mkdir()
    photo = folder / "car 1.jpg"
    shutil.copy(sorted((tiny_data / "test").glob("*.jpg"))[0], photo)
    ckpt = runs / "a" / "fold0" / "best.pt"
    out = tmp_path / "out dir"
    installed = tmp_path / "installed"  # the venv's stamp, newer than requirements.txt whatever the checkout's times
    installed.touch()
    done = subprocess.run(
        ["make", "--no-print-directory", "predict", f"IN={photo}", f"OUT={out}", f"ARGS=--checkpoint {ckpt}",
         f"PY={sys.executable}", f"STAMP={installed}", "DEVICE=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "car 1_mask.png").is_file()


def test_make_passes_a_recipe_only_when_asked(tmp_path):
    def dry(*args):
        return subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    assert "--recipe" not in dry("predict", "IN=x.jpg")
    assert "--recipe" not in dry("merge")
    assert '--recipe "r.json"' in dry("predict", "IN=x.jpg", "RECIPE=r.json")
    sub = dry("submission", "PRETRAINED=models/carvana-unet-mobilenetv2")
    assert "--pretrained" in sub and "--recipe" not in sub
