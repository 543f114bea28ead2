"""Train (and score) the outline refiner: the post-processing step ``refine_outline``
(pipeline/masks/outline_refiner.py, after boundary patch refinement, Tang et al., CVPR 2021, and
CascadePSP, Cheng et al., CVPR 2020). ``make export ... ARGS="--refiner FILE"`` puts it into a model folder;
the shipped one is .exp/refiner/r1.pt from the first command below (docs/record/accuracy-levers.md,
"Levers at equal wall time on 243 cars").

train: 64x64 patches along the true outline of 1,500 photos of the training folds (folds_270.csv
       fold != 0, test split left out), the coarse input made from the true mask (downsampled to
       320x480, shifted and blurred there, upsampled back): no coarse model needed.
eval:  the out-of-fold maps of a fold-0 run, refined in 48x48 tiles along their outline.

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/scripts/outline_refiner.py train --images 1500 --per 16 \
        --steps 6000 --minutes 70 --out .exp/refiner/r1.pt
    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/scripts/outline_refiner.py eval --out .exp/refiner/r1.pt \
        --run .exp/runs/L_cars243/fold0
"""

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.data.folds import load_folds, load_test_split
from pipeline.data.layout import read_image, read_mask
from pipeline.masks.metrics import dice
from pipeline.masks.outline_refiner import OutlineRefiner, params_for, refine_outline, to_tensors

DATA = Path(".exp/cars270")  # docs/record/accuracy-levers.md: the 270 cars of ../shared/data/more-cars.sh


def coarse_from_truth(mask, rng, size=(480, 320)):
    """A coarse model's probabilities imitated from the truth: area-downsampled to 320x480, shifted by
    up to half a coarse pixel, blurred, sharpened or softened, upsampled back bilinearly."""
    h, w = mask.shape
    small = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    dx, dy = rng.uniform(-0.5, 0.5, 2)
    small = cv2.warpAffine(small, np.float32([[1, 0, dx], [0, 1, dy]]), size, borderMode=cv2.BORDER_REPLICATE)
    s = rng.uniform(0.2, 0.9)
    small = cv2.GaussianBlur(small, (0, 0), s)
    t = rng.uniform(0.6, 1.6)  # temperature on the logit
    lg = np.log(np.clip(small, 1e-3, 1 - 1e-3) / np.clip(1 - small, 1e-3, 1))
    small = 1 / (1 + np.exp(-lg * t))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def bank(images, n_per, patch, seed):
    rng = np.random.default_rng(seed)
    X, P, Y = [], [], []
    for i, img in enumerate(images):
        rgb = read_image(DATA / "train" / img)
        m = read_mask(DATA / "train_masks" / img.replace(".jpg", "_mask.gif"))
        prob = coarse_from_truth(m, rng)
        edge = cv2.morphologyEx(m, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        ys, xs = np.nonzero(edge)
        pick = rng.integers(0, len(ys), n_per)
        h, w = m.shape
        r = patch // 2
        for k in pick:
            y = int(np.clip(ys[k] + rng.integers(-8, 9), r, h - r))
            x = int(np.clip(xs[k] + rng.integers(-8, 9), r, w - r))
            X.append(rgb[y - r : y + r, x - r : x + r].copy())
            P.append((prob[y - r : y + r, x - r : x + r] * 255).astype(np.uint8))
            Y.append(m[y - r : y + r, x - r : x + r].copy())
        if i % 200 == 0:
            print("bank", i, len(images), flush=True)
    return np.stack(X), np.stack(P), np.stack(Y)


def to_t(X, P, Y=None):
    rgb, p = to_tensors(X, P)
    return (rgb, p) if Y is None else (rgb, p, torch.from_numpy(Y).float().unsqueeze(1))


def train(a):
    folds = load_folds("folds/folds_270.csv")
    test = load_test_split("folds/test_split.csv")
    tr = folds[(folds.fold != 0) & ~folds.car_id.isin(test)]
    rng = np.random.default_rng(0)
    imgs = list(rng.choice(tr.img.to_numpy(), a.images, replace=False))
    t0 = time.time()
    X, P, Y = bank(imgs, a.per, a.patch, 1)
    print(f"bank {len(X)} patches in {time.time() - t0:.0f}s", flush=True)
    torch.manual_seed(0)
    net = OutlineRefiner(a.width)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-4)
    steps = a.steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.05)
    t0 = time.time()
    losses = []
    for s in range(steps):
        idx = rng.integers(0, len(X), a.batch)
        rgb, p, y = to_t(X[idx], P[idx], Y[idx])
        if rng.random() < 0.5:
            rgb, p, y = rgb.flip(3), p.flip(3), y.flip(3)
        out = net(rgb, p)
        loss = F.binary_cross_entropy_with_logits(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (s + 1) % 200 == 0:
            print(f"step {s + 1}/{steps} loss {np.mean(losses[-200:]):.4f} {time.time() - t0:.0f}s", flush=True)
        if time.time() - t0 > a.minutes * 60:
            print("time budget reached at step", s + 1)
            break
    torch.save(net.state_dict(), a.out)
    print(f"trained {s + 1} steps in {time.time() - t0:.0f}s -> {a.out}")


def evaluate(a):
    net = OutlineRefiner(a.width)
    net.load_state_dict(torch.load(a.out, weights_only=True))
    params = params_for(net.eval())
    run = Path(a.run)
    rows = []
    t_ref = 0
    maps = sorted((run / "oof").glob("*.png"))[:: a.every]
    for p in maps:
        q = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        rgb = read_image(DATA / "train" / f"{p.stem}.jpg")
        gt = read_mask(DATA / "train_masks" / f"{p.stem}_mask.gif")
        t = time.perf_counter()
        coarse = (q >= 128).astype(np.uint8)
        r = refine_outline(coarse, q, rgb, params)
        t_ref += time.perf_counter() - t
        rows.append((p.stem, dice(coarse, gt), dice(r, gt)))
    d = pd.DataFrame(rows, columns=["img", "coarse", "refined"])
    d.to_csv(Path(a.out).with_suffix(".eval.csv"), index=False)
    print(
        f"{len(d)} images: coarse {d.coarse.mean():.5f} refined {d.refined.mean():.5f} "
        f"(p5 {d.coarse.quantile(0.05):.5f} -> {d.refined.quantile(0.05):.5f}, "
        f"min {d.coarse.min():.5f} -> {d.refined.min():.5f}); worse on {(d.refined < d.coarse).sum()}; "
        f"{t_ref / len(d) * 1000:.0f} ms per image to refine"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("--out", default=".exp/refiner/r.pt")
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--per", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--run", default=".exp/runs/L_cars243/fold0")
    ap.add_argument("--every", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(1)
    train(a) if a.cmd == "train" else evaluate(a)
