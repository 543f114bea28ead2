"""Dice, the competition metric: mean over images of 2|A∩B| / (|A|+|B|), 1 when both are empty."""

from __future__ import annotations

import numpy as np
import torch


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
