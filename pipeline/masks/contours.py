"""A mask's outlines as sub-pixel polygons and back: what contour post-processing works on.

``find_contours`` gives every outline of a 0/1 mask (holes and islands too) with its depth in the
tree; ``rasterize_contours`` fills (moved) outlines back into a mask. Unmoved outlines come back
pixel-identical (tests/masks/test_postprocess.py checks every real mask), so a step that moves only some
points changes only the pixels near them. Used by ``postprocess.smooth_contour`` and ``snakes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Sub-pixel bits for cv2.fillPoly / cv2.polylines (1/256 px); integer points stay exact.
RASTER_SHIFT = 8


def find_contours(mask: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """All contours of a 0/1 mask as (n, 2) float64 (x, y) pixel centres, and their depth in the tree.

    Depth 0 is an outer contour, 1 a hole in it, 2 a component inside that hole, and so on.
    """
    contours, hierarchy = cv2.findContours(
        (np.asarray(mask) > 0).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE
    )
    if hierarchy is None:
        return [], np.zeros(0, dtype=int)
    parent = hierarchy[0][:, 3]
    depth = np.zeros(len(contours), dtype=int)
    for i in range(len(contours)):
        p = parent[i]
        while p >= 0:
            depth[i] += 1
            p = parent[p]
    return [c[:, 0, :].astype(np.float64) for c in contours], depth


def rasterize_contours(contours: Sequence[np.ndarray], depth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill (x, y) contours (float, sub-pixel) into a 0/1 mask: even depths with 1, odd depths (holes) with 0.

    One polygon per fillPoly call: with several, fillPoly applies the even-odd rule and two smoothed
    outlines that overlap would cancel. Pixels on a contour are foreground (the findContours convention).
    """
    out = np.zeros(shape, dtype=np.uint8)
    depth = np.asarray(depth)
    scale = float(1 << RASTER_SHIFT)
    for d in range(int(depth.max(initial=-1)) + 1):
        polys = [np.round(contours[i] * scale).astype(np.int32) for i in np.flatnonzero(depth == d)]
        for poly in polys:
            cv2.fillPoly(out, [poly], 1 if d % 2 == 0 else 0, lineType=cv2.LINE_8, shift=RASTER_SHIFT)
        cv2.polylines(out, polys, True, 1, lineType=cv2.LINE_8, shift=RASTER_SHIFT)
    return out
