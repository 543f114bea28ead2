"""The readers' limits (pipeline/data/layout.py): one pixel limit, read from the header before any decoding,
for photos, masks and predict's background; a FIFO or other file that is not a regular file refused by its
status before it is opened; and the test split that would leave a fold empty refused before training."""

from __future__ import annotations

import os
import signal
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import DataError
from pipeline.data.layout import MAX_PIXELS, image_size, read_image, read_mask
from tests.conftest import run_cli, tiny_config


def _jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose header (SOF0) says ``width`` x ``height``: what a reader sees before decoding."""
    ok, buf = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A small PNG whose IHDR says ``width`` x ``height`` (with its checksum), as a 876 KB bomb would."""
    ok, buf = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    data = bytearray(buf.tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind, size", [("jpg", (16000, 10667)), ("png", (30000, 30000)), ("png", (9000, 6000))])
def test_an_image_past_the_pixel_limit_is_refused_from_its_header(tmp_path, kind, size):
    path = (_jpeg_claiming if kind == "jpg" else _png_claiming)(tmp_path / f"big.{kind}", *size)
    assert size[0] * size[1] > MAX_PIXELS
    for read in (image_size, read_image, read_mask):
        with pytest.raises(DataError, match="megapixels, more than the 50 this pipeline reads"):
            read(path)


def test_the_limit_lets_a_48_megapixel_phone_photo_through(tmp_path):
    assert image_size(_jpeg_claiming(tmp_path / "phone.jpg", 8000, 6000)) == (8000, 6000)


@pytest.fixture
def alarm():
    """A test that would hang fails after 20 s instead (a blocked open() is interrupted by the signal)."""

    def stop(*_):
        raise TimeoutError("hung")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_fifo_is_refused_by_its_status_before_it_is_opened(tmp_path, alarm):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    for read in (image_size, read_image, read_mask):
        with pytest.raises(DataError, match="a FIFO"):
            read(fifo)


@pytest.mark.slow
def test_predict_refuses_huge_photos_backgrounds_and_fifos_in_a_line_each(split_model, tmp_path, capsys, alarm):
    _, apart, _ = split_model
    photos = tmp_path / "in"
    photos.mkdir()
    _jpeg_claiming(photos / "huge.jpg", 16000, 10667)
    os.mkfifo(tmp_path / "fifo.jpg")
    code, out, err = run_cli(capsys, "predict", photos / "huge.jpg", "--pretrained", apart, "--out", tmp_path / "p")
    assert code == 2 and "huge.jpg: 16000x10667 is 171 megapixels" in out + err
    code, out, err = run_cli(capsys, "predict", tmp_path / "fifo.jpg", "--pretrained", apart, "--out", tmp_path / "q")
    assert code == 2 and "fifo.jpg: a FIFO (named pipe), not an image file" in out + err
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), np.full((64, 96, 3), 200, np.uint8))
    bomb = _png_claiming(tmp_path / "bg.png", 30000, 30000)
    code, out, err = run_cli(
        capsys, "predict", good, "--pretrained", apart, "--out", tmp_path / "r", "--background", bomb
    )
    assert code == 2 and "bg.png: more than" in err and "megapixels" in err
    assert not (tmp_path / "r").exists()  # refused before any model loaded or output folder was made


@pytest.mark.slow
def test_a_test_split_that_empties_a_fold_is_refused_before_training(tiny_data, tmp_path, capsys):
    from pipeline.data.folds import load_folds

    folds = load_folds(tiny_data.parent / "folds.csv")
    split = tmp_path / "split.csv"
    pd.DataFrame({"car_id": sorted(folds.car_id[folds.fold == 1].unique())}).to_csv(split, index=False)
    cfg = tiny_config(tiny_data, tmp_path / "runs", fold=1, test_split=str(split))
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    code, _, err = run_cli(capsys, "train", "--config", config, "--fold", "1")
    assert code == 2 and "split.csv: holds every car of fold 1's validation" in err
    assert not (tmp_path / "runs" / "tiny" / "fold1" / "last.pt").exists()
