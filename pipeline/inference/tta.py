"""Test-time augmentations by name (``predict.tta``): each is a transform of the input batch
and the inverse applied to the logits, so predictions are averaged in the original frame."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

Pair = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The batch at ``factor`` times its size (bilinear; the model pads to a multiple of 32 itself)."""
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(round(h * factor), round(w * factor)), mode="bilinear", align_corners=False)


def _scaled(factor: float) -> Pair:
    # The inverse maps the logits back by 1/factor: exact sizes for the factors below on sizes that are
    # multiples of 4 (320x480 -> 400x600 -> 320x480).
    return partial(_rescale, factor=factor), partial(_rescale, factor=1 / factor)


# The untransformed image is always predicted; names listed in the config add views to it.
# Multi-scale views (scale<f>) see the photo at another size: a finer look at edges (1.25) or more
# context (0.75), at f^2 the cost of a view.
TTAS: dict[str, Pair] = {
    "hflip": (_hflip, _hflip),
    "scale0.75": _scaled(0.75),
    "scale1.25": _scaled(1.25),
}


def resolve(names: list[str]) -> list[Pair]:
    unknown = [n for n in names if n not in TTAS and n != "none"]
    if unknown:
        raise ValueError(f"unknown TTA {unknown}; available: {sorted(TTAS)} (or [] / none)")
    return [(_identity, _identity)] + [TTAS[n] for n in names if n != "none"]


def view_sizes(names: list[str], height: int, width: int) -> set[tuple[int, int]]:
    """The input sizes (h, w) the network meets for a photo at height x width: one per distinct view size."""
    x = torch.zeros(1, 1, height, width)
    return {tuple(forward(x).shape[-2:]) for forward, _ in resolve(names)}
