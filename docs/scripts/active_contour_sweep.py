# Active contour parameters against out-of-fold Dice (docs/record/post-processing.md, "Active contours"): for a
# recipe (its members' out-of-fold maps, weights and threshold) and the images of the given folds,
# the mean Dice change of `snakes.refine` with snakes.DEFAULTS and with each override given as JSON,
# the images it helped and hurt, and the seconds per image on one core. With PER_IMAGE=file.csv it
# also writes each image's fold and Dice before and after every setting (active_contour_overlay.py
# reads it). Run from the repository root:
#   PYTHONPATH=. .venv/bin/python docs/scripts/active_contour_sweep.py RECIPE DATA FOLDS_CSV FOLDS '{"kappa": 4}' ...
import json
import os
import sys
import time

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from pipeline.core.io_utils import read_json
from pipeline.data.layout import Layout, read_image
from pipeline.inference.engine import blend
from pipeline.lineage.runs import discover, load_maps, member_images
from pipeline.masks.metrics import dice
from pipeline.masks.snakes import DEFAULTS, refine

recipe_path, data, folds_csv, folds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
settings = [{}] + [json.loads(a) for a in sys.argv[5:]]
recipe = read_json(recipe_path)
layout = Layout(data)
found = discover(recipe["runs_dir"], [m["name"] for m in recipe["members"]], allow_incomplete=True, quiet=True)
maps_of = [member_images(found[m["name"]]) for m in recipe["members"]]
weights, threshold = [int(m["weight"]) for m in recipe["members"]], int(recipe["threshold"])
table = pd.read_csv(folds_csv)
wanted = {int(f) for f in folds.split(",")}
images = sorted(set(table.img[table.fold.isin(wanted)]) & set.intersection(*(set(b) for b in maps_of)))


def one(img: str) -> list[float]:
    maps, truth = load_maps(layout, img, maps_of)
    blended = blend(maps, weights)
    before = (blended >= threshold).astype(np.uint8)
    photo = read_image(layout.train_image(img))
    out = [dice(before, truth)]
    for over in settings:
        start = time.perf_counter()
        after = refine(before, blended, photo, {**DEFAULTS, **over})
        out += [dice(after, truth), time.perf_counter() - start]
    return out


rows = np.array(Parallel(n_jobs=2)(delayed(one)(i) for i in images))
fold_of = dict(zip(table.img, table.fold))
print(f"{len(images)} images of folds {sorted(wanted)}; threshold {threshold}; Dice before {rows[:, 0].mean():.5f}")
for fold in sorted(wanted) if len(wanted) > 1 else []:
    sel = np.array([fold_of[i] == fold for i in images])
    print(f"  fold {fold}: {sel.sum()} images, DEFAULTS gain {(rows[sel, 1] - rows[sel, 0]).mean():+.2e}")
for k, over in enumerate(settings):
    gain = rows[:, 1 + 2 * k] - rows[:, 0]
    print(
        f"{json.dumps(over) if over else 'DEFAULTS':40s} gain {gain.mean():+.2e}  helped {(gain > 0).sum():3d}  "
        f"hurt {(gain < 0).sum():3d}  {rows[:, 2 + 2 * k].mean():.2f} s/image"
    )
if os.environ.get("PER_IMAGE"):
    cols = {"img": images, "fold": [fold_of[i] for i in images], "before": rows[:, 0]}
    for k, over in enumerate(settings):
        cols[json.dumps(over) if over else "DEFAULTS"] = rows[:, 1 + 2 * k]
    pd.DataFrame(cols).to_csv(os.environ["PER_IMAGE"], index=False, float_format="%.6f")
