# What the resize to a training size and back costs, with a perfect model (docs/record/accuracy-levers.md):
# each ground-truth mask of fold 0 is area-resized to (h, w), upsampled bilinearly to 1918x1280 as
# the engine upsamples probabilities, thresholded at 0.5 and scored against itself.
# Run from the repository root: PYTHONPATH=. .venv/bin/python docs/scripts/resolution_ceiling.py
import cv2
import numpy as np
import pandas as pd

from pipeline.data.layout import read_mask
from pipeline.masks.metrics import dice

folds = pd.read_csv(".exp/folds_real.csv")
images = folds[folds.fold == 0].img.tolist()
sizes = [(256, 384), (320, 480), (512, 768), (640, 960)]
scores = {s: [] for s in sizes}
for img in images:
    m = read_mask(f"../shared/data/carvana_real/train_masks/{img[:-4]}_mask.gif")
    for h, w in sizes:
        small = cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        up = cv2.resize(small, (m.shape[1], m.shape[0]), interpolation=cv2.INTER_LINEAR)
        scores[(h, w)].append(dice(up >= 0.5, m))
for (h, w), d in scores.items():
    print(f"{h}x{w}: mean Dice {np.mean(d):.5f}  p5 {np.percentile(d, 5):.5f}  min {np.min(d):.5f}  ({len(d)} images)")
