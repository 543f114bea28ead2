"""A recipe's members as models: loaded, checked against what the recipe recorded, and run in the
precision it recorded for them.

What ``make submission`` (pipeline/stages/submission.py) and ``predict`` (pipeline/stages/predict.py)
both build from a ``Recipe`` (pipeline/inference/recipe.py), so that both run the same members in the
same precision.
"""

from __future__ import annotations

import torch

from ..core.device import precision_label, resolve_precision
from ..core.errors import LineageError
from ..masks.submission_csv import SubmissionError
from ..models.unet import load_checkpoint, read_checkpoint
from .engine import Member, int8_missing
from .model_folder import check_folder, fetch, int8_sizes, load_pretrained
from .recipe import Recipe
from .tta import view_sizes


def load_members(recipe: Recipe, device: torch.device) -> tuple[list[Member], list[int]]:
    """The recipe's positive-weight members as models on ``device``, and their weights.

    Every checkpoint's config is checked against the input size the recipe recorded for its
    member before any model is built (a memory-mapped read: the weights are not loaded twice).
    """
    active = recipe.active  # a zero weight would cost GPU time for nothing
    if not active:
        raise SubmissionError("recipe has no member with a positive weight")
    for m in active:
        for c in m.checkpoints:
            image = read_checkpoint(c, mmap=True)["config"].get("image", {})
            if (image.get("height"), image.get("width")) != (m.height, m.width):
                raise LineageError(
                    f"{c}: trained at {image.get('height')}x{image.get('width')}, but the recipe runs member "
                    f"{m.name!r} at {m.height}x{m.width}; re-run `make ensemble`"
                )
    members, weights = [], []
    for m in active:
        if m.model is not None:  # an exported model folder, checked against the hash the recipe holds
            pretrained = load_pretrained(m.model, device, m.model_sha256)
            inp = pretrained.spec["input"]
            if (inp["height"], inp["width"]) != (m.height, m.width):
                raise LineageError(f"{m.model}: input {inp['height']}x{inp['width']}, the recipe says otherwise")
            models = [pretrained.model]
        else:
            # The bytes loaded are the bytes the recipe recorded (hashed as read, not in a second read).
            models = [load_checkpoint(c, device, sha)[0] for c, sha in zip(m.checkpoints, m.checkpoint_sha256)]
        int8 = pretrained.int8_networks if m.model is not None else {}
        members.append(Member(m.name, models, m.height, m.width, list(m.tta), m.precision or "auto", int8))
        weights.append(m.weight)
    return members, weights


def has_int8(recipe: Recipe) -> bool:
    """Every positive-weight member is a model folder with an INT8 network for each of its input sizes
    (``make quantize``): what lets OpenVINO run the recipe in int8."""
    for m in recipe.active:
        if m.model is None:
            return False
        spec = check_folder(fetch(m.model), str(m.model))
        if not view_sizes(list(m.tta), m.height, m.width) <= int8_sizes(spec):
            return False
    return bool(recipe.active)


def all_int8(members: list[Member]) -> bool:
    """Every member has an INT8 network for each of its input sizes (loaded from its model folder)."""
    return bool(members) and not any(int8_missing(m) for m in members)


def member_precisions(recipe: Recipe, device: torch.device, override: str | None = None) -> str:
    """The inference precision of every positive-weight member on ``device``, as one name for the key.

    Each member runs in the precision the recipe recorded for it (that of its out-of-fold maps, on
    which its threshold was tuned; ``auto`` for recipes written before), unless ``override`` is given
    (``int8``: OpenVINO's INT8 networks, for all).
    """
    if override == "int8":
        return "int8"
    return precision_label([resolve_precision(override or m.precision or "auto", device) for m in recipe.active])


def configured_workers(recipe: Recipe, default: int = 2) -> int:
    """DataLoader workers from the members' configs (``predict.num_workers``, the largest), else ``default``."""
    counts = []
    for m in recipe.active:
        if m.checkpoints:
            config = read_checkpoint(m.checkpoints[0], mmap=True)["config"]
            counts.append(int(config.get("predict", {}).get("num_workers", default)))
    return max(counts, default=default)
