"""The one inference engine, shared by out-of-fold prediction and submission.

For every image and every ensemble member it averages the sigmoid probabilities of the member's
fold models over the TTA views (at the member's input size), upsamples them bilinearly to the
image's own size and quantizes them to uint8 (0..255). Out-of-fold prediction stores exactly
these uint8 maps as PNGs; the ensemble tunes weights and threshold on them; the submission
blends the same maps with the same integer arithmetic (``blend``), so the tuned recipe means
the same thing on test images.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .datasets import InferenceDataset
from .models import SegModel
from .tta import resolve


@dataclass
class Member:
    name: str
    models: list[SegModel]
    height: int
    width: int
    tta: list[str] = field(default_factory=lambda: ["hflip"])


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool, dtype: str = "bfloat16"):
    if device.type != "cuda" or not enabled:
        return nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, dtype))


def blend(quantized, weights: list[int]):
    """Weighted average of uint8 maps (M, ...) with integer weights, rounded half up.

    Integer arithmetic makes the result bit-identical in NumPy and in torch on any device,
    which is what lets the ensemble's out-of-fold search carry over to the submission.
    """
    total = int(sum(weights))
    if total <= 0:
        raise ValueError(f"blend weights must sum to a positive number, got {weights}")
    if isinstance(quantized, np.ndarray):
        acc = np.zeros(quantized.shape[1:], dtype=np.int32)
        for q, w in zip(quantized, weights):
            if w:
                acc += q.astype(np.int32) * int(w)
        return ((acc + total // 2) // total).astype(np.uint8)
    acc = torch.zeros(quantized.shape[1:], dtype=torch.int32, device=quantized.device)
    for q, w in zip(quantized, weights):
        if w:
            acc += q.to(torch.int32) * int(w)
    return torch.div(acc + total // 2, total, rounding_mode="floor").to(torch.uint8)


class Engine:
    def __init__(
        self,
        members: list[Member],
        device: torch.device,
        amp: bool = True,
        amp_dtype: str = "bfloat16",
        channels_last: bool = True,
        batch_size: int = 4,
        num_workers: int = 2,
    ):
        self.members = members
        self.device = device
        self.amp, self.amp_dtype = amp, amp_dtype
        self.channels_last = channels_last and device.type == "cuda"
        self.batch_size, self.num_workers = batch_size, num_workers
        self.sizes = list(dict.fromkeys((m.height, m.width) for m in members))
        for m in members:
            for model in m.models:
                model.to(device).eval()
                if self.channels_last:
                    model.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def member_probs(self, member: Member, x: torch.Tensor) -> torch.Tensor:
        """Mean probability (B,1,h,w), fp32, over the member's fold models and TTA views."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        total = None
        views = resolve(member.tta)
        for model in member.models:
            for forward, inverse in views:
                with autocast(self.device, self.amp, self.amp_dtype):
                    logits = model(forward(x))
                p = torch.sigmoid(inverse(logits).float())
                total = p if total is None else total + p
        return total / (len(member.models) * len(views))

    @staticmethod
    def quantize(prob: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(1,h,w) probability -> (height,width) uint8, bilinear upsampling to the image size."""
        if prob.shape[-2:] != (height, width):
            prob = F.interpolate(prob[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        return torch.round(prob[0].clamp(0, 1) * 255).to(torch.uint8)

    def loader(self, images: list[Path]) -> DataLoader:
        return DataLoader(
            InferenceDataset(images, self.sizes),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def predict(self, images: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (image name, uint8 maps (M, H, W) on the engine's device), in input order."""
        for batch in self.loader(images):
            per_member = [
                self.member_probs(m, batch[f"x{self.sizes.index((m.height, m.width))}"]) for m in self.members
            ]
            for i, name in enumerate(batch["name"]):
                h, w = int(batch["height"][i]), int(batch["width"][i])
                yield name, torch.stack([self.quantize(p[i], h, w) for p in per_member])
