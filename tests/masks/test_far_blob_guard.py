"""The far-blob guard (``remove_far_blobs``) never deletes what is plausibly car: a piece of car size, a large
share of the largest piece, or a piece beside one of them (a post in front of the car, cars in a row) stays
wherever it is; the small far blobs on the platform edge that it exists for still go."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.data.layout import Layout, read_mask
from pipeline.masks import postprocess as pp
from tests.conftest import REAL, needs_real_data

H, W = 256, 384  # diagonal 461 px: the guard's gap is 23 px, as 115 px is at 1918x1280


def _blank() -> np.ndarray:
    return np.zeros((H, W), np.uint8)


def _car(m: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """A car-like shape: a body, and a cabin on its upper half (its rows are the car's rows)."""
    m[top + height // 3 : top + height, left : left + width] = 1
    m[top : top + height // 3, left + width // 4 : left + 3 * width // 4] = 1
    return m


def test_a_post_wider_than_the_gap_never_deletes_the_car_behind_it():
    car = _car(_blank(), 60, 40, 120, 300)  # 27 % of the image
    for start, width in ((48, 40), (150, 40), (150, 100), (300, 36)):  # slivers of 8 px, halves, the far end
        m = car.copy()
        m[:, start : start + width] = 0  # a post in front of it, wider than the gap
        assert cv2.connectedComponents(m, connectivity=8)[0] == 3  # the car in two pieces
        np.testing.assert_array_equal(pp.remove_far_blobs(m), m)
    two_posts = car.copy()
    two_posts[:, 100:140] = 0
    two_posts[:, 250:290] = 0
    np.testing.assert_array_equal(pp.remove_far_blobs(two_posts), two_posts)


@pytest.mark.parametrize(
    "cars",
    [
        [(70, 10, 70, 150), (70, 220, 70, 150)],  # two side by side, far apart: 7 % of the image each
        [(5, 100, 60, 150), (180, 100, 60, 150)],  # stacked: 6 % each, no row in common
        [(10, 20, 150, 330), (200, 300, 35, 75)],  # big and small, the small one below: 2.1 %, a 5 % share
        [(100, 5 + 76 * k, 40, 45) for k in range(5)],  # five in a row, 1.5 % each, 31 px apart
    ],
    ids=["side by side", "stacked", "big and small", "five in a row"],
)
def test_every_car_of_a_photo_with_several_is_kept(cars):
    m = _blank()
    for top, left, height, width in cars:
        _car(m, top, left, height, width)
    assert cv2.connectedComponents(m, connectivity=8)[0] == len(cars) + 1
    np.testing.assert_array_equal(pp.remove_far_blobs(m), m)


def test_a_small_car_is_kept_beside_a_larger_false_blob():
    m = _car(_blank(), 20, 30, 40, 70)  # a small car, 1.9 % of the image
    m[235:250, 150:380] = 1  # a larger flat blob on the floor: the largest piece
    np.testing.assert_array_equal(pp.remove_far_blobs(m), m)


def test_the_platform_edge_blobs_it_exists_for_still_go():
    car = _car(_blank(), 40, 60, 140, 260)  # 28 % of the image, lowest row 179
    m = car.copy()
    # Flat blobs on the platform edge, well below the car, at the sizes of the real ones
    # (docs/record/post-processing.md):
    # 1.3 %, 0.5 % and 0.1 % of the image, the largest 10 % of the car.
    cv2.ellipse(m, (45, 232), (40, 10), 0, 0, 360, 1, -1)
    cv2.ellipse(m, (200, 238), (28, 5), 0, 0, 360, 1, -1)
    cv2.ellipse(m, (350, 230), (10, 3), 0, 0, 360, 1, -1)
    assert cv2.connectedComponents(m, connectivity=8)[0] == 5
    np.testing.assert_array_equal(pp.remove_far_blobs(m), car)


def test_what_counts_as_car():
    stats = np.array(
        [
            [0, 0, W, H, 0],  # the background
            [10, 50, 200, 100, 15_000],  # the largest piece
            [300, 10, 20, 20, 2_000],  # car size (2 % of 98,304 px is 1,966)
            [300, 200, 20, 20, 400],  # small, below the largest: a blob
            [250, 60, 10, 40, 300],  # small, within the largest's rows: beside it
            [250, 140, 10, 20, 150],  # small, half of its rows within the largest's: beside it
        ]
    )
    assert pp.car_pieces(stats, H * W).tolist() == [False, True, True, False, True, True]


@pytest.mark.real_data
@needs_real_data()
@pytest.mark.parametrize("name", ["00087a6bd4dc_01", "00087a6bd4dc_06", "0789bed99cb8_03", "0d3adbbc9a8b_11"])
def test_real_true_masks_with_posts_and_as_pairs_keep_every_car_pixel(name):
    layout = Layout(REAL)
    m = read_mask(layout.mask(f"{name}.jpg"))
    cols = np.flatnonzero(m.any(0))
    for at in (0.08, 0.5, 0.92):  # a 120 px post (wider than the 115 px gap) near the rear, the middle, the front
        c = int(cols[0] + at * (cols[-1] - cols[0]))
        o = m.copy()
        o[:, c - 60 : c + 60] = 0
        np.testing.assert_array_equal(pp.remove_far_blobs(o), o)
    half = cv2.resize(m, (m.shape[1] // 2, m.shape[0] // 2), interpolation=cv2.INTER_NEAREST)
    pair = np.zeros_like(m)
    pair[320:960, :959] = half  # two cars side by side, each at half size
    pair[320:960, 959:1918] = half
    stacked = np.zeros_like(m)
    stacked[:640, 480:1439] = half
    stacked[640:, 480:1439] = half
    for composed in (pair, stacked):
        np.testing.assert_array_equal(pp.remove_far_blobs(composed), composed)
