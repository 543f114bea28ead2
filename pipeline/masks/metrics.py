"""Segmentation metrics, per image, at full resolution.

Dice is the competition metric: mean over images of 2|A∩B| / (|A|+|B|), 1 when both are empty.
Every metric here is computed per image from its confusion counts and then averaged over images
(never one Dice over a whole batch of pixels, which would weight big cars more).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

# The keys of `summarize`, in order: what `python -m pipeline evaluate --json` writes.
SUMMARY_KEYS = (
    "n_images",
    "mean_dice",
    "mean_iou",
    "pixel_accuracy",
    "precision",
    "recall",
    "dice_p5",
    "dice_p50",
    "dice_p95",
    "worst",
)
PER_IMAGE_COLUMNS = ("dice", "iou", "pixel_accuracy", "precision", "recall", "tp", "fp", "fn", "tn")


def dice_batch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image Dice of binary tensors (B, ...) -> (B,) float."""
    p = pred.flatten(1).bool()
    t = target.flatten(1).bool()
    inter = (p & t).sum(1).double()
    total = p.sum(1).double() + t.sum(1).double()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    p = np.asarray(pred).astype(bool, copy=False)
    t = np.asarray(target).astype(bool, copy=False)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def dice_from_counts(tp, fp, fn):
    """Dice from counts (arrays broadcast); 1 where prediction and truth are both empty."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)


def confusion(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) pixel counts of a binary prediction against a binary target (nonzero = car)."""
    p = np.asarray(pred).astype(bool, copy=False)
    t = np.asarray(target).astype(bool, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ in shape")
    n_p, n_t = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    tp = int(np.count_nonzero(p & t))
    fp, fn = n_p - tp, n_t - tp
    return tp, fp, fn, p.size - tp - fp - fn


def image_metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Dice, IoU, pixel accuracy, precision and recall of one image from its counts.

    Conventions for empty sets: Dice and IoU are 1 when prediction and truth are both empty;
    precision is 1 when nothing is predicted and nothing is there (0 when a car is missed
    entirely), recall is 1 when the truth is empty.
    """
    both_empty = tp + fp + fn == 0
    return {
        "dice": 1.0 if both_empty else 2 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if both_empty else tp / (tp + fp + fn),
        "pixel_accuracy": (tp + tn) / max(1, tp + fp + fn + tn),
        "precision": tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0),
        "recall": tp / (tp + fn) if tp + fn else 1.0,
    }


def score_image(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """All per-image metrics plus the counts, as one row of a per-image table."""
    tp, fp, fn, tn = confusion(pred, target)
    return {**image_metrics(tp, fp, fn, tn), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def summarize(per_image: pd.DataFrame, n_worst: int = 10) -> dict:
    """The evaluation summary (exactly SUMMARY_KEYS) of a per-image table with columns ``img`` and
    PER_IMAGE_COLUMNS: metrics averaged over images, Dice percentiles (NumPy's linear default)
    and the ``n_worst`` lowest-Dice images."""
    if len(per_image) == 0:
        raise ValueError("no image to evaluate")
    d = per_image["dice"].to_numpy(dtype=np.float64)
    worst = per_image.sort_values(["dice", "img"]).head(n_worst)
    out = {
        "n_images": len(per_image),
        "mean_dice": float(d.mean()),
        "mean_iou": float(per_image["iou"].mean()),
        "pixel_accuracy": float(per_image["pixel_accuracy"].mean()),
        "precision": float(per_image["precision"].mean()),
        "recall": float(per_image["recall"].mean()),
        "dice_p5": float(np.percentile(d, 5)),
        "dice_p50": float(np.percentile(d, 50)),
        "dice_p95": float(np.percentile(d, 95)),
        "worst": [{"img": str(r.img), "dice": float(r.dice)} for r in worst.itertuples()],
    }
    assert tuple(out) == SUMMARY_KEYS
    return out
