"""Test-time augmentations by name (``predict.tta``): each is a transform of the input batch
and the inverse applied to the logits, so predictions are averaged in the original frame."""

from __future__ import annotations

from collections.abc import Callable

import torch

Pair = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


# The untransformed image is always predicted; names listed in the config add views to it.
TTAS: dict[str, Pair] = {
    "hflip": (_hflip, _hflip),
}


def resolve(names: list[str]) -> list[Pair]:
    unknown = [n for n in names if n not in TTAS and n != "none"]
    if unknown:
        raise ValueError(f"unknown TTA {unknown}; available: {sorted(TTAS)} (or [] / none)")
    return [(_identity, _identity)] + [TTAS[n] for n in names if n != "none"]
