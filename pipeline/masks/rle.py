"""Kaggle run-length encoding of binary masks.

Row-major (C order) over the image, 1-indexed, ``start length`` pairs joined by single spaces;
an empty mask is the empty string. Written by hand with NumPy because no maintained library
exposes exactly this format, and it is a few vectorized lines: encoding a 1918x1280 mask costs
well under a millisecond (see ``make bench``).
"""

from __future__ import annotations

import numpy as np


class RLEError(ValueError):
    """A run-length string that is not a valid Kaggle RLE for the given image size."""


def encode_runs(mask: np.ndarray) -> np.ndarray:
    """Return the flat int64 array ``[start1, len1, start2, len2, ...]`` (1-indexed starts)."""
    flat = np.asarray(mask).reshape(-1)
    # Compare the bytes directly when they are already 0/1 (bool, or uint8 as read from the GIFs):
    # one temporary instead of two; each 2.4 MB temporary costs more than the comparison itself.
    if flat.dtype == np.bool_:
        flat = flat.view(np.uint8)
    elif not (flat.dtype == np.uint8 and flat.size and flat.max() <= 1):
        flat = (flat != 0).view(np.uint8)
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    # Indices where the value changes; a run starts where 0->1, ends where 1->0.
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        edges = np.concatenate(([0], edges))
    if flat[-1]:
        edges = np.concatenate((edges, [flat.size]))
    runs = edges.astype(np.int64)
    runs[1::2] -= runs[0::2]
    runs[0::2] += 1
    return runs


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D binary mask (nonzero = car) as a Kaggle RLE string."""
    if np.ndim(mask) != 2:
        raise ValueError(f"RLE encode expects a 2-D mask, got shape {np.shape(mask)}")
    return " ".join(map(str, encode_runs(mask).tolist()))


def parse(rle: str, n_pixels: int) -> np.ndarray:
    """Parse and validate an RLE string; return the runs as an (n, 2) array of (start0, length).

    Valid means: whitespace-separated positive integers, an even count, runs in increasing order
    that neither overlap nor touch (touching runs would have been one run), all inside the image.
    """
    text = rle.strip() if isinstance(rle, str) else ""
    if not isinstance(rle, str):
        if rle is None or (isinstance(rle, float) and np.isnan(rle)):
            return np.zeros((0, 2), dtype=np.int64)
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}")
    if not text:
        return np.zeros((0, 2), dtype=np.int64)
    parts = text.split()
    if not all(p.isascii() and p.isdigit() for p in parts):  # isdigit alone accepts "²" and other scripts
        bad = next(p for p in parts if not (p.isascii() and p.isdigit()))
        raise RLEError(f"RLE token {bad!r} is not a positive integer")
    if len(parts) % 2:
        raise RLEError(f"RLE has an odd number of values ({len(parts)})")
    if any(len(p) > 18 for p in parts):  # beyond int64; no image has 10**18 pixels
        raise RLEError(f"RLE value {next(p for p in parts if len(p) > 18)[:30]}... is out of range")
    runs = np.array(parts, dtype=np.int64).reshape(-1, 2)
    starts, lengths = runs[:, 0], runs[:, 1]
    if (starts < 1).any():
        raise RLEError("RLE start 0 found; starts are 1-indexed")
    if (lengths < 1).any():
        raise RLEError("RLE run of length 0 found")
    ends = starts + lengths - 1  # last covered pixel, 1-indexed
    if ends[-1] > n_pixels:
        raise RLEError(f"RLE run ends at pixel {int(ends[-1])}, beyond the image's {n_pixels} pixels")
    if len(starts) > 1 and (starts[1:] <= ends[:-1] + 1).any():
        i = int(np.flatnonzero(starts[1:] <= ends[:-1] + 1)[0])
        raise RLEError(f"RLE runs out of order, overlapping or touching at pair {i + 2} (start {int(starts[i + 1])})")
    runs[:, 0] -= 1
    return runs


def decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode a Kaggle RLE string to a (height, width) uint8 mask with values 0/1."""
    n = height * width
    runs = parse(rle, n)
    delta = np.zeros(n + 1, dtype=np.int8)
    # Runs never touch (checked in parse), so each index gets at most one +1 or one -1.
    delta[runs[:, 0]] = 1
    delta[runs[:, 0] + runs[:, 1]] = -1
    return np.cumsum(delta[:-1], dtype=np.int8).astype(np.uint8).reshape(height, width)
