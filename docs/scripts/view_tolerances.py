"""The review list's view tolerances and the cars framed unlike the train cars, from true masks.

For every true mask of a Kaggle-layout data root: its area and box. Printed: how far a view's true
mask disagrees with its mirror view and with its two neighbours' median (the maxima set
review.VIEW_TOLERANCE; the test split's cars left out), and the cars whose true masks lie outside
car_shapes.json's ranges (``shape_dev`` past the tolerance on some view) or sit low or large in the
frame (median box bottom below 0.85 of the height, median area above the range): written to --out.

    PYTHONPATH=. python docs/scripts/view_tolerances.py .exp/cars270 --test-split folds/test_split.csv \\
        --out framing_cars.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.data.folds import load_test_split
from pipeline.data.layout import read_mask
from pipeline.inference import review


def boxes(data: Path) -> pd.DataFrame:
    rows = []
    for f in tqdm(sorted((data / "train_masks").glob("*_mask.gif")), desc="true masks", unit="mask"):
        m = read_mask(f) > 0
        ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        car, view = f.name[:12], int(f.name[13:15])
        rows.append((f"{car}_{view:02d}.jpg", car, view, int(m.sum()), *m.shape, ys[0], ys[-1], xs[0], xs[-1]))
    cols = ["img", "car", "view", "area", "height", "width", "top", "bottom", "left", "right"]
    return pd.DataFrame(rows, columns=cols)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--test-split")
    p.add_argument("--out")
    a = p.parse_args()
    b = boxes(Path(a.data))
    test = load_test_split(a.test_split) if a.test_split else frozenset()
    k = b.set_index(["car", "view"])
    rows = []
    for (car, v), r in k.iterrows():
        if car in test:
            continue
        mirror = (18 - v - 1) % 16 + 1
        nb = k.loc[[(car, (v - 2) % 16 + 1), (car, v % 16 + 1)]]
        out = {"n_area": abs(np.log(r.area / nb.area.median())), "n_bottom": abs(r.bottom - nb.bottom.median())}
        if mirror != v:
            m = k.loc[(car, mirror)]
            out.update(m_area=abs(np.log(r.area / m.area)), m_top=abs(r.top - m.top), m_bottom=abs(r.bottom - m.bottom))
        rows.append(out)
    t = pd.DataFrame(rows)
    print(f"{len(t)} true masks of {len(t) // 16} cars (test split left out): the largest disagreement")
    mirror = f"|log area ratio| {t.m_area.max():.3f}, top {t.m_top.max():.0f} px, bottom {t.m_bottom.max():.0f} px"
    print(f"  with the mirror view: {mirror}")
    print(f"  with the neighbours' median: |log area ratio| {t.n_area.max():.3f}, bottom {t.n_bottom.max():.0f} px")
    b["shape_dev"] = review.shape_dev(b)
    lo, hi = review.car_shapes()["all"]["area"]
    c = b.groupby("car").agg(
        over=("shape_dev", lambda s: int((s > review.SHAPE_TOLERANCE).sum())),
        bottom=("bottom", "median"),
        area=("area", "median"),
        height=("height", "first"),
        width=("width", "first"),
    )
    framing = c[(c.over > 0) | (c.bottom > 0.85 * c.height) | (c.area > hi * c.height * c.width)]
    framing = framing[~framing.index.isin(test)]
    print(f"cars framed unlike the train cars (test split left out): {len(framing)}")
    print(framing.to_string())
    if a.out:
        pd.DataFrame({"car": framing.index}).to_csv(a.out, index=False)


if __name__ == "__main__":
    main()
