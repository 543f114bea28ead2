"""Post-processing steps on constructed masks, the contour round trip, and the adaptive smoothing rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.data.layout import read_mask
from pipeline.masks import contours as contours_mod
from pipeline.masks import postprocess as pp
from tests.conftest import REAL, needs_real_data


def _disk(size: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    return ((xx - c) ** 2 + (yy - c) ** 2 < radius**2).astype(np.uint8)


def _jagged_disk(size: int = 96, radius: float = 35, seed: int = 0) -> np.ndarray:
    """A disk whose outline has random one-pixel bumps and notches."""
    disk = _disk(size, radius)
    rng = np.random.default_rng(seed)
    k = np.ones((3, 3), np.uint8)
    jag = disk.copy()
    for ring, value in ((disk - cv2.erode(disk, k), 0), (cv2.dilate(disk, k) - disk, 1)):
        ys, xs = np.nonzero(ring)
        pick = rng.random(len(ys)) < 0.3
        jag[ys[pick], xs[pick]] = value
    return jag


def _contour_length(mask: np.ndarray) -> float:
    contours = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)[0]
    return sum(cv2.arcLength(c, True) for c in contours)


def test_largest_cc_keeps_only_the_biggest_8_connected_blob():
    m = np.zeros((40, 60), np.uint8)
    m[5:15, 5:15] = 1  # 100 px
    m[15:18, 15:18] = 1  # touches the first blob diagonally only: same 8-connected component (109 px)
    m[20:35, 30:36] = 1  # 90 px
    out = pp.largest_cc(m)
    expected = np.zeros_like(m)
    expected[5:15, 5:15] = 1
    expected[15:18, 15:18] = 1
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8


def test_remove_small_drops_specks_keeps_big_blobs():
    m = np.zeros((200, 200), np.uint8)  # threshold 0.0005 * 40000 = 20 px
    m[10:60, 10:60] = 1  # largest
    m[100:110, 100:110] = 1  # 100 px: kept
    m[150:154, 20:24] = 1  # 16 px speck: removed
    m[180, 180] = 1  # 1 px speck: removed
    out = pp.remove_small(m)
    expected = m.copy()
    expected[150:154, 20:24] = 0
    expected[180, 180] = 0
    np.testing.assert_array_equal(out, expected)
    # unlike largest_cc, a second big blob survives
    assert pp.largest_cc(m)[100:110, 100:110].sum() == 0


def test_remove_small_keeps_the_largest_blob_even_when_it_is_small():
    m = np.zeros((200, 200), np.uint8)
    m[5:8, 5:8] = 1  # 9 px, the largest
    m[50, 50] = 1
    out = pp.remove_small(m)
    expected = np.zeros_like(m)
    expected[5:8, 5:8] = 1
    np.testing.assert_array_equal(out, expected)


def test_fill_holes_fills_small_holes_only():
    m = np.zeros((200, 200), np.uint8)  # threshold 20 px
    m[20:180, 20:180] = 1
    m[40:42, 40:42] = 0  # 4 px hole: filled
    m[60:70, 60:70] = 0  # 100 px hole (a window): kept
    m[100:102, 100:102] = 0
    m[102:104, 102:104] = 0  # diagonal neighbour: two 4 px holes under 4-connectivity, both filled
    m[150:152, 0:20] = 0  # a 2x20 notch open to the image border from the outside: untouched
    m[178:180, 178:180] = 0  # a bite out of the corner, connected to the outside background: untouched
    m[20, 20] = 0  # corner pixel cut away: outside background
    m[21:23, 21:23] = 0  # 4 px pocket meeting it only diagonally: enclosed for an 8-connected car, filled
    out = pp.fill_holes(m)
    expected = m.copy()
    expected[40:42, 40:42] = 1
    expected[100:104, 100:104] = 1
    expected[21:23, 21:23] = 1
    np.testing.assert_array_equal(out, expected)


def test_fill_holes_keeps_background_touching_the_border():
    m = np.zeros((200, 200), np.uint8)
    m[0:10, :] = 1
    m[:, 0:10] = 1  # an L along two borders: the small background pocket is not a hole unless enclosed
    m[0:3, 100:103] = 0  # 9 px notch on the border row
    np.testing.assert_array_equal(pp.fill_holes(m), m)


def _car(h=256, w=384):
    """A car-like blob on a 384x256 image (diagonal 461 px: the gap is 23 px at FAR_BLOB_GAP 0.05)."""
    m = np.zeros((h, w), np.uint8)
    m[60:180, 60:320] = 1
    return m


def test_remove_far_blobs_drops_a_blob_far_from_the_car():
    m = _car()
    m[236:244, 20:180] = 1  # a false blob on the floor edge, 56 px below the car, 1.3 % of the image
    out = pp.remove_far_blobs(m)
    np.testing.assert_array_equal(out, _car())


def test_remove_far_blobs_keeps_thin_and_small_pieces_near_the_car():
    m = _car()
    m[182:184, 80:300] = 1  # a thin sliver 2 px below the car (a bumper edge cut off by the threshold)
    m[50:52, 150:152] = 1  # a 4-pixel antenna tip, 8 px above the roof
    for k in range(4):  # an antenna drawn as a row of pieces, each 10 px from the next: its tip 56 px away
        m[40 - 12 * k : 42 - 12 * k, 250:252] = 1
    np.testing.assert_array_equal(pp.remove_far_blobs(m), m)


def test_remove_far_blobs_gap_is_a_fraction_of_the_diagonal():
    m = _car()
    m[204:208, 100:140] = 1  # 24 px below the car: just beyond 0.05 of the diagonal, within 0.06
    assert pp.remove_far_blobs(m)[206, 120] == 0
    assert pp.remove_far_blobs(m, max_gap=0.06)[206, 120] == 1


@needs_real_data()
@pytest.mark.parametrize(
    "name",  # the real masks with separate pieces (the farthest 33 px from the body; docs/record/post-processing.md)
    ["0d3adbbc9a8b_15", "0d3adbbc9a8b_12", "2335eef27de6_08", "2335eef27de6_01", "2335eef27de6_09",
     "2af7c265531e_16", "28d9a149cb02_02"],
)  # fmt: skip
def test_remove_far_blobs_keeps_every_true_pixel_of_real_masks_with_pieces(name):
    m = read_mask(REAL / "train_masks" / f"{name}_mask.gif")
    assert cv2.connectedComponents(m, connectivity=8)[0] > 2  # the car and at least one separate piece
    np.testing.assert_array_equal(pp.remove_far_blobs(m), m)


def _far_blobs_reference(mask: np.ndarray, max_gap: float = pp.FAR_BLOB_GAP) -> np.ndarray:
    """remove_far_blobs written plainly over the whole image: the pieces labelled everywhere, the distance
    transform in the window around the other pieces, the far ones erased through the full label image."""
    mask = (mask > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 2:
        return mask
    kept = pp.car_pieces(stats, mask.size)
    others = np.flatnonzero(~kept[1:]) + 1
    if not len(others):
        return mask
    gap = max_gap * float(np.hypot(*mask.shape))
    pad, box = int(np.ceil(gap)) + 1, stats[others]
    x0, y0 = max(0, box[:, 0].min() - pad), max(0, box[:, 1].min() - pad)
    x1 = min(mask.shape[1], (box[:, 0] + box[:, 2]).max() + pad)
    y1 = min(mask.shape[0], (box[:, 1] + box[:, 3]).max() + pad)
    window = labels[y0:y1, x0:x1]
    reach = cv2.distanceTransform((window == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= gap / 2
    linked = cv2.connectedComponents(reach.astype(np.uint8), connectivity=8)[1]
    car = np.zeros(linked.max() + 1, bool)
    car[np.unique(linked[kept[window]])] = True
    far = np.zeros(n, bool)
    far[np.unique(window[~car[linked] & (window > 0)])] = True
    far[kept] = False
    return (mask.astype(bool) & ~far[labels]).astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_remove_far_blobs_is_its_whole_image_reference(seed):
    """Labelled in the foreground's box and erased piece by piece, the result is the whole-image one's:
    cars and blobs anywhere, the borders included, at several gaps."""
    rng = np.random.default_rng(seed)
    for _ in range(20):
        m = np.zeros((int(rng.integers(40, 200)), int(rng.integers(40, 300))), np.uint8)
        h, w = m.shape
        for _ in range(int(rng.integers(0, 9))):
            y, x = int(rng.integers(-10, h)), int(rng.integers(-10, w))
            m[max(0, y) : y + int(rng.integers(1, h // 2)), max(0, x) : x + int(rng.integers(1, w // 2))] = 1
        m[rng.integers(0, h, 6), rng.integers(0, w, 6)] = 1  # specks
        for gap in (0.02, pp.FAR_BLOB_GAP, 0.2):
            for given in (m, m.astype(bool), m * 255):
                out = pp.remove_far_blobs(given, gap)
                assert out.dtype == np.uint8 and np.array_equal(out, _far_blobs_reference(given, gap))
                assert np.array_equal(given > 0, m > 0)  # the input untouched


@pytest.mark.parametrize(
    "mask",
    [
        np.array([[0, 1, 2], [255, 0, 7]], np.uint8),
        np.array([[0, 1, 2], [255, 0, 7]], np.uint8)[:, ::2],  # not contiguous
        np.array([[True, False], [False, True]]),
        np.array([[-1, 0, 3]], np.int64),
        np.array([[np.nan, 0.2, -0.5, 0.0]]),
        np.zeros((0, 4), np.uint8),
    ],
)
def test_every_step_reads_a_mask_as_its_positive_pixels(mask):
    out = pp._as_mask(mask)
    assert out.dtype == np.uint8 and out.shape == mask.shape and np.array_equal(out, (mask > 0).astype(np.uint8))
    assert not np.shares_memory(out, mask)


@pytest.mark.parametrize("step", list(pp.POSTPROCESS))
@pytest.mark.parametrize("fill", [0, 1])
def test_every_step_is_identity_on_empty_and_full_masks(step, fill):
    m = np.full((48, 64), fill, np.uint8)
    out = pp.apply(m, [step])
    np.testing.assert_array_equal(out, m)
    assert out.dtype == np.uint8 and out.shape == m.shape


def test_apply_runs_steps_in_order_and_does_not_modify_its_input():
    m = np.zeros((200, 200), np.uint8)
    m[20:100, 20:100] = 1
    m[50:52, 50:52] = 0  # small hole
    m[150:160, 150:160] = 1  # second blob
    before = m.copy()
    out = pp.apply(m, ["largest_cc", "fill_holes"])
    expected = np.zeros_like(m)
    expected[20:100, 20:100] = 1
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(m, before)
    assert out is not m
    np.testing.assert_array_equal(pp.apply(m, []), m)
    np.testing.assert_array_equal(pp.apply(m, ["none"]), m)
    np.testing.assert_array_equal(pp.apply(m, "largest_cc+fill_holes"), expected)
    assert pp.apply(m, []) is not m


def test_apply_accepts_bool_and_0_255_masks():
    m = np.zeros((30, 30), np.uint8)
    m[5:20, 5:20] = 255
    out = pp.apply(m, ["none"])
    assert set(np.unique(out)) == {0, 1}
    np.testing.assert_array_equal(pp.apply(m > 0, ["largest_cc"]), out)


def test_unknown_step_raises_and_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown post-processing step 'dilate'") as e:
        pp.apply(np.zeros((8, 8), np.uint8), ["largest_cc", "dilate"])
    for name in pp.POSTPROCESS:
        assert name in str(e.value)


def test_non_2d_mask_raises():
    with pytest.raises(ValueError, match="2-D mask"):
        pp.apply(np.zeros((8, 8, 3), np.uint8), ["none"])


def test_unsmoothed_contours_rasterise_back_to_the_same_mask():
    """Outer contours filled with 1, holes with 0 and their boundary redrawn: pixel-identical, nested too."""
    rng = np.random.default_rng(3)
    masks = [(rng.random((40, 50)) < p).astype(np.uint8) for p in (0.2, 0.5, 0.8)]
    nested = np.zeros((40, 40), np.uint8)
    nested[2:38, 2:38] = 1
    nested[8:32, 8:32] = 0  # hole
    nested[12:28, 12:28] = 1  # island in the hole
    nested[18:22, 18:22] = 0  # hole in the island
    nested[0, :] = 1  # touches the border
    masks += [nested, _jagged_disk(), np.ones((5, 7), np.uint8), np.zeros((5, 7), np.uint8)]
    for m in masks:
        contours, depth = contours_mod.find_contours(m)
        np.testing.assert_array_equal(contours_mod.rasterize_contours(contours, depth, m.shape), m)
    assert sorted(contours_mod.find_contours(nested)[1].tolist()) == [0, 0, 1, 2, 3]  # the border row is its own blob


def test_sigma_zero_everywhere_is_the_identity():
    """A curve with every point fixed keeps its points: smooth_contour reduces to the exact round trip."""
    m = _jagged_disk()
    contours, depth = contours_mod.find_contours(m)
    smoothed = [pp.adaptive_smooth(c, np.ones(len(c), bool)) for c in contours]
    for c, (s, sigma) in zip(contours, smoothed):
        np.testing.assert_array_equal(s, c)
        assert not sigma.any()
    np.testing.assert_array_equal(contours_mod.rasterize_contours([s for s, _ in smoothed], depth, m.shape), m)


@needs_real_data()
def test_round_trip_and_smoothing_on_real_masks():
    paths = sorted((REAL / "train_masks").glob("*_mask.gif"))[::240]
    assert paths
    k = np.ones((3, 3), np.uint8)
    for path in paths:
        m = read_mask(path)
        contours, depth = contours_mod.find_contours(m)
        np.testing.assert_array_equal(contours_mod.rasterize_contours(contours, depth, m.shape), m, err_msg=str(path))
        # Every contour point moves < 0.5 px, so the smoothed outline re-rasterises to the same pixels up to
        # the rounding of lines between points: a handful of pixels, all on the car's outline.
        changed = pp.smooth_contour(m) != m
        boundary = cv2.dilate(m, k) != cv2.erode(m, k)
        assert changed.sum() <= 50, path
        assert not (changed & ~boundary).any(), path


def _reference_smoothing(points: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """The rule written plainly, point by point: an open curve is one segment with ends points[0], points[-1]."""
    n = len(points)
    grid = np.arange(0, pp.SIGMA_MAX + 0.25, 0.5)

    def smooth_at(i, sigma):
        if sigma == 0:
            return points[i]
        r = int(2 * sigma)
        k = np.arange(-r, r + 1)
        w = np.exp(-(k**2) / (2 * sigma**2))
        idx = (i + k) % n if closed else i + k
        return (w[:, None] * points[idx]).sum(0) / w.sum()

    sigma = np.zeros(n)
    for i in range(n):
        for s in grid[1:]:
            if not closed and (i - 2 * s < 0 or i + 2 * s > n - 1):
                break  # the kernel would leave the segment
            if np.hypot(*(smooth_at(i, s) - points[i])) >= 0.5:
                break
            sigma[i] = s
    if not closed:
        sigma[0] = sigma[-1] = 0
    for _ in range(2 if closed else 1):  # twice round a closed curve lets the limit wrap around
        for i in range(1, n) if not closed else range(n):
            sigma[i] = min(sigma[i], sigma[i - 1] + 0.5)
        for i in range(n - 2, -1, -1) if not closed else range(n - 1, -1, -1):
            sigma[i] = min(sigma[i], sigma[(i + 1) % n] + 0.5)
    return np.array([smooth_at(i, s) for i, s in enumerate(sigma)]), sigma


def _noisy_curve(n: int, closed: bool, seed: int) -> np.ndarray:
    """Points along an ellipse (closed) or an arc, rounded to pixels, with a few one-pixel kinks and a straight run."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi if closed else 2.0, n, endpoint=not closed)
    pts = np.stack([40 + 30 * np.cos(t), 40 + 18 * np.sin(t)], axis=1)
    pts[n // 3 : n // 3 + 60] = pts[n // 3] + np.outer(np.arange(60), [0.0, 1.0])  # a straight run
    pts = np.round(pts)
    kinks = rng.choice(np.r_[0 : n // 3 - 5, n // 3 + 65 : n], size=6, replace=False)  # none on the straight run
    pts[kinks, 0] += rng.choice([-1, 1], size=6)
    return pts


@pytest.mark.parametrize("closed", [True, False])
def test_adaptive_smoothing_matches_a_point_by_point_reference(closed):
    pts = _noisy_curve(200, closed, seed=5)
    fixed = None
    if not closed:
        fixed = np.zeros(len(pts), bool)
        fixed[[0, -1]] = True
    smoothed, sigma = pp.adaptive_smooth(pts, fixed)
    ref_smoothed, ref_sigma = _reference_smoothing(pts, closed)
    np.testing.assert_array_equal(sigma, ref_sigma)
    np.testing.assert_allclose(smoothed, ref_smoothed, atol=1e-9)
    # the rule itself
    step = np.abs(np.diff(np.r_[sigma, sigma[0]] if closed else sigma))
    assert step.max() <= 0.5
    assert np.hypot(*(smoothed - pts).T).max() < 0.5
    assert set(np.unique(sigma * 2)) <= set(range(int(2 * pp.SIGMA_MAX) + 1))
    assert sigma.max() == pp.SIGMA_MAX  # the straight run gets the widest kernel
    if closed:
        assert sigma[0] > 0 and sigma[-1] > 0  # a closed curve has no ends: index 0 is not special
    else:
        assert sigma[0] == sigma[-1] == 0
        np.testing.assert_array_equal(smoothed[[0, -1]], pts[[0, -1]])


def test_contour_on_the_image_border_is_split_at_fixed_border_points():
    m = np.zeros((40, 60), np.uint8)
    m[10:40, 0:30] = 1  # touches the left and bottom borders
    m[9, [3, 7, 8, 15, 22]] = 1  # bumps on the top edge
    contours, smoothed, _ = pp.smooth_contours(m)
    (c,), (s,) = contours, smoothed
    on_border = (c[:, 0] == 0) | (c[:, 1] == 39)
    assert 0 < on_border.sum() < len(c)
    np.testing.assert_array_equal(s[on_border], c[on_border])
    _, sigma = pp.adaptive_smooth(c, on_border)
    assert not sigma[on_border].any()
    assert np.abs(np.diff(np.r_[sigma, sigma[0]])).max() <= 0.5
    assert np.hypot(*(s - c).T).max() < 0.5
    assert not np.array_equal(s, c)  # the free part was smoothed


def test_smooth_contour_keeps_straight_and_round_masks():
    rect = np.zeros((64, 96), np.uint8)
    rect[10:50, 20:80] = 1
    np.testing.assert_array_equal(pp.smooth_contour(rect), rect)
    disk = _disk(96, 35)
    np.testing.assert_array_equal(pp.smooth_contour(disk), disk)


def test_smoothing_a_jagged_disk_shortens_its_outline_and_changes_few_pixels():
    jag = _jagged_disk()
    contours, smoothed, _ = pp.smooth_contours(jag)
    main = int(np.argmax([len(c) for c in contours]))
    before = cv2.arcLength(contours[main].astype(np.float32), True)
    after = cv2.arcLength(smoothed[main].astype(np.float32), True)
    assert after < 0.9 * before
    out = pp.smooth_contour(jag)
    assert (out != jag).sum() <= 0.01 * jag.sum()
    assert _contour_length(out) <= _contour_length(jag)
