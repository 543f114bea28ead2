"""Probabilities as the pipeline passes and stores them: uint8, 0..255 for 0..1.

The engine quantizes each probability map to ``round(255 * p)`` (pipeline/inference/engine.py); the
out-of-fold maps are those values as PNGs, the blend of several members is their weighted mean in
integers, and a threshold ``t`` (1..255) marks car where the value is ``>= t``: probability ``t / 255``.
"""

from __future__ import annotations

HALF = 128  # probability 0.5 on the uint8 scale (255 * 0.5 rounds to 128): a single model's threshold


def probability(threshold: int) -> float:
    """The probability a uint8 threshold stands for, as recipes and model folders record it."""
    return round(int(threshold) / 255, 6)
