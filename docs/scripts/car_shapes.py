"""What the cars of the Carvana train set look like: the reference ranges the review score holds each
predicted mask against (pipeline/inference/car_shapes.json, read by pipeline/inference/review.py).

Per view (01..16, and over all views for photos without a Carvana name): the smallest and largest
car area (share of the image) over the Kaggle train index (318 cars), and the smallest and largest
bounding box (width, height, centre, as shares of the image) and fill (car pixels per box pixel) over
the masks of the cars at hand (60 cars in ../shared).

    PYTHONPATH=. python docs/scripts/car_shapes.py ../shared/data/carvana_real ../shared/data/kaggle_train_index.csv
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import delayed

from pipeline.core.parallel import parallel
from pipeline.data.layout import Layout, list_images, parse_name, read_mask
from pipeline.inference.review import SHAPE_FEATURES, shape_features

OUT = Path(__file__).resolve().parents[2] / "pipeline" / "inference" / "car_shapes.json"


def one(layout: Layout, img: str) -> dict:
    m = read_mask(layout.mask(img)).astype(bool)
    h, w = m.shape
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    box = {"area": int(m.sum()), "height": h, "width": w}
    box.update(top=int(rows[0]), bottom=int(rows[-1]), left=int(cols[0]), right=int(cols[-1]))
    return {"img": img, "view": parse_name(img)[1], **box}


def shape_ranges(data: str, index: str, exclude_cars: set[str] = frozenset()) -> tuple[dict, pd.DataFrame]:
    """{view: {feature: [min, max]}} over the cars of ``data`` (and the index's areas), leaving out
    ``exclude_cars`` (held-out cars, when measuring on them); and the masks' table."""
    layout = Layout(data)
    images = [
        i for i in list_images(layout.train_dir) if layout.mask(i).is_file() and parse_name(i)[0] not in exclude_cars
    ]
    rows = parallel(1)(delayed(one)(layout, i) for i in images)
    t = pd.DataFrame(rows)
    feats = shape_features(t)
    feats["view"] = t["view"]
    areas = pd.read_csv(index, dtype={"car_id": str})
    areas = areas[~areas.car_id.isin(exclude_cars)]
    ranges = {}
    for view in [*range(1, 17), "all"]:
        sel = feats if view == "all" else feats[feats.view == view]
        a = areas.mask_area if view == "all" else areas[areas.view == view].mask_area
        r = {f: [round(float(sel[f].min()), 5), round(float(sel[f].max()), 5)] for f in SHAPE_FEATURES}
        r["area"] = [round(float(min(a.min(), sel["area"].min())), 5), round(float(max(a.max(), sel["area"].max())), 5)]
        ranges[str(view)] = r
    return ranges, t


def main(data: str, index: str) -> None:
    ranges, t = shape_ranges(data, index)
    out = {
        "source": "docs/scripts/car_shapes.py: areas over the Kaggle train index (318 cars, 5,088 images), "
        f"boxes and fill over {t.img.str[:12].nunique()} cars ({len(t)} masks) of the real sample",
        "features": list(SHAPE_FEATURES),
        "ranges": ranges,
    }
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{OUT}: {len(t)} masks, {t.img.str[:12].nunique()} cars; all views: {ranges['all']}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
