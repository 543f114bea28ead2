"""The far-blob guard (``remove_far_blobs``): what it costs on true masks, that it never deletes a car, and
what it changes on a model's masks.

    PYTHONPATH=. python docs/scripts/far_blobs.py truth MASKS_DIR
        every true mask: the true pixels the guard would remove (it must be 0), the masks' separate pieces,
        the largest gap a true piece needs to be linked to the car, and the smallest car (its largest piece)
    PYTHONPATH=. python docs/scripts/far_blobs.py occluders MASKS_DIR [--every 8]
        true masks with vertical posts painted through them (40-200 px wide, at 5 places of the car, and two
        at once): the car pixels each guard removes (the one before this version and now)
    PYTHONPATH=. python docs/scripts/far_blobs.py composed MASKS_DIR [--every 8]
        two or more true masks composed into one photo (side by side, stacked, big and small, five in a row, a
        small car beside a larger false blob): the car pixels each guard removes
    PYTHONPATH=. python docs/scripts/far_blobs.py blobs MASKS_DIR [--every 8]
        true masks with false blobs on the platform edge below the car (the sizes and places of the real ones):
        the blob pixels each guard leaves and the car pixels it removes
    PYTHONPATH=. python docs/scripts/far_blobs.py compare MODEL_DIR PHOTOS_DIR [--cars N | --car-ids a,b]
        an exported model on the photos of N cars: its masks after the folder's steps before the guard, then
        each guard; the photos on which the two guards differ
    PYTHONPATH=. python docs/scripts/far_blobs.py model MODEL_DIR DATA [--test-split CSV] [--csv OUT]
        an exported model on the cars it never saw (or the test split's): per photo the Dice with the
        folder's own post-processing, and with the guard first; the photos it changes
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.data.layout import Layout, read_mask
from pipeline.masks.metrics import score_image
from pipeline.masks.postprocess import CAR_PIECE_FRACTION, FAR_BLOB_GAP, remove_far_blobs
from pipeline.masks.postprocess import apply as postprocess


def guard_before(mask: np.ndarray, max_gap: float = FAR_BLOB_GAP) -> np.ndarray:
    """The guard as it was before this version (commit bc72001): the largest piece and every piece chained
    to it by gaps of at most ``max_gap`` of the diagonal; everything else removed. For comparison only."""
    mask = (mask > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 2:
        return mask
    main = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    gap = max_gap * float(np.hypot(*mask.shape))
    pad = int(np.ceil(gap)) + 1
    others = np.delete(stats[1:], main - 1, axis=0)
    x0 = max(0, others[:, cv2.CC_STAT_LEFT].min() - pad)
    y0 = max(0, others[:, cv2.CC_STAT_TOP].min() - pad)
    x1 = min(mask.shape[1], (others[:, cv2.CC_STAT_LEFT] + others[:, cv2.CC_STAT_WIDTH]).max() + pad)
    y1 = min(mask.shape[0], (others[:, cv2.CC_STAT_TOP] + others[:, cv2.CC_STAT_HEIGHT]).max() + pad)
    window = labels[y0:y1, x0:x1]
    reach = cv2.distanceTransform((window == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= gap / 2
    _, linked = cv2.connectedComponents(reach.astype(np.uint8), connectivity=8)
    car = np.zeros(linked.max() + 1, dtype=bool)
    car[np.unique(linked[window == main])] = True
    far = np.zeros(n, dtype=bool)
    far[np.unique(window[~car[linked] & (window > 0)])] = True
    far[main] = False
    return (mask.astype(bool) & ~far[labels]).astype(np.uint8)


GUARDS = {"before": guard_before, "now": remove_far_blobs}


def _masks(masks_dir: str, every: int = 1) -> list[Path]:
    return sorted(Path(masks_dir).glob("*_mask.gif"))[::every]


def truth(masks_dir: str, every: int) -> None:
    files = _masks(masks_dir, every)
    removed, with_pieces, pieces, piece_px, worst_gap, seconds, smallest = 0, 0, 0, 0, 0.0, 0.0, (1.0, "")
    for f in files:
        m = (read_mask(f) > 0).astype(np.uint8)
        start = time.perf_counter()
        kept = remove_far_blobs(m)
        seconds += time.perf_counter() - start
        removed += int(m.sum() - kept.sum())
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        smallest = min(smallest, (stats[big, cv2.CC_STAT_AREA] / m.size, f.name))
        if n > 2:
            with_pieces += 1
            pieces += n - 2
            piece_px += int(m.sum() - stats[big, cv2.CC_STAT_AREA])
            # the direct distance of each piece to the largest one (the guard links through other pieces too)
            dist = cv2.distanceTransform((labels != big).astype(np.uint8), cv2.DIST_L2, 5)
            for k in range(1, n):
                if k != big:
                    worst_gap = max(worst_gap, float(dist[labels == k].min()))
    h, w = m.shape
    print(
        f"{len(files)} true masks: the guard removes {removed} true pixels; {pieces} separate pieces "
        f"({piece_px} px) in {with_pieces} masks, the farthest {worst_gap:.0f} px from the car "
        f"(the guard's gap: {FAR_BLOB_GAP * np.hypot(h, w):.0f} px); the smallest car's largest piece "
        f"{smallest[0]:.2%} of its photo ({smallest[1]}; car size from {CAR_PIECE_FRACTION:.0%}); "
        f"{seconds / len(files) * 1000:.1f} ms per mask"
    )


def _report(title: str, cases) -> None:
    """``cases``: (kind, mask, the pixels that must stay), one at a time (a list of them would not fit in
    memory); prints per kind and guard what was removed of them."""
    rows = []
    for kind, mask, car in cases:
        for name, guard in GUARDS.items():
            out = guard(mask)
            lost = int(np.count_nonzero(car & ~out.astype(bool)))
            rows.append({"kind": kind, "guard": name, "lost": lost, "car": int(car.sum())})
    t = pd.DataFrame(rows)
    print(f"{title}: {len(t) // len(GUARDS)} cases")
    print("| case | cases | guard before: cases losing car pixels, car pixels lost | now: cases, pixels |")
    print("|---|---|---|---|")
    for kind, g in t.groupby("kind", sort=False):
        b, a = g[g.guard == "before"], g[g.guard == "now"]
        print(
            f"| {kind} | {len(b)} | {(b.lost > 0).sum()}, {b.lost.sum():,} ({b.lost.sum() / max(b.car.sum(), 1):.1%}) "
            f"| {(a.lost > 0).sum()}, {a.lost.sum():,} |"
        )


def occluders(masks_dir: str, every: int) -> None:
    _report("true masks with posts painted through them", _occluded(masks_dir, every))


def _occluded(masks_dir: str, every: int):
    for f in _masks(masks_dir, every):
        m = read_mask(f).astype(bool)
        cols = np.flatnonzero(m.any(0))
        left, right = cols[0], cols[-1]
        for width in (40, 80, 120, 200):
            places = [[p] for p in (0.1, 0.3, 0.5, 0.7, 0.9)] + [[0.25, 0.75]]
            for at in places:
                o = m.copy()
                for p in at:
                    c = int(left + p * (right - left))
                    o[:, max(0, c - width // 2) : c + width // 2] = False
                yield f"post {width} px" + (" x2" if len(at) > 1 else ""), o.astype(np.uint8), o


def _placed(m: np.ndarray, scale: float, shape, cx: float, cy: float) -> np.ndarray:
    """The car of ``m`` scaled by ``scale`` with its box centred at (cx, cy) (fractions of ``shape``)."""
    ys, xs = np.nonzero(m)
    crop = m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    small = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA) >= 0.5
    out = np.zeros(shape, bool)
    y0, x0 = int(cy * shape[0] - h / 2), int(cx * shape[1] - w / 2)
    y0, x0 = min(max(0, y0), shape[0] - h), min(max(0, x0), shape[1] - w)
    out[y0 : y0 + h, x0 : x0 + w] = small
    return out


def composed(masks_dir: str, every: int) -> None:
    _report("true masks composed", _composed(masks_dir, every))


def _composed(masks_dir: str, every: int):
    files = _masks(masks_dir, every)
    for i, f in enumerate(files):
        a, b = read_mask(f), read_mask(files[(i + 7) % len(files)])
        shape = a.shape
        layouts = {
            "two side by side (0.5 each)": [(a, 0.5, 0.27, 0.5), (b, 0.5, 0.75, 0.5)],
            "two stacked (0.5 each)": [(a, 0.5, 0.5, 0.27), (b, 0.5, 0.5, 0.75)],
            "big and small side by side (0.7, 0.5)": [(a, 0.7, 0.35, 0.5), (b, 0.5, 0.82, 0.5)],
            "big and small, small above (0.7, 0.5)": [(a, 0.7, 0.5, 0.68), (b, 0.5, 0.2, 0.2)],
            "five in a row (0.25 each)": [(files and read_mask(files[(i + k) % len(files)]), 0.25, 0.1 + 0.2 * k, 0.5)
                                          for k in range(5)],
        }  # fmt: skip
        for kind, parts in layouts.items():
            cars = [_placed(m, s, shape, cx, cy) for m, s, cx, cy in parts]
            union = np.logical_or.reduce(cars)
            yield kind, union.astype(np.uint8), union
        # a small car beside a larger false blob: the blob may stay, the car must
        car = _placed(a, 0.3, shape, 0.3, 0.4)
        blob = np.zeros(shape, np.uint8)
        cv2.ellipse(blob, (1500, 1100), (260, 60), 0, 0, 360, 1, -1)
        yield "a small car (0.3) and a larger blob", (car | blob.astype(bool)).astype(np.uint8), car


# The false blobs of the wide-framed photos (the previous shipped model on the 4 wide-framed test cars; 297
# pieces of 200 px or more): flat, 150-550 px wide, 30-124 px high, on the platform edge 100 px or more below
# the car's lowest row, at the left, the middle and the right.
BLOBS = [((0.08, 0.29), (150, 55)), ((0.42, 0.24), (90, 20)), ((0.86, 0.27), (270, 43)), ((0.2, 0.22), (35, 13))]


def blobs(masks_dir: str, every: int) -> None:
    rows = []
    for f in _masks(masks_dir, every):
        m = read_mask(f)
        bottom = np.flatnonzero(m.any(1))[-1]
        for k in range(1, len(BLOBS) + 1):
            b = np.zeros_like(m)
            for (cx, dy), axes in BLOBS[:k]:
                cy = min(m.shape[0] - axes[1] - 1, bottom + int(dy * m.shape[0]) + axes[1])
                cv2.ellipse(b, (int(cx * m.shape[1]), cy), axes, 0, 0, 360, 1, -1)
            b &= 1 - m
            blob, car = b.astype(bool), m.astype(bool)
            for name, guard in GUARDS.items():
                out = guard(m | b).astype(bool)
                rows.append({"kind": f"{k} blob(s)", "guard": name, "left": int((out & blob).sum()),
                             "lost": int((car & ~out).sum()), "blob": int(blob.sum())})  # fmt: skip
    t = pd.DataFrame(rows)
    print(f"true masks with false blobs below the car: {len(t) // len(GUARDS)} cases")
    print("| case | cases | blob px | guard before: blob px left, car px lost | now: blob px left, car px lost |")
    print("|---|---|---|---|---|")
    for kind, g in t.groupby("kind", sort=False):
        b, a = g[g.guard == "before"], g[g.guard == "now"]
        before, now = f"{b.left.sum():,}, {b.lost.sum():,}", f"{a.left.sum():,}, {a.lost.sum():,}"
        print(f"| {kind} | {len(b)} | {b.blob.sum():,} | {before} | {now} |")


def compare(model_dir: str, photos: str, cars: int | None, car_ids: str | None) -> None:
    """The folder's steps before the guard, then each guard, on the photos of the first ``cars`` cars."""
    import torch

    from pipeline.data.layout import read_image
    from pipeline.inference.engine import Engine
    from pipeline.inference.model_folder import load_pretrained

    m = load_pretrained(model_dir, "cpu")
    files = sorted(Path(photos).glob("*.jpg"))
    wanted = car_ids.split(",") if car_ids else sorted({p.name[:12] for p in files})[:cars]
    files = [p for p in files if p.name[:12] in wanted]
    steps = list(m.spec.get("postprocess", []))
    before = steps[: steps.index("remove_far_blobs")] if "remove_far_blobs" in steps else steps
    params = m.spec.get("postprocess_params", {})
    engine = Engine([m.member()], torch.device("cpu"), batch_size=2, num_workers=0)
    changed, removed, step_changes = [], {"before": 0, "now": 0}, []
    by_name = {p.name: p for p in files}
    for name, q in engine.predict(files):
        b = q.cpu().numpy()[0]
        raw = (b >= int(m.spec["threshold"])).astype(np.uint8)
        photo = read_image(by_name[name]) if before else None
        mask = postprocess(raw, before, blended=b, image=photo, params=params)
        step_changes.append(np.count_nonzero(mask != raw) / mask.size)  # what the steps before the guard changed
        outs = {g: fn(mask) for g, fn in GUARDS.items()}
        for g, out in outs.items():
            removed[g] += int(mask.sum() - out.sum())
        if not np.array_equal(outs["before"], outs["now"]):
            changed.append((name, int(outs["before"].sum()), int(outs["now"].sum())))
    print(
        f"{len(files)} photos of {len(wanted)} cars, {model_dir} (steps before the guard: {before or 'none'}): "
        f"pixels removed by the guard before {removed['before']:,}, now {removed['now']:,}; "
        f"photos whose mask differs: {len(changed)}; the steps before the guard changed at most "
        f"{max(step_changes):.2%} of a photo (median {np.median(step_changes):.2%})"
    )
    for name, a, b in changed:
        print(f"  {name}: {a:,} px before, {b:,} now")


def model(model_dir: str, data: str, test_split: str | None, csv: str | None) -> None:
    from pipeline.data.layout import parse_name
    from pipeline.inference.model_folder import load_pretrained
    from pipeline.stages.evaluate import pretrained_predictions, unseen_test_cars

    m = load_pretrained(model_dir, "cpu")
    layout = Layout(data)
    images = [layout.train_image(i) for i in sorted(p.name for p in layout.train_dir.glob("*.jpg"))]
    cars = unseen_test_cars(m, test_split) if test_split else None
    seen = m.seen_cars or set()
    images = [p for p in images if (parse_name(p.name)[0] in cars if cars else parse_name(p.name)[0] not in seen)]
    steps, params = list(m.spec.get("postprocess", [])), m.spec.get("postprocess_params", {})
    rows = []
    for name, maps, car, _ in pretrained_predictions(m, images, "cpu"):
        truth_mask = read_mask(layout.mask(name))
        raw = (maps[0] >= int(m.spec["threshold"])).astype(np.uint8)
        guarded = postprocess(raw, ["remove_far_blobs", *steps], blended=maps[0], params=params)
        a, b = score_image(car, truth_mask), score_image(guarded, truth_mask)
        rows.append({"img": name, "dice": a["dice"], "dice_guard": b["dice"], "fp": a["fp"], "fp_guard": b["fp"],
                     "fn": a["fn"], "fn_guard": b["fn"], "removed": int(car.sum() - guarded.sum())})  # fmt: skip
    t = pd.DataFrame(rows)
    if csv:
        t.to_csv(csv, index=False)
    print(f"{len(t)} photos of {t.img.str[:12].nunique()} cars ({'test split' if cars else 'unseen cars'})")
    print("| post-processing | mean Dice | p5 | min | photos below 0.98 |")
    print("|---|---|---|---|---|")
    for label, col in (
        (f"{'+'.join(steps) or 'none'} (the folder's)", "dice"),
        ("remove_far_blobs first", "dice_guard"),
    ):
        d = t[col]
        print(f"| {label} | {d.mean():.5f} | {d.quantile(0.05):.5f} | {d.min():.5f} | {(d < 0.98).sum()} |")
    changed = t[t.removed != 0]
    print(
        f"photos the guard changes: {len(changed)}; "
        f"true pixels it removes: {int((changed.fn_guard - changed.fn).sum())}"
    )
    for r in changed.sort_values("dice").itertuples():
        print(f"  {r.img}: {r.dice:.5f} -> {r.dice_guard:.5f} ({r.removed:,} px removed)")
    print("worst 5:", ", ".join(f"{r.img} {r.dice:.4f}" for r in t.sort_values("dice").head(5).itertuples()))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["truth", "occluders", "composed", "blobs", "compare", "model"])
    p.add_argument("args", nargs="+")
    p.add_argument("--every", type=int, default=1, help="every n-th mask (truth: 1; the others: 8 is 540 masks)")
    p.add_argument("--cars", type=int, default=10)
    p.add_argument("--car-ids")
    p.add_argument("--test-split")
    p.add_argument("--csv")
    a = p.parse_args()
    if a.kind in ("truth", "occluders", "composed", "blobs"):
        {"truth": truth, "occluders": occluders, "composed": composed, "blobs": blobs}[a.kind](a.args[0], a.every)
    elif a.kind == "compare":
        compare(a.args[0], a.args[1], a.cars, a.car_ids)
    else:
        model(*a.args, a.test_split, a.csv)


if __name__ == "__main__":
    main()
