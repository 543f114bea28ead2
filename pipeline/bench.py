"""Micro-benchmarks of the per-image CPU costs that bound submission speed (``make bench``).

Measures, on one core: JPEG decode of a test image (full and DCT-scaled), RLE encode of a full
1918x1280 mask, and gzip of its CSV row. Uses a real Carvana image and mask when ``--data``
points at them, else a generated demo image.
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from . import rle
from .data import read_image, read_mask


def _time(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best * 1e3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench")
    p.add_argument("--data", default="../shared/data/carvana_real", help="a Kaggle-layout data root")
    p.add_argument("--repeat", type=int, default=50)
    a = p.parse_args(argv)
    cv2.setNumThreads(1)
    train = Path(a.data) / "train"
    images = sorted(train.glob("*.jpg")) if train.is_dir() else []
    if images:
        image = images[0]
        mask = read_mask(Path(a.data) / "train_masks" / f"{image.stem}_mask.gif")
        source = str(image)
    else:
        from .demo_data import _car_params, render_view

        rng = np.random.default_rng(0)
        img, mask = render_view(_car_params(rng), 3, 1918, 1280, rng)
        image = Path(tempfile.mkdtemp()) / "bench.jpg"
        cv2.imwrite(str(image), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        source = "generated demo image"
    mask = mask.astype(bool)
    row = f"{image.name},{rle.encode(mask)}\n".encode()
    results = {
        "jpeg decode full (ms)": _time(lambda: read_image(image), a.repeat),
        "jpeg decode to 320x480 (ms)": _time(lambda: read_image(image, 320, 480), a.repeat),
        "jpeg decode to 1024x1536 (ms)": _time(lambda: read_image(image, 1024, 1536), a.repeat),
        "rle encode 1918x1280 (ms)": _time(lambda: rle.encode(mask), a.repeat * 4),
        "rle parse/validate (ms)": _time(lambda: rle.parse(row.decode().split(",")[1], mask.size), a.repeat * 4),
        "gzip one csv row (ms)": _time(lambda: gzip.compress(row, compresslevel=6), a.repeat * 4),
    }
    print(f"source: {source}; mask {mask.shape[1]}x{mask.shape[0]}, row {len(row)} bytes, one thread")
    for k, v in results.items():
        print(f"{k:32s} {v:8.3f}")


if __name__ == "__main__":
    main()
