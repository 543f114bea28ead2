"""Review scores: which predicted masks a person should look at first.

Every predicted image gets a score from the model's own output, with no ground truth:

- on the device, from the members' uint8 maps (``image_features``, a few integers per image come
  back, never a map): the predicted car's area, its outline length, the pixels whose blended
  probability is far from 0 and 1 (``uncertain``), the expected number of wrong pixels among them
  if the probabilities were calibrated (``soft_error``, in 1/255 px), and the pixels on which the
  members disagree;
- from the mask written, after post-processing (``final_features``): its area, outline and box, and the
  pixels post-processing removed and added (``post_removed``, ``post_added``);
- when the review list is written, from the other views of the same car (the 12-hex prefix of the
  image name): how far the mask's share of its photo and its box disagree with its mirror view and its
  neighbouring views (``view_dev``), and, only where no view of its car is there to compare with, how
  far its shape lies outside every train car's (``shape_dev``, car_shapes.json).

``score``, the expected number of wrong pixels, adds four pieces, each in pixels: ``uncertain_px``
(soft_error / 255), ``view_px`` (the area a view disagrees with its own car by, past what true masks
ever do), ``shape_px`` (an implausible shape, judged against all cars only without car context) and
``post_px`` (what post-processing changed beyond a blob's worth: a car it may have deleted).
``framing_dev`` says when a whole car is framed unlike the train cars: shown, not counted (an
unusual photo, not a wrong mask). ``why`` puts it in words, largest piece first. The list
``<out>.review.csv`` (worst first) goes with every submission, shard, merge and ``predict`` run;
``review_figures`` measures a score against the truth out-of-fold (``evaluate``, ``report``): the
share of all error pixels that the top 5 % of images hold, what a random 5 % holds, and the Spearman
rank correlation between score and 1 - Dice. ``notes`` says on the console, in a line each, which masks
post-processing changed by more than a blob's worth and which are past the evidence's tolerances.
Text cells that a spreadsheet would run as a formula are written with a leading ``'`` (OWASP's
guidance on CSV injection) and read back without it.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..core.errors import DataError
from ..core.io_utils import append_synced, atomic_path, open_nofollow
from ..masks.postprocess import CAR_PIECE_FRACTION

# Device features, in the order of image_features' columns (all exact integers on any device): the car's
# area and outline, the uncertain pixels and the expected errors among them, the members' disagreement,
# the image's size and the car's bounding box (top, bottom, left, right; -1 for an empty mask).
DEVICE_FEATURES = (
    "area",
    "perimeter",
    "soft_error",
    "uncertain",
    "disagreement",
    "height",
    "width",
    "top",
    "bottom",
    "left",
    "right",
)
# Measured on the mask written, after post-processing (final_features): the pixels it removed from the
# thresholded mask and those it added.
POST_FEATURES = ("post_removed", "post_added")
REVIEW_FEATURES = (*DEVICE_FEATURES, *POST_FEATURES)
# A blob's worth, as a share of the photo: the largest piece remove_far_blobs may take for a false blob
# (postprocess.CAR_PIECE_FRACTION: 2 %, 1.5 times the largest false blob measured, under a quarter of the
# smallest true car). The outline steps change far less: refine_outline at most 0.17 % of a photo (median
# 0.09 %) on the 432 test-split photos (docs/record/post-processing.md, "Car-aware: every car kept"). Post-processing
# that removed or added more changed what may be a car: said on the console, and the pixels past it are
# evidence (``post_px``).
POST_TOLERANCE = CAR_PIECE_FRACTION
# The mask's shape as shares of the image, held against what the train set's cars look like
# (car_shapes.json): a confident mask of something that is not a car has no uncertain pixels, but
# its area or box lies far outside every car's.
SHAPE_FEATURES = ("area", "box_width", "box_height", "box_cx", "box_cy", "fill")
# How far outside the train cars' range (in units of that range) a shape feature may lie before the
# mask counts as implausible; at 1 + SHAPE_TOLERANCE range widths out, all of it is expected wrong.
SHAPE_TOLERANCE = 0.25
# A pixel is uncertain when its blended value is within [UNCERTAIN_LO, UNCERTAIN_HI] (probability 0.25..0.75).
# Not wider: a model trained briefly leaves much of the background at 0.05..0.2, which says little about
# errors (docs/record/review-list.md).
UNCERTAIN_LO, UNCERTAIN_HI = 64, 191
# The review list: the score, why (each piece of evidence and its pixels, largest first), the pieces, then
# the device features.
COLUMNS = (
    "img",
    "score",
    "why",
    "uncertain_px",
    "view_px",
    "shape_px",
    "post_px",
    "view_dev",
    "shape_dev",
    "framing_dev",
    *REVIEW_FEATURES,
)
_CAR_VIEW_RE = re.compile(r"^([0-9a-f]{12})_(\d{2})\.\w+$")
TOP_SHARE = 0.05  # the share of images a reviewer looks at, for review_figures


def image_features(maps: torch.Tensor, blended: torch.Tensor, threshold: int) -> torch.Tensor:
    """(M, b, H, W) uint8 member maps and their (b, H, W) blend -> (b, len(DEVICE_FEATURES)) int64.

    Integer arithmetic throughout, so the numbers are identical on CPU and GPU. ``soft_error`` is the
    probability on the wrong side of the threshold summed over the uncertain pixels (255 - blend where
    the mask says car, blend where it says background), in units of 1/255 pixel: the expected number of
    wrong pixels among them if the probabilities were calibrated. On the CPU the same numbers come from
    OpenCV's whole-image thresholds, counts and sums (``_host_features``): a tenth of the time.
    """
    if blended.device.type == "cpu":
        q, b = maps.numpy(), blended.numpy()
        return torch.tensor([_host_features(q[:, i], b[i], threshold) for i in range(b.shape[0])], dtype=torch.int64)
    return _device_features(maps, blended, threshold)


def _device_features(maps: torch.Tensor, blended: torch.Tensor, threshold: int) -> torch.Tensor:
    """``image_features`` as tensor operations on the maps' device (a GPU: only the numbers come back)."""
    car = blended >= threshold
    area = torch.count_nonzero(car, dim=(-2, -1))  # count_nonzero: 3x faster than a bool sum on CPU
    # Outline: car pixels with a 4- or 8-neighbour outside the car; the image frame is not an outline
    # (the padding is car, so a car pixel on the frame counts only if a real neighbour is background).
    # Nine shifted ORs of bools, not a float max-pool: the same pixels, a third of the CPU time.
    h, w = car.shape[-2:]
    outside = F.pad((~car).view(torch.uint8), (1, 1, 1, 1)).bool()
    near = torch.zeros_like(car)
    for dy in range(3):
        for dx in range(3):
            near |= outside[..., dy : dy + h, dx : dx + w]
    perimeter = torch.count_nonzero(car & near, dim=(-2, -1))
    unsure = (blended >= UNCERTAIN_LO) & (blended <= UNCERTAIN_HI)
    b = blended.to(torch.int32)  # sums reach at most 255 x pixels; torch sums int32 into int64
    soft = torch.where(car, 255 - b, b).mul_(unsure).sum((-2, -1))
    uncertain = torch.count_nonzero(unsure, dim=(-2, -1))
    votes = (maps >= threshold).sum(0, dtype=torch.uint8)
    disagreement = torch.count_nonzero((votes > 0) & (votes < maps.shape[0]), dim=(-2, -1))
    # Bounding box: the first and last row and column holding a car pixel (-1 when there is none).
    rows, cols = car.any(-1).to(torch.uint8), car.any(-2).to(torch.uint8)
    empty = area == 0
    top, left = rows.argmax(-1), cols.argmax(-1)
    bottom, right = h - 1 - rows.flip(-1).argmax(-1), w - 1 - cols.flip(-1).argmax(-1)
    box = [torch.where(empty, -1, v) for v in (top, bottom, left, right)]
    size = [torch.full_like(area, h), torch.full_like(area, w)]
    return torch.stack([area, perimeter, soft, uncertain, disagreement, *size, *box], dim=1).to(torch.int64)


def _host_features(maps: np.ndarray, blended: np.ndarray, threshold: int) -> list[int]:
    """``image_features`` of one image on the host: (M, H, W) uint8 maps and their (H, W) blend -> its row.

    In whole-image OpenCV passes (thresholds, sums, counts), each far cheaper than a 256-bin histogram."""
    h, w = blended.shape
    car = cv2.threshold(blended, threshold - 1, 1, cv2.THRESH_BINARY)[1]  # blended >= threshold, as 0/1
    area, perimeter, box = _outline_and_box(car)
    # The uncertain values (64..191, 0 elsewhere), and those of them at or above the threshold: car pixels,
    # within the car's box. soft = their sum below the threshold + the sum of 255 - v above it (exact: integer
    # sums under 2^53).
    unsure = cv2.threshold(blended, UNCERTAIN_HI, 0, cv2.THRESH_TOZERO_INV)[1]
    unsure = cv2.threshold(unsure, UNCERTAIN_LO - 1, 0, cv2.THRESH_TOZERO, dst=unsure)[1]
    uncertain, s_all, n_high, s_high = cv2.countNonZero(unsure), int(cv2.sumElems(unsure)[0]), 0, 0
    if area:
        top, bottom, left, right = box
        high = unsure[top : bottom + 1, left : right + 1]
        high = cv2.threshold(high, max(UNCERTAIN_LO, threshold) - 1, 0, cv2.THRESH_TOZERO)[1]
        n_high, s_high = cv2.countNonZero(high), int(cv2.sumElems(high)[0])
    soft = s_all - 2 * s_high + 255 * n_high
    disagreement = 0
    m = maps.shape[0]
    if 1 < m < 256:  # votes fit a uint8 (saturating cv2.add equals NumPy's wrapping sum below 256)
        votes = np.zeros((h, w), np.uint8)
        for q in maps:
            cv2.add(votes, cv2.threshold(q, threshold - 1, 1, cv2.THRESH_BINARY)[1], dst=votes)
        # Members disagree where 0 < votes < M.
        disagreement = cv2.countNonZero(votes) - cv2.countNonZero(cv2.threshold(votes, m - 1, 1, cv2.THRESH_BINARY)[1])
    elif m > 1:
        votes = (maps >= threshold).sum(0, dtype=np.uint8)
        disagreement = int(np.count_nonzero((votes > 0) & (votes < m)))
    return [area, perimeter, soft, uncertain, disagreement, h, w, *box]


def _outline_and_box(car: np.ndarray) -> tuple[int, int, list[int]]:
    """(area, outline, box (top, bottom, left, right); -1 each when empty) of a 0/1 uint8 mask, as
    ``image_features`` counts them: an outline pixel is a car pixel with a background 8-neighbour, the
    image frame not an outline (outside the frame counts as car)."""
    area = cv2.countNonZero(car)
    if not area:
        return 0, 0, [-1, -1, -1, -1]
    x, y, bw, bh = cv2.boundingRect(car)  # of the non-zero pixels
    # The erosion runs on the box widened by a pixel: every neighbour of a car pixel is in it, and its
    # constant border stands for the frame only where the box meets the frame (elsewhere the widened
    # rows and columns are background, and eroded to 0 whatever the border).
    h, w = car.shape
    y0, x0 = max(0, y - 1), max(0, x - 1)
    roi = car[y0 : min(h, y + bh + 1), x0 : min(w, x + bw + 1)]
    inner = cv2.erode(roi, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return area, area - cv2.countNonZero(inner), [y, y + bh - 1, x, x + bw - 1]


def features_of(
    maps: np.ndarray, weights: list[int], threshold: int, final: np.ndarray | None = None
) -> dict[str, int]:
    """``image_features`` of one image's (M, H, W) uint8 maps on the host (out-of-fold scoring); with
    ``final``, the mask written after post-processing, REVIEW_FEATURES (``final_features``)."""
    from .engine import blend

    q = torch.from_numpy(np.ascontiguousarray(maps))[:, None]
    blended = blend(q, weights)
    row = image_features(q, blended, threshold)[0].tolist()
    if final is None:
        return dict(zip(DEVICE_FEATURES, row))
    raw = (blended[0] >= threshold).numpy()
    return dict(zip(REVIEW_FEATURES, final_features(row, raw, final).tolist()))


def final_features(features, raw: np.ndarray, final: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """REVIEW_FEATURES of the mask written: ``features`` (DEVICE_FEATURES, computed on the thresholded mask
    ``raw``) with the area, outline and box taken from ``final`` (after post-processing), and the pixels
    post-processing removed and added. The probabilities' evidence (soft_error, uncertain, disagreement)
    stays as the device measured it. ``out``: a row to write the result into (the submission's sidecar
    row, filled where the row is computed)."""
    row = np.zeros(len(REVIEW_FEATURES), np.int64) if out is None else out
    row[: len(DEVICE_FEATURES)] = np.asarray(features, np.int64)[: len(DEVICE_FEATURES)]
    raw, final = _zero_one(raw), _zero_one(final)
    if raw.shape != final.shape:
        raise ValueError(f"the mask written {final.shape} and the thresholded one {raw.shape} differ in size")
    # On 0/1 bytes, with no full-size temporary: the pixels that differ (removed + added) are the L1 distance,
    # and removed - added is the difference of the areas.
    changed, more = int(cv2.norm(raw, final, cv2.NORM_L1)), cv2.countNonZero(raw) - cv2.countNonZero(final)
    removed, added = (changed + more) // 2, (changed - more) // 2
    row[len(DEVICE_FEATURES) :] = removed, added
    if changed:
        col = {f: i for i, f in enumerate(REVIEW_FEATURES)}
        area, perimeter, box = _outline_and_box(final)
        row[col["area"]], row[col["perimeter"]] = area, perimeter
        for f, v in zip(("top", "bottom", "left", "right"), box):
            row[col[f]] = v
    return row


def _zero_one(mask) -> np.ndarray:
    """A 2-D mask as uint8 0/1 (non-zero is car), without a copy where it is bool or 0/1 bytes already."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return mask.view(np.uint8)
    if mask.dtype == np.uint8 and mask.size and mask.max() <= 1:
        return mask  # as post-processing writes it: read, never written
    return (mask != 0).view(np.uint8)


def car_view(img: str) -> tuple[str, int] | None:
    """(car id, view) of a Carvana name ``<12 hex>_<NN>.jpg``; None for any other photo."""
    m = _CAR_VIEW_RE.match(Path(img).name)
    return (m[1], int(m[2])) if m else None


# -- the score ----------------------------------------------------------------------------------------
# Like with like: a view's mask against its own car's other views. Views 01..16 go round the car on a
# turntable; view v and view 18 - v (mod 16) are mirror images (the same area and box rows), and
# neighbouring views differ little. So a car framed wider or lower than the train cars moves all its
# views alike, and only a view that disagrees with its own car is evidence about its mask. Each
# tolerance lies just past the largest disagreement among the 3,888 true masks of the 243 cars outside
# the test split (docs/record/review-list.md, "Like with like"; mirror: area 0.121, top 97 px, bottom 47 px
# of 1280; neighbours: area 0.315, bottom 92 px): |log area ratio|, and the box's top and bottom rows as
# shares of the image height.
VIEW_TOLERANCE = {
    "mirror": {"area": 0.13, "top": 0.08, "bottom": 0.04},
    "neighbours": {"area": 0.33, "bottom": 0.075},
}


def _view_refs(car: str, v: int) -> dict[str, list[tuple[str, int]]]:
    mirror = (18 - v - 1) % 16 + 1
    refs = {"neighbours": [(car, (v - 2) % 16 + 1), (car, v % 16 + 1)]}
    if mirror != v:  # views 01 and 09 are their own mirror images
        refs["mirror"] = [(car, mirror)]
    return refs


def _against(feats: dict, j: int, ref: dict, tolerance: dict, h: float, pixels: float) -> tuple[float, float, str]:
    """(dev, px, what) of row ``j`` against one reference's median features (areas as shares of the photo;
    ``pixels``: the photo's, to put the share at stake in pixels)."""
    area, dev, px, what = feats["area"][j], 0.0, 0.0, ""
    for f, tol in tolerance.items():
        if f == "area":
            d = abs(np.log(area / ref["area"])) if area > 0 else np.inf
        elif area > 0:
            d = abs(feats[f][j] - ref[f])
        else:
            continue
        if d / tol > dev:
            dev = d / tol
            px = min(max(dev - 1, 0.0), 1.0) * abs(area - ref["area"]) * pixels
            what = (
                f"area {area / ref['area'] - 1:+.0%}"
                if f == "area"
                else f"box {f} {(feats[f][j] - ref[f]) * h:+.0f} px"
            )
    return dev, px, what


def view_evidence(t: pd.DataFrame) -> pd.DataFrame:
    """Per row of a table with ``img`` and DEVICE_FEATURES: how its mask disagrees with its own car's views.

    Against each reference here (its mirror view; its two neighbours' median), the worst disagreement in
    units of VIEW_TOLERANCE (1 = as far as any true mask's). A wrong view disagrees with every reference,
    while its mirror partner still agrees with its own neighbours: so a view's ``view_dev`` is the smaller
    of the two, and ``view_px`` the pixels that reference puts at stake, |area - its area|, in proportion
    to how far past the tolerance (all of it at twice the tolerance). Areas are compared as shares of
    their photos, so a view photographed at another size is judged like the others. ``view_why`` names it. ``context``:
    the row's car has a usable reference here (a Carvana name and a non-empty mask of its mirror or a
    neighbour); only those rows are judged against their car instead of all cars.
    """
    keys = [car_view(i) for i in t["img"]]
    h = t["height"].to_numpy(np.float64)
    pixels = h * t["width"].to_numpy(np.float64)
    feats = {
        "area": t["area"].to_numpy(np.float64) / pixels,
        "top": t["top"].to_numpy(np.float64) / h,
        "bottom": t["bottom"].to_numpy(np.float64) / h,
    }
    row_of = {k: j for j, k in enumerate(keys) if k is not None}
    n = len(t)
    dev, px, context, why = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool), [""] * n
    for j, k in enumerate(keys):
        if k is None:
            continue
        found = []
        for ref_name, ref_keys in _view_refs(*k).items():
            rows = [row_of[r] for r in ref_keys if r in row_of and feats["area"][row_of[r]] > 0]
            if rows:
                ref = {f: float(np.median(v[rows])) for f, v in feats.items()}
                found.append((*_against(feats, j, ref, VIEW_TOLERANCE[ref_name], h[j], pixels[j]), ref_name))
        if not found:
            continue
        context[j] = True
        dev[j], px[j], _, _ = min(found, key=lambda f: f[0])
        if dev[j] > 1:
            names = {"mirror": "mirror view", "neighbours": "neighbouring views"}
            why[j] = " and ".join(f"{what} against its {names[r]}" for _, _, what, r in found)
    return pd.DataFrame({"view_dev": dev, "view_px": px, "context": context, "view_why": why}, index=t.index)


@functools.cache
def car_shapes() -> dict:
    """The train cars' shape ranges per view (``car_shapes.json``, made by docs/scripts/car_shapes.py)."""
    return json.loads((Path(__file__).with_name("car_shapes.json")).read_text())["ranges"]


def shape_features(t: pd.DataFrame) -> pd.DataFrame:
    """SHAPE_FEATURES of each row of a table with ``area, height, width, top, bottom, left, right`` (NaN
    where the mask is empty)."""
    h, w = t["height"].to_numpy(np.float64), t["width"].to_numpy(np.float64)
    area = t["area"].to_numpy(np.float64)
    bh = t["bottom"].to_numpy(np.float64) - t["top"].to_numpy(np.float64) + 1
    bw = t["right"].to_numpy(np.float64) - t["left"].to_numpy(np.float64) + 1
    with np.errstate(divide="ignore", invalid="ignore"):
        out = pd.DataFrame(
            {
                "area": area / (h * w),
                "box_width": bw / w,
                "box_height": bh / h,
                "box_cx": (t["left"].to_numpy(np.float64) + bw / 2) / w,
                "box_cy": (t["top"].to_numpy(np.float64) + bh / 2) / h,
                "fill": area / (bw * bh),
            },
            index=t.index,
        )
    out[area == 0] = np.nan
    out.loc[area == 0, "area"] = 0.0
    return out


def shape_dev(t: pd.DataFrame) -> np.ndarray:
    """Per row: how far the mask's shape lies outside the train cars' range of its view (all views for
    another name), in units of that range, over the worst of SHAPE_FEATURES; 0 inside every range, 1
    for an empty mask (a car photo where no car was found)."""
    ranges = car_shapes()
    feats = shape_features(t)
    keys = [car_view(i) for i in t["img"]]
    out = np.zeros(len(t))
    for j, (k, row) in enumerate(zip(keys, feats.itertuples(index=False))):
        r = ranges[str(k[1])] if k is not None and str(k[1]) in ranges else ranges["all"]
        if row.area == 0:
            out[j] = 1.0
            continue
        worst = 0.0
        for name, value in zip(SHAPE_FEATURES, row):
            lo, hi = r[name]
            span = max(hi - lo, 1e-6)
            worst = max(worst, (value - hi) / span, (lo - value) / span)
        out[j] = worst
    return out


def shape_px(features: pd.DataFrame) -> np.ndarray:
    """The pixels at stake when a mask's shape is implausible for a car (``shape_dev`` past SHAPE_TOLERANCE):
    the whole mask (or, on a Carvana photo, at least a typical car's area: a car is there), in proportion to
    how implausible. Confident mistakes have no uncertain pixels; this catches them where no view of the
    same car is here to compare with."""
    weight = np.clip((features["shape_dev"].to_numpy(np.float64) - SHAPE_TOLERANCE) / (1 - SHAPE_TOLERANCE), 0, 1)
    area = features["area"].to_numpy(np.float64)
    # A Carvana photo (its name says car and view) certainly shows a car: a mask too small for one misses
    # about a typical car's area. Any other photo may show none: only the mask's own pixels are at stake.
    pixels = features["height"].to_numpy(np.float64) * features["width"].to_numpy(np.float64)
    lo, hi = car_shapes()["all"]["area"]
    carvana = np.array([car_view(i) is not None for i in features["img"]], dtype=bool)
    at_stake = np.where(carvana, np.maximum(area, pixels * (lo + hi) / 2), area)
    return weight * at_stake


def framing_dev(t: pd.DataFrame, context: np.ndarray) -> np.ndarray:
    """Per row: the median ``shape_dev`` of its car's views here (rows with car context; 0 otherwise). A car
    framed unlike the train cars (larger, lower, the platform edge in view) moves all 16 views alike: that
    is evidence about the photos, shown to the reviewer, not about the masks."""
    cars = pd.Series([k[0] if k is not None and c else None for k, c in zip(map(car_view, t["img"]), context)])
    dev = pd.Series(t["shape_dev"].to_numpy(np.float64))
    med = dev.groupby(cars).transform("median")
    return med.fillna(0.0).to_numpy()


def _why(row) -> str:
    parts = []
    if row.uncertain_px >= 1:
        parts.append((row.uncertain_px, f"{row.uncertain_px:,.0f} px of uncertain probabilities"))
    if row.view_px >= 1:
        parts.append((row.view_px, f"{row.view_px:,.0f} px: {row.view_why}"))
    if row.shape_px >= 1:
        parts.append(
            (row.shape_px, f"{row.shape_px:,.0f} px: a shape unlike any train car's (shape_dev {row.shape_dev:.2f})")
        )
    if row.post_px >= 1:
        parts.append((row.post_px, f"{row.post_px:,.0f} px: {_post_text(row)}"))
    text = "; ".join(p for _, p in sorted(parts, key=lambda p: -p[0]))
    if row.framing_dev > SHAPE_TOLERANCE:
        text += ("; " if text else "") + (
            f"its car is framed unlike the train cars (framing_dev {row.framing_dev:.2f}; "
            "not counted: an unusual photo)"
        )
    return text


def _post_text(row) -> str:
    pixels = row.height * row.width
    return (
        f"post-processing removed {row.post_removed:,} px and added {row.post_added:,} "
        f"({(row.post_removed + row.post_added) / pixels:.1%} of the photo; a blob's worth is {POST_TOLERANCE:.0%})"
    )


def post_px(t: pd.DataFrame) -> np.ndarray:
    """The pixels post-processing changed (removed and added) beyond a blob's worth (POST_TOLERANCE of the
    photo): what it may have got wrong past the false blobs it exists for, all of it at stake."""
    changed = t["post_removed"].to_numpy(np.float64) + t["post_added"].to_numpy(np.float64)
    allowed = POST_TOLERANCE * t["height"].to_numpy(np.float64) * t["width"].to_numpy(np.float64)
    return np.maximum(changed - allowed, 0.0)


def score(features: pd.DataFrame) -> np.ndarray:
    """The review score of each row of a review table: the expected number of wrong pixels, the sum of
    ``uncertain_px`` (the probability on the wrong side summed over the uncertain pixels), ``view_px``
    (disagreement with the same car's other views), ``shape_px`` (an implausible shape, where no view
    of the same car is here) and ``post_px`` (what post-processing changed beyond a blob's worth)."""
    return features[["uncertain_px", "view_px", "shape_px", "post_px"]].to_numpy(np.float64).sum(1)


def scores_of(images: list[str], features: list[dict]) -> np.ndarray:
    """Review scores of ``images`` (in that order) from their ``image_features`` dicts; the car
    evidence is computed over these images."""
    t = review_table(pd.DataFrame([{"img": i, **f} for i, f in zip(images, features)]))
    return t.set_index("img").loc[list(images), "score"].to_numpy()


def review_table(features: pd.DataFrame) -> pd.DataFrame:
    """``img`` + REVIEW_FEATURES rows (any order; without POST_FEATURES: no post-processing) -> the review
    list: COLUMNS, worst (highest score) first."""
    t = features.reindex(columns=["img", *REVIEW_FEATURES])
    t[list(POST_FEATURES)] = t[list(POST_FEATURES)].fillna(0).astype(np.int64)
    t["uncertain_px"] = t["soft_error"].to_numpy(np.float64) / 255
    views = view_evidence(t)
    t["view_dev"], t["view_px"], view_why = views["view_dev"], views["view_px"], views["view_why"]
    t["shape_dev"] = shape_dev(t)
    # Judged against all train cars only where no view of its own car is here to compare with.
    t["shape_px"] = np.where(views["context"].to_numpy(), 0.0, shape_px(t))
    t["framing_dev"] = framing_dev(t, views["context"].to_numpy())
    t["post_px"] = post_px(t)
    t["score"] = score(t)
    t["view_why"] = view_why
    t["why"] = [_why(r) for r in t.itertuples(index=False)]
    return t.sort_values(["score", "img"], ascending=[False, True], kind="stable")[list(COLUMNS)].reset_index(drop=True)


def review_path(out: str | Path) -> Path:
    """Where the review list of an output goes: ``<out>.review.csv``."""
    out = Path(out)
    return out.with_name(out.name + ".review.csv")


# A text cell starting with one of these is run as a formula by spreadsheets (=, +, -, @; tab and carriage
# return as well): OWASP's CSV-injection guidance is to write such a cell with a leading single quote,
# which spreadsheets show as text. A cell that starts with a quote gets one more, so reading back is exact.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_safe(text: str) -> str:
    """``text`` as a CSV cell that no spreadsheet runs as a formula (``'=1+1`` for ``=1+1``)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def from_spreadsheet_safe(text: str) -> str:
    """The text ``spreadsheet_safe`` was given."""
    return text[1:] if text.startswith("'") else text


def write_review(path: str | Path, table: pd.DataFrame) -> Path:
    safe = table.copy()
    for col in ("img", "why"):  # the text cells: a photo's name is the user's, and may start with =
        safe[col] = [spreadsheet_safe(str(v)) for v in safe[col]]
    # Lines end with CRLF (RFC 4180), so that a cell holding a carriage return is quoted (the csv module
    # quotes a cell holding any character of the line end) and no reader takes it for one. A photo name that
    # is not UTF-8 (predict) is listed with \xNN escapes.
    with atomic_path(path) as tmp:
        safe.to_csv(tmp, index=False, float_format="%.6g", errors="backslashreplace", lineterminator="\r\n")
    return Path(path)


def read_review(path: str | Path) -> pd.DataFrame:
    """A review list as ``write_review`` wrote it; DataError naming the file otherwise."""
    try:
        t = pd.read_csv(path, dtype={"img": str, "why": str}, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the review list ({e})") from None
    if tuple(t.columns) != COLUMNS:
        raise DataError(
            f"{path}: columns {list(t.columns)}, expected {list(COLUMNS)} (written by another version? "
            "re-run the command that wrote it)"
        )
    for col in ("img", "why"):
        t[col] = [from_spreadsheet_safe(v) for v in t[col]]
    return t


def _past(row) -> str:
    """The largest piece of a row's evidence that is past its tolerance, in words."""
    pieces = [
        (row.post_px, _post_text(row)),
        (row.view_px, f"unlike its car's other views, view_dev {row.view_dev:.2f}"),
        (row.shape_px, f"a shape unlike any train car's, shape_dev {row.shape_dev:.2f}"),
    ]
    px, text = max(pieces, key=lambda p: p[0])
    return text if px > 0 else f"its car framed unlike the train cars, framing_dev {row.framing_dev:.2f}"


def notes(table: pd.DataFrame, where: str | Path) -> list[str]:
    """What the console says about a review list ``table`` written to ``where``, one line each (none when
    nothing is past its tolerance): the masks from which post-processing removed more than a blob's worth
    (it may have deleted a car), and the photos whose evidence lies past its tolerance (a mask unlike its
    car's other views or any train car's, post-processing beyond a blob, a car framed unlike the train
    cars): outside what the model was measured on, as the model card's limits say."""
    lines = []
    pixels = table["height"].to_numpy(np.float64) * table["width"].to_numpy(np.float64)
    cut = table["post_removed"].to_numpy(np.float64) > POST_TOLERANCE * pixels
    removed = table[cut]
    if len(removed):
        shown = ", ".join(
            f"{r.img} {r.post_removed:,} px ({r.post_removed / (r.height * r.width):.0%})"
            for r in removed.head(5).itertuples(index=False)
        )
        more = f" and {len(removed) - 5} more" if len(removed) > 5 else ""
        lines.append(
            f"note: post-processing removed more than a blob's worth ({POST_TOLERANCE:.0%} of the photo) from "
            f"{len(removed)} mask(s): {shown}{more}; it may have deleted a car: look at them ({where})"
        )
    past = table[  # (post-processing that cut a mask is said above: not again, unless more is past)
        (table[["view_px", "shape_px"]].to_numpy(np.float64).sum(1) > 0)
        | ((table["post_px"].to_numpy(np.float64) > 0) & ~cut)
        | (table["framing_dev"].to_numpy(np.float64) > SHAPE_TOLERANCE)
    ]
    if len(past):
        shown = ", ".join(f"{r.img} ({_past(r)})" for r in past.head(3).itertuples(index=False))
        more = f" and {len(past) - 3} more" if len(past) > 3 else ""
        lines.append(
            f"note: {len(past)} of {len(table)} mask(s) past the review list's tolerances: {shown}{more}. Such "
            f"photos are outside what the model was measured on (other cars, backgrounds or framing): look at "
            f"them first ({where})"
        )
    return lines


class ReviewSidecar:
    """``<out>.review.part``: the device features of the rows already on disk, for a resumable output.

    Rows arrive with their masks (``add``) and are appended, fsync'ed, one chunk at a time when the
    submission's chunk of the same rows is on disk (``flush``, from ``RowWriter.on_chunk``); the
    progress file records the sidecar's size next to the submission's, and a resume truncates both
    to what the progress file says. So after kill -9 the review data of the rows written survive
    exactly, and nothing of a row that was not written does. ``finish`` writes the review list.
    """

    HEADER = ",".join(("img", *REVIEW_FEATURES)) + "\n"

    def __init__(self, out: Path):
        self.path = Path(out).with_name(Path(out).name + ".review.part")
        self.pending: list[tuple[str, np.ndarray]] = []
        self.table: pd.DataFrame | None = None  # the review list, once written

    def start(self) -> int:
        with atomic_path(self.path) as tmp:  # a new file, never through a link at the sidecar's name
            tmp.write_text(self.HEADER)
        return self.path.stat().st_size

    def resume(self, size: int) -> None:
        with open_nofollow(self.path, "r+b") as f:
            f.truncate(size)

    def add(self, names: list[str], features) -> np.ndarray:
        """Queue the rows of ``names`` with their device features (or their REVIEW_FEATURES rows, completed on
        the photos' threads); returns their REVIEW_FEATURES rows, which ``final_features`` fills in from each
        mask written before the rows are flushed."""
        rows = np.zeros((len(names), len(REVIEW_FEATURES)), np.int64)
        given = np.asarray(features, np.int64).reshape(len(names), -1)[:, : len(REVIEW_FEATURES)]
        rows[:, : given.shape[1]] = given  # device features, or whole rows already completed
        self.pending.extend(zip(names, rows))
        return rows

    def flush(self, rows: int) -> int:
        """Append the first ``rows`` pending images (those the chunk just written holds); the new size."""
        done, self.pending = self.pending[:rows], self.pending[rows:]
        append_synced(self.path, "".join(name + "," + ",".join(str(int(v)) for v in f) + "\n" for name, f in done))
        return self.path.stat().st_size

    def finish(self, names: list[str], out: Path) -> Path:
        """Write ``review_path(out)`` from the sidecar, which must hold exactly ``names``, in order."""
        t = pd.read_csv(self.path, dtype={"img": str})
        if t["img"].tolist() != list(names):
            raise DataError(
                f"{self.path}: review data for {len(t)} rows, the output has {len(names)}; "
                "remove it and the output's .part and .progress.json files to start over"
            )
        self.table = review_table(t)
        return write_review(review_path(out), self.table)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def merge_reviews(parts: list[Path], names: list[str], out: Path) -> Path:
    """One review list for ``names`` from the review lists of its shards (car features over all of them)."""
    t = pd.concat([read_review(p) for p in parts], ignore_index=True)
    if sorted(t["img"]) != sorted(names):
        raise DataError(f"{parts[0].parent}: the shards' review lists do not hold every image of the sample once")
    return write_review(review_path(out), review_table(t))


# -- how good a score is, out-of-fold ---------------------------------------------------------------
def review_figures(table: pd.DataFrame, top: float = TOP_SHARE, draws: int = 10_000, seed: int = 0) -> dict:
    """What reviewing the ``top`` share of images by ``review_score`` catches, from a per-image table with
    ``img, review_score, fp, fn, dice`` (evaluate's): the share of all error pixels (false positives plus
    false negatives) those images hold, the same for a random choice of as many images (expected value
    and 95th percentile over ``draws`` seeded draws) and for the best possible choice, and the Spearman
    rank correlation between the score and 1 - Dice."""
    from scipy.stats import spearmanr

    n = len(table)
    k = max(1, int(round(top * n)))
    errors = table["fp"].to_numpy(np.float64) + table["fn"].to_numpy(np.float64)
    total = errors.sum()
    ranked = np.lexsort((table["img"].to_numpy(str), -table["review_score"].to_numpy(np.float64)))
    # Random picks in blocks of draws (the same stream as one (draws, n) array): 5,088 train images
    # would otherwise take 400 MB at once.
    rng, random_shares = np.random.default_rng(seed), []
    for start in range(0, draws, 500):
        picks = np.argpartition(rng.random((min(500, draws - start), n)), k - 1, axis=1)[:, :k]
        random_shares.append(errors[picks].sum(1) / max(total, 1))
    random_shares = np.concatenate(random_shares)
    score_, loss = table["review_score"].to_numpy(np.float64), 1 - table["dice"].to_numpy(np.float64)
    # Undefined (NaN) when either is constant, e.g. a perfect prediction everywhere.
    rho = spearmanr(score_, loss).statistic if np.ptp(score_) > 0 and np.ptp(loss) > 0 else float("nan")
    return {
        "n_images": n,
        "top_images": k,
        "error_pixels": int(total),
        "error_share_top": float(errors[ranked[:k]].sum() / max(total, 1)),
        "error_share_random": k / n,
        "error_share_random_p95": float(np.percentile(random_shares, 95)),
        "error_share_best": float(np.sort(errors)[::-1][:k].sum() / max(total, 1)),
        "spearman": float(rho),
    }


def format_figures(name: str, fig: dict) -> str:
    """One line for ``evaluate``'s output."""
    return (
        f"{name}: review score: the top {fig['top_images']} of {fig['n_images']} images "
        f"({fig['top_images'] / fig['n_images']:.0%}) hold {fig['error_share_top']:.1%} of the error pixels "
        f"(random: {fig['error_share_random']:.1%}, 95th percentile {fig['error_share_random_p95']:.1%}; "
        f"best possible {fig['error_share_best']:.1%}); Spearman with 1 - Dice {fig['spearman']:.3f}"
    )
