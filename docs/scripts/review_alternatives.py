# The review score and the alternatives it was chosen from (docs/record/review-list.md): for the
# out-of-fold maps of one run, the device features of every image (review.features_of, as the
# submission computes them) and its errors against the truth; then, for each candidate score, the share
# of all error pixels held by the top 5 % of images, and the Spearman rank correlation with 1 - Dice.
# Run from the repository root:
#   PYTHONPATH=. .venv/bin/python docs/scripts/review_alternatives.py RUNS MEMBER DATA
import sys

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from pipeline.data.layout import Layout
from pipeline.inference import review
from pipeline.lineage.runs import discover, load_maps, member_images
from pipeline.masks.metrics import score_image

runs, member, data = sys.argv[1], sys.argv[2], sys.argv[3]
layout = Layout(data)
folds = discover(runs, [member], quiet=True)[member]
by_image = member_images(folds)
threshold = int(folds[0].get("threshold", 128))


def one(img: str) -> dict:
    (q,), mask = load_maps(layout, img, [by_image])
    s = score_image(q >= threshold, mask)
    return {"img": img, **review.features_of(q[None], [1], threshold), "fp": s["fp"], "fn": s["fn"], "dice": s["dice"]}


t = pd.DataFrame(Parallel(n_jobs=2)(delayed(one)(i) for i in sorted(by_image)))
t = t.merge(review.review_table(t)[["img", "score", "view_area_dev"]], on="img")
candidates = {
    "score (shipped): soft_error / 255": t.score,
    "uncertain pixels": t.uncertain,
    "outline length (perimeter)": t.perimeter,
    "soft_error per outline pixel": t.soft_error / t.perimeter.clip(lower=1),
    "soft_error per car pixel (about 2 (1 - Dice))": t.soft_error / t.area.clip(lower=1),
    "view_area_dev (area vs the car's other views)": t.view_area_dev,
}
best = review.review_figures(t.assign(review_score=t.fp + t.fn))
print(f"{len(t)} images; mean Dice {t.dice.mean():.5f}; the best possible top {best['top_images']} hold "
      f"{best['error_share_best']:.1%} of {best['error_pixels']} error pixels; random {best['error_share_random']:.1%} "
      f"(95th percentile {best['error_share_random_p95']:.1%})")  # fmt: skip
print("| candidate score | top 5 % hold | Spearman with 1 - Dice |\n|---|---|---|")
for name, s in candidates.items():
    f = review.review_figures(t.assign(review_score=s.to_numpy(np.float64)))
    print(f"| {name} | {f['error_share_top']:.1%} | {f['spearman']:.3f} |")
