"""Kaggle run-length encoding (pipeline/masks/rle.py): exact strings, round trips, strict parsing."""

import numpy as np
import pytest

from pipeline.masks import rle
from tests.conftest import REAL, needs_real_data


def test_exact_strings_row_major_one_indexed():
    m = np.array([[0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=np.uint8)
    # flat: 0 1 1 0 1 1 0 0 0 0 0 1 -> runs start at pixel 2 (len 2), 5 (len 2), 12 (len 1)
    assert rle.encode(m) == "2 2 5 2 12 1"


def test_first_and_last_pixel_and_edges():
    m = np.zeros((2, 3), bool)
    m[0, 0] = m[1, 2] = True
    assert rle.encode(m) == "1 1 6 1"
    assert rle.encode(np.ones((2, 3), bool)) == "1 6"
    assert rle.encode(np.zeros((2, 3), bool)) == ""
    row_wrap = np.array([[0, 0, 1], [1, 0, 0]])  # a run that wraps from one row into the next
    assert rle.encode(row_wrap) == "3 2"


def test_dtypes_agree():
    m = np.random.default_rng(0).random((37, 53)) > 0.5
    s = rle.encode(m)
    assert rle.encode(m.astype(np.uint8)) == s
    assert rle.encode(m.astype(np.uint8) * 255) == s
    assert rle.encode(m.astype(np.float32)) == s


@pytest.mark.parametrize("seed", range(5))
def test_round_trip_random(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 40, 2)
    m = (rng.random((h, w)) > rng.random()).astype(np.uint8)
    m[0, 0], m[-1, -1] = rng.integers(0, 2, 2)
    assert np.array_equal(rle.decode(rle.encode(m), h, w), m)


def test_round_trip_full_size():
    m = np.zeros((1280, 1918), np.uint8)
    m[300:900, 100:1800] = 1
    m[0, 0] = m[-1, -1] = 1
    s = rle.encode(m)
    assert s.startswith("1 1 ") and s.endswith(f"{1280 * 1918} 1")
    assert np.array_equal(rle.decode(s, 1280, 1918), m)


@pytest.mark.parametrize(
    "bad, msg",
    [
        ("1 2 3", "odd number"),
        ("0 2", "start 0"),
        ("1 0", "length 0"),
        ("5 2 1 1", "out of order"),
        ("1 3 3 1", "overlapping"),
        ("1 2 3 1", "touching"),
        ("11 1", "beyond"),
        ("1 x", "not a positive integer"),
        ("-1 2", "not a positive integer"),
    ],
)
def test_parse_rejects(bad, msg):
    with pytest.raises(rle.RLEError, match=msg):
        rle.parse(bad, 10)


def test_empty_string_decodes_to_empty_mask():
    assert rle.decode("", 2, 2).sum() == 0


@needs_real_data()
def test_real_mask_matches_kaggle_train_masks_csv():
    from pipeline.data.layout import read_mask

    m = read_mask(REAL / "train_masks" / "00087a6bd4dc_01_mask.gif")
    assert m.shape == (1280, 1918)
    s = rle.encode(m)
    assert s.startswith("879386 40 881253 141 883140 205 885009 17")
    assert rle.encode(read_mask(REAL / "train_masks" / "00087a6bd4dc_02_mask.gif")).startswith(
        "873779 4 875695 7 877612 9 879528 12 881267 15"
    )
    assert np.array_equal(rle.decode(s, 1280, 1918), m)
