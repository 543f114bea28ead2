"""How the web API's review flag (X-Review-Look) was chosen: on photos of the test split (cars the shipped
model never saw), each alone as `make serve` sees it, the lone-photo review score per car pixel against the
true Dice. Prints one row per photo and the figures for a few thresholds.

    PYTHONPATH=. python docs/scripts/serve_review_flag.py /work/main/.exp/cars270 folds/test_split.csv --views 1,5,9,13
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from pipeline.data.layout import read_mask
from pipeline.inference.review import DEVICE_FEATURES
from pipeline.stages.predict import load_predictor
from pipeline.stages.serve import lone_review

p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("split")
p.add_argument("--views", default="1,5,9,13")
a = p.parse_args()
cars = pd.read_csv(a.split)["car_id"].tolist()
views = [int(v) for v in a.views.split(",")]
predictor = load_predictor(pretrained="models/carvana-unet-mobilenetv2", device="cpu")
rows = []
with tempfile.TemporaryDirectory() as scratch:
    for car in cars:
        for v in views:
            photo = Path(a.data) / "train" / f"{car}_{v:02d}.jpg"
            _, mask, features = predictor.photo(photo, Path(scratch))
            truth = read_mask(Path(a.data) / "train_masks" / f"{car}_{v:02d}_mask.gif").astype(bool)
            pred = mask > 0
            dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
            score, why = lone_review(photo.name, features)
            rows.append(
                {
                    "img": photo.name,
                    "dice": dice,
                    "area": int(features[DEVICE_FEATURES.index("area")]),  # as serve counts it
                    "score": score,
                    "errors": int((pred ^ truth).sum()),
                    "why": why,
                }
            )
            r = rows[-1]
            print(
                f"{photo.name} dice {dice:.5f} errors {r['errors']:6d} score {score:8.0f} "
                f"share {score / max(r['area'], 1):.4f}  {why}",
                flush=True,
            )
t = pd.DataFrame(rows)
t["share"] = t["score"] / t["area"].clip(lower=1)
print(t[["dice", "errors", "score", "share"]].describe().to_string())
for share in (0.01, 0.015, 0.02, 0.025, 0.03, 0.05):
    flagged = t[t["share"] >= share]
    print(
        f"share >= {share}: {len(flagged)} of {len(t)} flagged; their mean Dice {flagged['dice'].mean():.4f}; "
        f"unflagged min Dice {t[t['share'] < share]['dice'].min():.4f}"
    )
