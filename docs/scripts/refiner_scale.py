"""At which photo scales the outline refiner (``refine_outline``) helps: ``SCALE_BAND`` in
pipeline/masks/outline_refiner.py.

The shipped folder on photos of the test split (cars it never saw), each photo and its true mask resized
to a scale (1 = the 1918x1280 photos it was trained on; ``p1``: turned to portrait at scale 1) and stored
losslessly, then predicted by the folder's network at that size; per scale, the mean Dice of the
thresholded mask and of the refined one (the refiner applied whatever the scale), and the seconds the
refiner takes per photo:

    OMP_NUM_THREADS=1 PYTHONPATH=. python docs/scripts/refiner_scale.py models/carvana-unet-mobilenetv2 \
        .exp/cars270 --test-split folds/test_split.csv --photos 24
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from pipeline.data.folds import load_test_split
from pipeline.data.layout import Layout, read_image, read_mask
from pipeline.inference.engine import Engine
from pipeline.inference.model_folder import load_pretrained
from pipeline.masks import outline_refiner as R
from pipeline.masks.metrics import dice

# A scale with a "p" is the photo turned to portrait (90 degrees) at that scale.
SCALES = ("0.25", "0.5", "0.6", "0.7", "0.85", "1", "1.2", "1.4", "1.7", "2", "p1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--test-split", required=True)
    p.add_argument("--photos", type=int, default=24, help="photos, spread over the test split's cars and views")
    p.add_argument("--scales", default=",".join(SCALES))
    a = p.parse_args()
    R.SCALE_BAND = (0.0, float("inf"))  # measure everywhere: this is what chooses the band
    m = load_pretrained(a.model, "cpu")
    params = m.spec["postprocess_params"]["refine_outline"]
    threshold = int(m.spec["threshold"])
    layout = Layout(a.data)
    cars = sorted(load_test_split(a.test_split))
    names = sorted(p.name for p in layout.train_dir.glob("*.jpg") if p.name[:12] in cars)
    names = names[:: max(1, len(names) // a.photos)][: a.photos]
    engine = Engine([m.member()], torch.device("cpu"), batch_size=2, num_workers=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in a.scales.split(","):
            portrait, scale = label.startswith("p"), float(label.lstrip("p"))
            paths, truths = [], {}
            for n in names:
                photo, truth = read_image(layout.train_image(n)), read_mask(layout.mask(n))
                if portrait:
                    photo, truth = np.rot90(photo).copy(), np.rot90(truth).copy()
                h, w = round(photo.shape[0] * scale), round(photo.shape[1] * scale)
                inter = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
                small = cv2.resize(photo, (w, h), interpolation=inter)
                path = Path(tmp) / f"{Path(n).stem}.png"
                cv2.imwrite(str(path), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
                area = cv2.resize(truth.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
                truths[path.name] = (area >= 0.5).astype(np.uint8)
                paths.append(path)
            by_name = {p.name: p for p in paths}
            for name, q in engine.predict(paths):
                b = q.cpu().numpy()[0]
                coarse = (b >= threshold).astype(np.uint8)
                photo = read_image(by_name[name])
                t = time.perf_counter()
                refined = R.refine_outline(coarse, b, photo, params)
                seconds = time.perf_counter() - t
                truth = truths[name]
                scores = {"coarse": dice(coarse, truth), "refined": dice(refined, truth)}
                rows.append({"scale": label, "img": name, **scores, "seconds": seconds, "height": b.shape[0],
                             "width": b.shape[1]})  # fmt: skip
            print(f"scale {label} done", flush=True)
    t = pd.DataFrame(rows)
    t["gain"] = t.refined - t.coarse
    print(f"{len(names)} test-split photos of {len({n[:12] for n in names})} cars, {a.model}")
    print("| scale | photo size | Dice thresholded | refined | gain | photos worse | refiner s/photo |")
    print("|---|---|---|---|---|---|---|")
    for scale, g in t.groupby("scale", sort=False):
        print(
            f"| {scale} | {g.width.iloc[0]}x{g.height.iloc[0]} | {g.coarse.mean():.5f} | {g.refined.mean():.5f} | "
            f"{g.gain.mean():+.5f} | {(g.gain < 0).sum()} of {len(g)} | {g.seconds.mean():.2f} |"
        )


if __name__ == "__main__":
    main()
