"""Training augmentation with albumentations (pinned to 2.0.8, its last MIT release)."""

from __future__ import annotations

import albumentations as A
import cv2

from ..core.config import AugmentConfig


def train_transform(cfg: AugmentConfig, seed: int | None = None) -> A.Compose:
    return A.Compose(
        [
            A.HorizontalFlip(p=cfg.hflip),
            A.Affine(
                translate_percent={"x": (-cfg.shift, cfg.shift), "y": (-cfg.shift, cfg.shift)},
                scale=(1 - cfg.scale, 1 + cfg.scale),
                rotate=(-cfg.rotate, cfg.rotate),
                border_mode=cv2.BORDER_REPLICATE,
                p=cfg.affine,
            ),
            A.OneOf(
                [
                    A.RandomBrightnessContrast(cfg.brightness, cfg.contrast, p=1.0),
                    A.HueSaturationValue(cfg.hue, cfg.saturation, 0, p=1.0),
                ],
                p=cfg.color,
            ),
        ],
        seed=seed,
    )
