# Where the active contour step helps and where it fails (docs/record/post-processing.md, "Active contours"):
# reads the per-image Dice before and after the step with snakes.DEFAULTS that
# active_contour_sweep.py wrote (PER_IMAGE=...), picks the image the step helped most and the one it hurt most, and for
# each writes a crop of the region it changed most: the photo, the truth's outline in white, the
# outline before the step in red and after it in green; pixels the step fixed tinted green, pixels
# it broke tinted red. Run from the repository root:
#   PYTHONPATH=. .venv/bin/python docs/scripts/active_contour_overlay.py RECIPE DATA PER_IMAGE_CSV OUT_PREFIX
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.core.io_utils import read_json
from pipeline.data.layout import Layout, read_image
from pipeline.inference.engine import blend
from pipeline.lineage.runs import discover, load_maps, member_images
from pipeline.masks.snakes import DEFAULTS, STEP, refine

recipe_path, data, per_image, prefix = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
recipe = read_json(recipe_path)
scores = pd.read_csv(per_image)
gain = scores["DEFAULTS"] - scores["before"]
layout = Layout(data)
found = discover(recipe["runs_dir"], [m["name"] for m in recipe["members"]], allow_incomplete=True, quiet=True)
maps_of = [member_images(found[m["name"]]) for m in recipe["members"]]
weights = [int(m["weight"]) for m in recipe["members"]]
params = DEFAULTS  # as the sweep scored it
print(f"{STEP}: mean gain {gain.mean():+.2e}; helped {(gain > 0).sum()}, hurt {(gain < 0).sum()}, "
      f"unchanged {(gain == 0).sum()} of {len(gain)} images")  # fmt: skip

for what, i in (("helped", int(gain.idxmax())), ("failed", int(gain.idxmin()))):
    img = scores.img[i]
    maps, truth = load_maps(layout, img, maps_of)
    blended = blend(maps, weights)
    before = (blended >= recipe["threshold"]).astype(np.uint8)
    photo = read_image(layout.train_image(img))
    after = refine(before, blended, photo, params)
    fixed = (after != before) & (after == truth)
    broke = (after != before) & (after != truth)
    # The 160x160 box holding most changed pixels.
    changed = (after != before).astype(np.float32)
    density = cv2.boxFilter(changed, -1, (161, 161), normalize=False)
    cy, cx = np.unravel_index(int(np.argmax(density)), density.shape)
    y0, x0 = int(np.clip(cy - 80, 0, truth.shape[0] - 160)), int(np.clip(cx - 80, 0, truth.shape[1] - 160))
    box = (slice(y0, y0 + 160), slice(x0, x0 + 160))
    out = photo[box].astype(np.float32)
    for where, colour in ((fixed[box], (0, 200, 0)), (broke[box], (255, 0, 0))):
        out[where] = 0.4 * out[where] + 0.6 * np.array(colour, np.float32)
    out = cv2.resize(out.round().astype(np.uint8), None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
    for m, colour in ((truth, (255, 255, 255)), (before, (255, 40, 40)), (after, (40, 255, 40))):
        edge = cv2.resize(m[box], None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(edge, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 1)
    path = f"{prefix}_{what}.png"
    cv2.imwrite(path, cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(
        f"{path}: {img} Dice {scores.before[i]:.5f} -> {scores.DEFAULTS[i]:.5f} ({gain[i]:+.2e}); "
        f"in the whole image {int(fixed.sum())} pixels fixed, {int(broke.sum())} broken; "
        f"crop x {x0}..{x0 + 159}, y {y0}..{y0 + 159}, shown 3x"
    )
