"""How the review list ranks confident mistakes: a mixed folder of held-out photos and odd ones.

The held-out cars of one fold (a model that never saw them), plus odd photos made from them and from
photos that show no car: non-car photos at their own size (truth: no car), held-out cars composited
onto a busy photo, with inverted colours, and rotated by 180 and 90 degrees (truth: the car's mask,
moved with it). Every photo goes through the exported model as `predict` runs it; per photo its Dice
against the truth, its error pixels and the review features. Printed: where the odd photos rank under
the score before this change (soft_error / 255 alone) and now (review.score: plus the shape term), and
the share of all error pixels the top 5 % hold, on the held-out photos alone and on the mixed folder.

    PYTHONPATH=. python docs/scripts/review_mixed.py MODEL_DIR DATA FOLDS_CSV FOLD NON_CAR_PHOTOS_DIR TRAIN_INDEX

The shape ranges are recomputed without the held-out fold's cars (the shipped car_shapes.json has them).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.data.folds import load_folds
from pipeline.data.layout import Layout, read_image, read_mask
from pipeline.inference import review
from pipeline.inference.model_folder import load_pretrained
from pipeline.masks.metrics import score_image
from pipeline.stages.evaluate import pretrained_predictions


def _save(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def build(layout: Layout, held: list[str], non_car: Path, tmp: Path) -> list[tuple[Path, np.ndarray, str]]:
    """(photo, truth mask, kind) for the held-out photos and the odd ones made here."""
    items = [(layout.train_image(i), read_mask(layout.mask(i)), "held-out") for i in held]
    others = sorted(p for p in non_car.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    for p in others:
        img = read_image(p)
        items.append((_save(tmp / f"nocar_{p.stem}.png", img), np.zeros(img.shape[:2], np.uint8), "not a car"))
    picks = held[5::24][:4]  # four held-out photos of different cars and views
    for k, img_name in enumerate(picks):
        photo, mask = read_image(layout.train_image(img_name)), read_mask(layout.mask(img_name))
        h, w = mask.shape
        back = cv2.resize(read_image(others[k % len(others)]), (w, h), interpolation=cv2.INTER_LINEAR)
        busy = np.where(mask[..., None] > 0, photo, back)
        items.append((_save(tmp / f"busy_{k}.png", busy), mask, "busy background"))
        items.append((_save(tmp / f"inverted_{k}.png", 255 - photo), mask, "inverted colours"))
        items.append((_save(tmp / f"rot180_{k}.png", photo[::-1, ::-1].copy()), mask[::-1, ::-1].copy(), "rotated 180"))
        if k < 2:
            rot = np.ascontiguousarray(np.rot90(photo))
            items.append((_save(tmp / f"rot90_{k}.png", rot), np.ascontiguousarray(np.rot90(mask)), "rotated 90"))
    return items


def main(model_dir: str, data: str, folds_csv: str, fold: str, non_car: str, index: str) -> None:
    layout = Layout(data)
    folds = load_folds(folds_csv)
    held = sorted(folds[folds.fold == int(fold)].img)
    # The shape ranges from the other cars only (the shipped ones include these): a fair held-out test.
    sys.path.insert(0, str(Path(__file__).parent))
    from car_shapes import shape_ranges

    held_cars = set(folds[folds.fold == int(fold)].car_id)
    ranges, _ = shape_ranges(data, index, held_cars)
    review.car_shapes = lambda: ranges
    model = load_pretrained(model_dir)
    threshold = int(model.spec["threshold"])
    with tempfile.TemporaryDirectory() as tmp:
        items = build(layout, held, Path(non_car), Path(tmp))
        truth = {p.name: (m, kind) for p, m, kind in items}
        rows = []
        for name, maps, car, _ in pretrained_predictions(model, [p for p, _, _ in items]):
            mask, kind = truth[name]
            s = score_image(car, mask)
            rows.append({"img": name, "kind": kind, **s, **review.features_of(maps, [1], threshold)})
    t = pd.DataFrame(rows)
    table = review.review_table(t[["img", *review.DEVICE_FEATURES]])
    t = t.merge(table[["img", "score", "shape_dev"]], on="img")
    t["before"] = t["soft_error"] / 255
    n = len(t)
    print(f"{n} photos: {(t.kind == 'held-out').sum()} held-out (fold {fold}), {(t.kind != 'held-out').sum()} odd")
    print("\n| photo | kind | Dice | error pixels | rank before (soft error) | rank now | shape_dev |")
    print("|---|---|---|---|---|---|---|")
    rank_before = t["before"].rank(ascending=False, method="min").astype(int)
    rank_now = t["score"].rank(ascending=False, method="min").astype(int)
    for i in t.index[t.kind != "held-out"]:
        r = t.loc[i]
        print(
            f"| {r.img} | {r.kind} | {r.dice:.4f} | {int(r.fp + r.fn)} | {rank_before[i]} of {n} "
            f"| {rank_now[i]} of {n} | {r.shape_dev:.2f} |"
        )
    print("\n| photos | score | top 5 % hold (of error pixels) | random 5 % | best possible 5 % | Spearman |")
    print("|---|---|---|---|---|---|")
    for which, sel in (("held-out only", t.kind == "held-out"), ("mixed folder", t.kind == t.kind)):
        for label, col in (("before: soft_error / 255", "before"), ("now: review.score", "score")):
            f = review.review_figures(t[sel].assign(review_score=t.loc[sel, col]))
            print(
                f"| {which} ({f['n_images']}) | {label} | {f['error_share_top']:.1%} | {f['error_share_random']:.1%} | "
                f"{f['error_share_best']:.1%} | {f['spearman']:.3f} |"
            )
    held_dev = t.loc[t.kind == "held-out", "shape_dev"]
    print(
        f"\nheld-out photos with shape_dev > 0: {(held_dev > 0).sum()} of {len(held_dev)} "
        f"(max {held_dev.max():.2f}); past the tolerance {review.SHAPE_TOLERANCE}: "
        f"{(held_dev > review.SHAPE_TOLERANCE).sum()}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:7])
