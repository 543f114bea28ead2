"""The photos predict reads (pipeline/stages/predict.py): any file name, any orientation, never its own
outputs; its upright copies stay in its own folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.stages.predict import OutputLog
from tests.conftest import run_cli as _cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
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


@pytest.mark.slow
def test_predict_keeps_its_upright_copies_in_its_own_folder(folder, tiny_data, tmp_path, monkeypatch, capsys):
    from PIL import Image

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    src = next((tiny_data / "test").glob("*.jpg"))
    rotated = tmp_path / "in" / "phone.jpg"
    rotated.parent.mkdir()
    im = Image.open(src)
    exif = im.getexif()
    exif[0x0112] = 6  # stored sideways, shown upright
    im.save(rotated, exif=exif)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / ".upright-left-by-a-kill").mkdir()  # as a killed predict leaves it: listed in its log
    OutputLog(tmp_path / "p").mark([tmp_path / "p" / ".upright-left-by-a-kill"], "upright", "claimed")
    code, _, _ = _cli(capsys, "predict", rotated, "--pretrained", folder, "--out", tmp_path / "p")
    assert code == 0 and (tmp_path / "p" / "phone_mask.png").is_file()
    assert list(system_tmp.iterdir()) == []
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(".upright")]
