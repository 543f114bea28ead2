"""Post-processing of a thresholded car mask (uint8 0/1, HxW), pluggable by name.

`apply(mask, ["largest_cc", "fill_holes", "smooth_contour"])` runs the named steps of `POSTPROCESS`
in order; `[]` or `["none"]` is the identity. Every step returns a new uint8 0/1 mask of the same
shape and never modifies its input.

Steps:
- `largest_cc`: keep only the largest 8-connected foreground component.
- `remove_small`: drop foreground components smaller than `MIN_BLOB_FRACTION` of the image, always
  keeping the largest one.
- `remove_far_blobs`: drop small pieces far from every car: false blobs on the floor or the platform
  edge. A piece is car, and kept wherever it is, when it is of car size (`CAR_PIECE_FRACTION` of the
  image), a large share of the largest piece (`CAR_PIECE_SHARE`), or beside such a piece (its rows
  within theirs: a part of the car cut off by a post in front of it, another car in the row); so is
  every piece that a chain of gaps of at most `FAR_BLOB_GAP` of the image diagonal links to a kept
  one (antenna tips, mirror edges). Measured on the 4,320 true masks, with posts painted through
  them and with cars composed side by side (docs/record/post-processing.md, docs/scripts/far_blobs.py).
- `fill_holes`: fill background components that do not touch the image border and are smaller than
  `MAX_HOLE_FRACTION` of the image; big holes (background seen through the windows) stay.
- `smooth_contour`: the adaptive contour smoothing of Heitzinger & Kampel, "Highly Accurate Binary
  Image Segmentation for Cars" (see `adaptive_smooth`), then rasterisation of the smoothed contours.

Steps that need more than the mask (`PHOTO_STEPS`): `active_contour` (pipeline/masks/snakes.py) moves the
uncertain stretches of the outline onto the photo's edges; `refine_outline` (pipeline/masks/outline_refiner.py)
redraws the tiles along the outline with a small learned network at full resolution. `apply` runs them
when given the blended uint8 probabilities, the photo and the recipe's `postprocess_params`, and
refuses them without.

Contour convention (measured, see tests): `cv2.findContours(CHAIN_APPROX_NONE)` returns the centres of
the foreground pixels on the boundary, for outer contours and for holes alike. `cv2.fillPoly` fills
every pixel whose centre lies inside or on the polygon, so an outer contour refilled with 1 gives
back its component exactly; a hole refilled with 0 also erases its foreground boundary pixels, which
`cv2.polylines` (LINE_8) then draws back with 1. Filling level by level of the contour tree (even
depth 1, odd depth 0) reproduces every mask pixel-exactly from its unsmoothed contours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from ..core.profile import PROFILE
from . import snakes
from .contours import find_contours, rasterize_contours

# Thresholds as fractions of the image area (0.0005 of 1918x1280 is 1,227 pixels).
MIN_BLOB_FRACTION = 0.0005
# A piece further than this from the car and from every piece linked to it (fraction of the image
# diagonal: 0.05 of 1918x1280 is 115 pixels) is not part of it. The real masks' pieces need 59 pixels.
FAR_BLOB_GAP = 0.05
# What is plausibly car, and never removed as a far blob (docs/record/post-processing.md, "The far-blob guard"): a piece
# of at least CAR_PIECE_FRACTION of the image (the smallest car of the 4,320 true masks is one piece of
# 8.8 % of its photo, 3a7a8f03e713_09; the largest false blob on the platform edge of the wide-framed
# photos the guard exists for, 1.35 %: 2 % keeps a car of half the smallest one's linear size), or of at
# least CAR_PIECE_SHARE of the largest piece (those blobs: at most 10 % of their photo's car; another car
# of half the size: 25 %), or a piece with at least BESIDE_ROWS of its height within the rows of such a
# piece (a post in front of the car cuts it into pieces side by side; cars in a row share their rows;
# the platform-edge blobs lie below the car, 100 px or more under its lowest row).
CAR_PIECE_FRACTION = 0.02
CAR_PIECE_SHARE = 0.25
BESIDE_ROWS = 0.5
MAX_HOLE_FRACTION = 0.0005

# Adaptive smoothing: sigma grid 0, 0.5, ..., SIGMA_MAX; a point may move by less than MAX_SHIFT px;
# sigma changes by at most SIGMA_STEP between neighbouring contour points.
SIGMA_STEP = 0.5
SIGMA_MAX = 8.0
MAX_SHIFT = 0.5

_SIGMAS = np.arange(0.0, SIGMA_MAX + SIGMA_STEP / 2, SIGMA_STEP)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Gaussian sampled on the integers in [-2 sigma, 2 sigma], normalised to sum 1."""
    if sigma == 0:
        return np.ones(1)
    radius = int(np.floor(2 * sigma + 1e-9))
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-(k**2) / (2 * sigma**2))
    return w / w.sum()


_KERNELS = [_gaussian_kernel(s) for s in _SIGMAS]
_MAX_RADIUS = len(_KERNELS[-1]) // 2


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"post-processing expects a 2-D mask, got shape {mask.shape}")
    # One full-size pass into a new array (a comparison then a cast is two: 2 ms of a 1918x1280 photo).
    if mask.dtype in (np.uint8, np.bool_) and mask.size and mask.flags.c_contiguous:
        return cv2.threshold(mask.view(np.uint8), 0, 1, cv2.THRESH_BINARY)[1]
    return (mask > 0).view(np.uint8)


def largest_cc(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected foreground component."""
    mask = _as_mask(mask)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 2:  # empty, or a single component already
        return mask
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == keep).astype(np.uint8)


def remove_small(mask: np.ndarray, min_fraction: float = MIN_BLOB_FRACTION) -> np.ndarray:
    """Remove 8-connected foreground components smaller than min_fraction of the image; keep the largest."""
    mask = _as_mask(mask)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 2:
        return mask
    area = stats[:, cv2.CC_STAT_AREA]
    keep = area >= min_fraction * mask.size
    keep[0] = False
    keep[1 + int(np.argmax(area[1:]))] = True
    return keep[labels].astype(np.uint8)


def car_pieces(stats: np.ndarray, image_area: int) -> np.ndarray:
    """Which 8-connected pieces (rows of ``cv2.connectedComponentsWithStats``' stats, label 0 the
    background) are plausibly car whatever their distance: the largest, those of car size or a large
    share of the largest, and those beside one of these (most of their rows within its rows)."""
    area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    area[0] = 0
    main = int(np.argmax(area))
    big = (area >= CAR_PIECE_FRACTION * image_area) | (area >= CAR_PIECE_SHARE * area[main])
    big[0], big[main] = False, True
    top = stats[:, cv2.CC_STAT_TOP].astype(np.int64)
    bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
    anchors = np.flatnonzero(big)
    overlap = np.minimum(bottom[:, None], bottom[anchors]) - np.maximum(top[:, None], top[anchors])
    beside = overlap.max(axis=1) >= BESIDE_ROWS * stats[:, cv2.CC_STAT_HEIGHT]
    keep = big | beside
    keep[0] = False
    return keep


def remove_far_blobs(mask: np.ndarray, max_gap: float = FAR_BLOB_GAP) -> np.ndarray:
    """Remove the small 8-connected pieces far from every car: false blobs on the floor or the platform
    edge. Pieces of car size, a large share of the largest, or beside such a piece stay wherever they are
    (``car_pieces``); so does every piece a chain of gaps of at most ``max_gap`` of the image diagonal links
    to one of them (a row of antenna pieces, each near the next, however far its tip is from the body)."""
    mask = _as_mask(mask)
    # The pieces are labelled within the box around the foreground only (the same pieces, in the same
    # raster order, as over the whole photo; the car is a quarter of it): label 0 everywhere else.
    bx, by, bw, bh = cv2.boundingRect(mask)
    if not bw:
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask[by : by + bh, bx : bx + bw], connectivity=8)
    if n <= 2:
        return mask
    stats[:, cv2.CC_STAT_LEFT] += bx
    stats[:, cv2.CC_STAT_TOP] += by
    kept = car_pieces(stats, mask.size)
    others = np.flatnonzero(~kept[1:]) + 1
    if not len(others):
        return mask
    gap = max_gap * float(np.hypot(*mask.shape))
    # Only the box around the other pieces, widened by the gap, can hold a link (a chain's pieces and
    # the car pixels they reach): the distance transform runs there, not over the whole photo.
    pad = int(np.ceil(gap)) + 1
    box = stats[others]
    x0 = max(0, box[:, cv2.CC_STAT_LEFT].min() - pad)
    y0 = max(0, box[:, cv2.CC_STAT_TOP].min() - pad)
    x1 = min(mask.shape[1], (box[:, cv2.CC_STAT_LEFT] + box[:, cv2.CC_STAT_WIDTH]).max() + pad)
    y1 = min(mask.shape[0], (box[:, cv2.CC_STAT_TOP] + box[:, cv2.CC_STAT_HEIGHT]).max() + pad)
    window = np.zeros((y1 - y0, x1 - x0), labels.dtype)  # the photo's labels there (0 outside the box)
    iy0, iy1, ix0, ix1 = max(y0, by), min(y1, by + bh), max(x0, bx), min(x1, bx + bw)
    window[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = labels[iy0 - by : iy1 - by, ix0 - bx : ix1 - bx]
    # Grow every piece by half the gap: pieces closer than the gap touch, and chains of them join.
    reach = cv2.distanceTransform((window == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= gap / 2
    _, linked = cv2.connectedComponents(reach.astype(np.uint8), connectivity=8)
    car = np.zeros(linked.max() + 1, dtype=bool)
    car[np.unique(linked[kept[window]])] = True  # every group that holds pixels of a kept piece
    far = np.zeros(n, dtype=bool)
    far[np.unique(window[~car[linked] & (window > 0)])] = True
    far[kept] = False
    # Erased within each far piece's own box: no full-size pass, and nothing to do when none is far.
    for i in np.flatnonzero(far):
        x, y, w, h = stats[i, :4]
        mask[y : y + h, x : x + w][labels[y - by : y - by + h, x - bx : x - bx + w] == i] = 0
    return mask


def fill_holes(mask: np.ndarray, max_fraction: float = MAX_HOLE_FRACTION) -> np.ndarray:
    """Fill holes smaller than max_fraction of the image.

    A hole is a 4-connected background component not touching the image border (4 for the background
    because the foreground is 8-connected: a diagonal gap in the car outline is not an opening).
    """
    mask = _as_mask(mask)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(1 - mask, connectivity=4)
    if n <= 1:
        return mask
    h, w = mask.shape
    x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    touches = (x == 0) | (y == 0) | (x + stats[:, cv2.CC_STAT_WIDTH] == w) | (y + stats[:, cv2.CC_STAT_HEIGHT] == h)
    fill = ~touches & (stats[:, cv2.CC_STAT_AREA] < max_fraction * mask.size)
    fill[0] = False  # label 0 is the foreground of the inverted mask
    return (mask.astype(bool) | fill[labels]).astype(np.uint8)


def adaptive_smooth(points: np.ndarray, fixed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Smooth a closed curve with a per-point Gaussian (Heitzinger & Kampel); return (smoothed (n, 2), sigma (n,)).

    x and y are convolved separately (as one complex sequence). For each point sigma_i is the largest
    sigma of the grid 0, 0.5, ..., SIGMA_MAX such that smoothing with it and with every smaller sigma
    moves the point by less than MAX_SHIFT px; then sigma is forced to 0 at the `fixed` points (the
    ends of open segments) and limited to change by at most SIGMA_STEP between neighbours (forward and
    backward pass, minimum). Growing sigma only while the rule holds makes the final, possibly lowered,
    sigma still satisfy it. The kernel for point i is sampled on the integers in [-2 sigma_i, 2 sigma_i].

    Without fixed points the curve is cyclic. With fixed points every stretch between two of them is an
    open segment with fixed ends: the neighbour limit gives 2 sigma_i <= the distance to the nearest
    end, so a kernel never reaches past an end, and whatever lies beyond an end cannot change the result.
    Written with NumPy because no library implements this per-point adaptive rule.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    z = points[:, 0] + 1j * points[:, 1]
    if n < 3:
        return points.copy(), np.zeros(n)
    # Smoothed position of every point at every grid sigma, on a cyclically padded copy.
    padded = np.take(z, np.arange(-_MAX_RADIUS, n + _MAX_RADIUS) % n)
    stack = np.empty((len(_KERNELS), n), dtype=np.complex128)
    for j, w in enumerate(_KERNELS):
        r = len(w) // 2
        stack[j] = np.convolve(padded[_MAX_RADIUS - r : _MAX_RADIUS + n + r], w, mode="valid")
    ok = np.abs(stack - z) < MAX_SHIFT  # ok[0] is True: sigma 0 does not move the point
    level = np.cumprod(ok, axis=0).sum(axis=0) - 1  # sigma_i / SIGMA_STEP
    if fixed is not None:
        level[np.asarray(fixed, dtype=bool)] = 0
    # |level_i - level_{i+1}| <= 1 by level_i = min_j level_j + |i - j| (cyclic distance): one forward and
    # one backward running minimum over a copy padded by the largest level (no influence reaches further).
    m = len(_KERNELS) - 1
    ext = np.take(level, np.arange(-m, n + m) % n)
    idx = np.arange(len(ext))
    fwd = np.minimum.accumulate(ext - idx) + idx
    bwd = np.minimum.accumulate((ext + idx)[::-1])[::-1] - idx
    level = np.minimum(fwd, bwd)[m : m + n]
    s = stack[level, np.arange(n)]
    return np.stack([s.real, s.imag], axis=1), level * SIGMA_STEP


def smooth_contours(mask: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Contours of the mask, their adaptive smoothing, and their depth: (original, smoothed, depth).

    Contour points on the image border are fixed: a contour touching the border is smoothed as open
    segments between its border points, which stay where they are.
    """
    mask = _as_mask(mask)
    h, w = mask.shape
    contours, depth = find_contours(mask)
    smoothed = []
    for c in contours:
        on_border = (c[:, 0] == 0) | (c[:, 1] == 0) | (c[:, 0] == w - 1) | (c[:, 1] == h - 1)
        smoothed.append(adaptive_smooth(c, on_border if on_border.any() else None)[0])
    return contours, smoothed, depth


def smooth_contour(mask: np.ndarray) -> np.ndarray:
    """Adaptive contour smoothing (Heitzinger & Kampel), rasterised back into a 0/1 mask.

    No point moves by 0.5 px or more, so no pixel centre can cross the outline: at the mask's own
    resolution the result differs from the input only by the rounding of lines between contour points,
    a few boundary pixels (at most 14 on each of the 960 real 1918x1280 GT masks).
    """
    mask = _as_mask(mask)
    _, smoothed, depth = smooth_contours(mask)
    return rasterize_contours(smoothed, depth, mask.shape)


def _identity(mask: np.ndarray) -> np.ndarray:
    return _as_mask(mask)


POSTPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": _identity,
    "largest_cc": largest_cc,
    "remove_small": remove_small,
    "remove_far_blobs": remove_far_blobs,
    "fill_holes": fill_holes,
    "smooth_contour": smooth_contour,
}


# Steps that also need the blended probabilities and the photo, and their parameters' checks.
PHOTO_STEPS = ("active_contour", "refine_outline")
KNOWN_STEPS = (*POSTPROCESS, *PHOTO_STEPS)


def _photo_step(step: str):
    """(apply, params_problem) of a photo step; the refiner's module (torch) is imported only when used."""
    if step == "refine_outline":
        from . import outline_refiner

        return outline_refiner.refine_outline, outline_refiner.params_problem
    return snakes.refine, snakes.params_problem


def params_problem(step: str, params) -> str | None:
    """What in a photo step's parameters cannot be applied as it is, or None."""
    return _photo_step(step)[1](params)


def chain_problem(steps, params) -> str | None:
    """What in a chain of steps and their parameters (a recipe's or a model folder's ``postprocess`` and
    ``postprocess_params``) cannot be applied as it is, or None: the one check both are read through.
    Every step known; parameters only for photo steps, checked wherever they are given (a parameter
    object for a step this version does not know would be ignored: refused instead)."""
    if not isinstance(steps, list) or any(not isinstance(x, str) or x not in KNOWN_STEPS for x in steps):
        return f"postprocess {steps!r}: unknown step(s); known: {', '.join(KNOWN_STEPS)}"
    if not isinstance(params, dict):
        return f"postprocess_params: an object of parameters per step of {', '.join(PHOTO_STEPS)}"
    unknown = sorted(str(k) for k in params if k not in PHOTO_STEPS)
    if unknown:
        return (
            f"postprocess_params for {unknown}: not a step with parameters (those are {', '.join(PHOTO_STEPS)}); "
            "this version would ignore them"
        )
    for step in PHOTO_STEPS:
        if step in steps and step not in params:
            return f"postprocess has {step!r} but postprocess_params has no parameters for it"
        problem = params_problem(step, params[step]) if step in params else None
        if problem:
            return f"postprocess_params.{step}: {problem}"
    return None


def parse_steps(steps: str | Sequence[str] | None) -> list[str]:
    """Step names from a list or a "a,b" / "a+b" string (config and CLI); checks every name."""
    if steps is None:
        return []
    if isinstance(steps, str):
        steps = steps.replace("+", ",").split(",")
    names = [s.strip() for s in steps if s and s.strip()]
    unknown = [s for s in names if s not in KNOWN_STEPS]
    if unknown:
        raise ValueError(f"unknown post-processing step {unknown[0]!r}; available: {', '.join(KNOWN_STEPS)}")
    return names


def needs_photo(steps: Sequence[str] | None) -> bool:
    """Whether ``apply(mask, steps, ...)`` needs ``blended`` and ``image`` (so callers read the photo only then)."""
    return any(s in PHOTO_STEPS for s in steps or ())


def apply(
    mask: np.ndarray,
    steps: str | Sequence[str] | None,
    blended: np.ndarray | None = None,
    image: np.ndarray | None = None,
    params: dict | None = None,
    openvino: tuple[str, int] | None = None,
) -> np.ndarray:
    """Apply the named post-processing steps in order to a binary mask; returns a new uint8 0/1 mask.

    ``blended`` (the uint8 blend the mask was thresholded from), ``image`` (the RGB photo) and
    ``params`` (``{step: its parameters}``, the recipe's ``postprocess_params``) are what
    PHOTO_STEPS need; a ValueError names the step if they are missing. ``openvino``: (precision,
    threads) for the steps with a network (``refine_outline``) to run it in OpenVINO, as the model is.
    """
    names = parse_steps(steps)
    out = _as_mask(mask)
    for name in names:
        if name in PHOTO_STEPS:
            if blended is None or image is None:
                raise ValueError(f"post-processing step {name!r} needs the blended probabilities and the photo")
            extra = {"openvino": openvino} if openvino and name == "refine_outline" else {}
            with PROFILE.step(f"post-processing: {name}"):
                out = _photo_step(name)[0](out, blended, image, (params or {}).get(name), **extra)
        elif name != "none":
            with PROFILE.step(f"post-processing: {name}"):
                out = POSTPROCESS[name](out)
    return out
