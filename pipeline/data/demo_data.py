"""Synthetic Carvana-like dataset in the exact Kaggle layout (the built-in demo data).

Each car is a procedural silhouette (body, cabin with windows, four wheels) seen from 16 yaw
angles in 22.5 degree steps, on a studio background (wall gradient, floor, soft floor shadow
that is *not* part of the mask). About one car in four is white, which on the light studio
background is the hard case of the real data. Images are JPEG, masks are palette GIFs with
values 0/1, exactly like the Kaggle files; ``metadata.csv`` and ``sample_submission.csv``
follow the real column layout.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import cv2
import numpy as np
from joblib import delayed
from PIL import Image
from tqdm import tqdm

from ..core.io_utils import atomic_path, write_bytes, write_text
from ..core.parallel import parallel
from .layout import CARVANA_HEIGHT, CARVANA_WIDTH

N_VIEWS = 16
SHIFT = 4  # sub-pixel precision bits for cv2 polygon drawing
MAKES = [
    ("Acura", "TL"),
    ("Audi", "A4"),
    ("BMW", "328i"),
    ("Ford", "Focus"),
    ("Honda", "Civic"),
    ("Kia", "Soul"),
    ("Mazda", "CX-5"),
    ("Toyota", "Camry"),
    ("Volvo", "XC60"),
]


def _car_params(rng: np.random.Generator) -> dict:
    white = rng.random() < 0.25
    if white:
        color = np.array([236, 236, 234]) + rng.integers(-6, 6, 3)
    else:
        color = rng.integers(20, 220, 3)
    return dict(
        length=rng.uniform(4.2, 5.0),
        width=rng.uniform(1.7, 1.95),
        body_h=rng.uniform(0.55, 0.75),
        cabin_h=rng.uniform(0.42, 0.62),
        cabin_frac=rng.uniform(0.45, 0.6),
        cabin_off=rng.uniform(-0.12, 0.02),
        wheel_r=rng.uniform(0.3, 0.37),
        clearance=rng.uniform(0.12, 0.2),
        color=color.tolist(),
        scale_jitter=rng.uniform(0.92, 1.05),
        x_jitter=rng.uniform(-0.03, 0.03),
    )


def _rounded_rect(x0, y0, x1, y1, r) -> np.ndarray:
    r = max(1e-3, min(r, (x1 - x0) / 2, (y1 - y0) / 2))
    pts = []
    for cx, cy, a0 in ((x1 - r, y0 + r, 270), (x1 - r, y1 - r, 0), (x0 + r, y1 - r, 90), (x0 + r, y0 + r, 180)):
        for a in np.linspace(a0, a0 + 90, 7):
            pts.append((cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))))
    return np.array(pts)


def _poly(img, pts, color, aa=True):
    p = np.round(np.asarray(pts) * (1 << SHIFT)).astype(np.int32)
    cv2.fillPoly(img, [p], color, lineType=cv2.LINE_AA if aa else cv2.LINE_8, shift=SHIFT)


def _ellipse(img, center, axes, color, aa=True):
    c = tuple(int(round(v * (1 << SHIFT))) for v in center)
    a = tuple(max(1, int(round(v * (1 << SHIFT)))) for v in axes)
    cv2.ellipse(img, c, a, 0, 0, 360, color, -1, lineType=cv2.LINE_AA if aa else cv2.LINE_8, shift=SHIFT)


def render_view(params: dict, view: int, width: int, height: int, rng: np.random.Generator):
    """Render view 1..16 of one car; return (RGB uint8 image, uint8 0/1 mask)."""
    # View 1 faces the camera (front), view 5 a side, view 9 the rear, as in the Kaggle data.
    theta = math.radians((view - 1) * 360.0 / N_VIEWS)
    s, c = math.cos(theta), math.sin(theta)  # c: along-car (length) component, s: across
    px = 0.78 * width / 5.0 * params["scale_jitter"]  # pixels per metre
    cx = width * (0.5 + params["x_jitter"])
    ground = height * 0.80

    # Background: wall gradient above the horizon, lighter floor below, slight noise.
    yy = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    horizon = 0.55
    wall = 205 + 25 * yy / horizon
    floor = 232 + 10 * (yy - horizon) / (1 - horizon)
    bg = np.where(yy < horizon, wall, floor)
    img = np.repeat(np.repeat(bg, width, axis=1)[:, :, None], 3, axis=2)

    apparent = params["length"] * abs(c) + params["width"] * abs(s)
    half = apparent * px / 2
    body_top = ground - (params["clearance"] + params["body_h"]) * px
    body_bot = ground - params["clearance"] * px

    # Soft floor shadow (not part of the mask).
    shadow = np.zeros((height, width), np.float32)
    _ellipse(shadow, (cx, ground), (half * 1.05, 0.09 * px + 4), 1.0)
    k = max(3, int(0.04 * width) | 1)
    shadow = cv2.GaussianBlur(shadow, (k, k), 0)
    img *= (1 - 0.45 * shadow)[:, :, None]
    img = img.astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)

    # Wheels: four, projected; those hidden behind the body are drawn over anyway.
    wr = params["wheel_r"] * px
    wheel_base = params["length"] * 0.62 / 2
    track = params["width"] * 0.42
    for lon in (-wheel_base, wheel_base):
        for lat in (-track, track):
            x = cx + (lon * c + lat * s) * px
            axes = (wr * max(abs(c), 0.35), wr)
            _ellipse(img, (x, ground - wr), axes, (25, 25, 28))
            _ellipse(img, (x, ground - wr), (axes[0] * 0.5, axes[1] * 0.5), (150, 150, 155))
            _ellipse(mask, (x, ground - wr), axes, 1, aa=False)

    color = tuple(int(v) for v in params["color"])
    body = _rounded_rect(cx - half, body_top, cx + half, body_bot, 0.18 * px)
    _poly(img, body, color)
    _poly(mask, body, 1, aa=False)

    # Cabin: a trapezoid on the body, shifted towards the rear in side views.
    cab_len = params["cabin_frac"] * params["length"] * abs(c) + 0.85 * params["width"] * abs(s)
    off = params["cabin_off"] * params["length"] * c * px
    cab_top = body_top - params["cabin_h"] * px
    b0, b1 = cx + off - cab_len * px / 2, cx + off + cab_len * px / 2
    inset = 0.22 * (b1 - b0) * (0.4 + 0.6 * abs(c))
    cabin = np.array([(b0, body_top + 2), (b0 + inset, cab_top), (b1 - inset * 0.8, cab_top), (b1, body_top + 2)])
    _poly(img, cabin, color)
    _poly(mask, cabin, 1, aa=False)
    # Windows (part of the car, as in the Kaggle masks): darker, slightly inset.
    m = 0.05 * px
    win = np.array(
        [
            (b0 + m * 1.5, body_top),
            (b0 + inset + m, cab_top + m),
            (b1 - inset * 0.8 - m, cab_top + m),
            (b1 - m * 1.5, body_top),
        ]
    )
    _poly(img, win, (40, 48, 58))
    # Lights on the end that faces the camera: white at the front, red at the rear.
    if abs(s) > 0.2:
        for lat in (-1, 1):
            lx = cx + (0.47 * params["length"] * c * np.sign(s) + lat * 0.36 * params["width"] * abs(s)) * px
            light = (250, 250, 235) if s > 0 else (200, 30, 30)
            _ellipse(img, (lx, body_top + 0.18 * px), (0.1 * px * abs(s), 0.05 * px), light)

    noise = rng.normal(0, 2.0, (height, width, 1)).astype(np.float32)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img, mask


def car_ids(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = set()
    while len(ids) < n:
        ids.add("".join(rng.choice(list("0123456789abcdef"), 12)))
    return sorted(ids)


def _write_car(out: Path, car: str, split: str, seed: int, width: int, height: int) -> None:
    rng = np.random.default_rng([seed, int(car, 16) % (2**32)])
    params = _car_params(rng)
    for view in range(1, N_VIEWS + 1):
        img, mask = render_view(params, view, width, height, rng)
        name = f"{car}_{view:02d}"
        _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        write_bytes(out / split / f"{name}.jpg", jpeg.tobytes())
        if split == "train":
            gif = Image.fromarray(mask, mode="L").convert("P")
            gif.putpalette([0, 0, 0, 255, 255, 255])
            with atomic_path(out / "train_masks" / f"{name}_mask.gif") as tmp:
                gif.save(tmp, format="GIF")


def generate(
    out: str | Path,
    n_train_cars: int = 10,
    n_test_cars: int = 2,
    width: int = CARVANA_WIDTH,
    height: int = CARVANA_HEIGHT,
    seed: int = 0,
    n_jobs: int = -1,
) -> Path:
    """Write the demo dataset under ``out``; return ``out``. Deterministic for a given seed."""
    out = Path(out)
    for d in ("train", "train_masks", "test"):
        (out / d).mkdir(parents=True, exist_ok=True)
    ids = car_ids(n_train_cars + n_test_cars, seed)
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    train, test = sorted(ids[:n_train_cars]), sorted(ids[n_train_cars:])
    jobs = [(c, "train") for c in train] + [(c, "test") for c in test]
    parallel(n_jobs)(
        delayed(_write_car)(out, c, split, seed, width, height) for c, split in tqdm(jobs, desc="demo cars", unit="car")
    )
    metadata = io.StringIO()
    w = csv.writer(metadata, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    w.writerow(["id", "year", "make", "model", "trim1", "trim2"])
    for i, car in enumerate(sorted(ids)):
        make, model = MAKES[i % len(MAKES)]
        w.writerow([car, 2014 + i % 4, make, model, model, ""])
    write_text(out / "metadata.csv", metadata.getvalue())
    rows = "".join(f"{car}_{view:02d}.jpg,1 1\n" for car in test for view in range(1, N_VIEWS + 1))
    write_text(out / "sample_submission.csv", "img,rle_mask\n" + rows)
    return out
