"""The far-blob guard (``remove_far_blobs``, issue 24 section 3): what it costs on true masks and what it
changes on a model's masks.

    PYTHONPATH=. python docs/scripts/far_blobs.py truth MASKS_DIR
        every true mask: the true pixels the guard would remove (it must be 0), the masks' separate pieces
        and the largest gap a true piece needs to be linked to the car
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
from pipeline.masks.postprocess import FAR_BLOB_GAP, remove_far_blobs
from pipeline.masks.postprocess import apply as postprocess


def truth(masks_dir: str) -> None:
    files = sorted(Path(masks_dir).glob("*_mask.gif"))
    removed, with_pieces, pieces, piece_px, worst_gap, seconds = 0, 0, 0, 0, 0.0, 0.0
    for f in files:
        m = (read_mask(f) > 0).astype(np.uint8)
        start = time.perf_counter()
        kept = remove_far_blobs(m)
        seconds += time.perf_counter() - start
        removed += int(m.sum() - kept.sum())
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        if n > 2:
            big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
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
        f"(the guard's gap: {FAR_BLOB_GAP * np.hypot(h, w):.0f} px); {seconds / len(files) * 1000:.1f} ms per mask"
    )


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
    p.add_argument("kind", choices=["truth", "model"])
    p.add_argument("args", nargs="+")
    p.add_argument("--test-split")
    p.add_argument("--csv")
    a = p.parse_args()
    if a.kind == "truth":
        truth(*a.args)
    else:
        model(*a.args, a.test_split, a.csv)


if __name__ == "__main__":
    main()
