"""Reading the Kaggle layout's files (pipeline/data/layout.py): photos and masks read as what they show,
and a broken file named."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.data.folds import scan_train
from pipeline.data.layout import DataError, Layout, read_image, read_mask
from tests.conftest import copy_data as _copy
from tests.conftest import first_train_image as _first_train_image
from tests.conftest import truncate as _truncate


def test_corrupt_image_named(tmp_path):
    p = tmp_path / "0123456789ab_01.jpg"
    p.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="0123456789ab_01.jpg"):
        read_image(p, 32, 48)


def test_read_image_resizes(tiny_data):
    p = sorted((tiny_data / "train").iterdir())[0]
    assert read_image(p).shape == (64, 96, 3)
    assert read_image(p, 32, 48).shape == (32, 48, 3)
    m = read_mask(tiny_data / "train_masks" / (p.stem + "_mask.gif"), 32, 48)
    assert m.shape == (32, 48) and set(np.unique(m)) <= {0, 1}


def _bgr_then_rgb(path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """How photos were read before they were decoded to RGB directly: BGR, then swapped."""
    return cv2.cvtColor(cv2.imdecode(np.fromfile(path, np.uint8), flags), cv2.COLOR_BGR2RGB)


def test_photos_decode_to_the_rgb_of_a_bgr_decode(tmp_path):
    """Decoded straight to RGB, at full size and DCT-reduced, photos of every kind are the BGR decode swapped."""
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (160, 240, 3), dtype=np.uint8), (0, 0), 3)
    files = {
        "colour.jpg": smooth,
        "grey.jpg": smooth[..., 0],
        "colour.png": smooth,
        "grey.png": smooth[..., 0],
        "alpha.png": np.dstack([smooth, np.full(smooth.shape[:2], 200, np.uint8)]),
        "deep.png": smooth.astype(np.uint16) * 257,
        "colour.bmp": smooth,
    }
    for name, pixels in files.items():
        path = tmp_path / name
        assert cv2.imwrite(str(path), pixels)
        assert np.array_equal(read_image(path), _bgr_then_rgb(path)), name
        for scale, flags in ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4)):
            got = read_image(path, 160 // scale, 240 // scale)
            assert np.array_equal(got, _bgr_then_rgb(path, flags)), (name, scale)


def test_truncated_jpeg_is_a_decode_failure(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    victim = _first_train_image(data)
    assert read_image(victim).shape == (64, 96, 3)
    _truncate(victim)
    assert cv2.imread(str(victim)) is not None  # what OpenCV does: grey fill, no error
    with pytest.raises(DataError, match=rf"{victim.name}: truncated JPEG"):
        read_image(victim, 32, 48)
    with pytest.raises(DataError, match=rf"{victim.name}: truncated JPEG"):
        scan_train(Layout(data), n_jobs=1)  # folds reads more than the header now


def _encodings(m):
    kaggle = Image.fromarray(m, "L").convert("P")
    kaggle.putpalette([0, 0, 0, 255, 255, 255])
    reversed_palette = Image.fromarray(1 - m, "L").convert("P")
    reversed_palette.putpalette([255, 255, 255, 0, 0, 0])
    return {
        "kaggle.gif": kaggle,
        "reversed_palette.gif": reversed_palette,
        "grey01.png": Image.fromarray(m, "L"),
        "grey255.png": Image.fromarray(m * 255, "L"),
        "grey255.gif": Image.fromarray(m * 255, "L"),
        "rgb255.png": Image.fromarray(np.stack([m * 255] * 3, -1), "RGB"),
        "bilevel.png": Image.fromarray(m.astype(bool)),
        "opaque_rgba.png": Image.fromarray(np.dstack([m * 255] * 3 + [np.full_like(m, 255)]), "RGBA"),
    }


def test_masks_in_any_encoding_read_as_what_they_show(tmp_path):
    m = np.zeros((64, 96), np.uint8)
    m[20:40, 30:70] = 1
    for name, im in _encodings(m).items():
        im.save(tmp_path / name)
        got = read_mask(tmp_path / name)
        assert got.dtype == np.uint8 and np.array_equal(got, m), name
    soft = cv2.GaussianBlur(m * 255, (5, 5), 0)  # anti-aliased edges: not a binary mask
    Image.fromarray(soft, "L").save(tmp_path / "soft.png")
    with pytest.raises(DataError, match=r"soft.png: mask shows grey levels \[0, .*expected a binary mask"):
        read_mask(tmp_path / "soft.png")
    see_through = np.dstack([m * 255] * 3 + [m * 255])
    Image.fromarray(see_through, "RGBA").save(tmp_path / "alpha.png")
    with pytest.raises(DataError, match="alpha.png: mask has transparency"):
        read_mask(tmp_path / "alpha.png")
