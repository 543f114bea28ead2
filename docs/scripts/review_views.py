"""The review list on real cars, out of fold: a shape judged against all train cars, or its own car's views.

Every photo of a source that never saw its car: a run's out-of-fold maps (``runs RUNS_DIR NAME DATA``)
or an exported model on the cars its record says it never saw (``model MODEL_DIR DATA``). Per photo its
Dice, error pixels and review features; then the share of all error pixels the top 5 % hold under

- ``soft``: soft_error / 255 alone,
- ``all cars``: plus the shape term for every photo (its shape against all train cars, car_shapes.json),
- ``own views``: review.review_table, the score as it is (the shape judged against the same car's own
  views; all train cars only where no view of its car is there),

against the best possible 5 %, and how many good masks (Dice above the median) sit in the top 5 % mainly
because of shape evidence (its shape or view pixels above its uncertain pixels). The cars framed unlike
the train cars (``--framing CSV``: car ids, e.g. from the true masks' boxes) are listed with their ranks.

    PYTHONPATH=. python docs/scripts/review_views.py runs .exp/runs L_cars243 .exp/cars270 [--framing F] [--csv OUT]
    PYTHONPATH=. python docs/scripts/review_views.py model models/carvana-unet-mobilenetv2 DATA [--framing F]
"""

from __future__ import annotations

import argparse

import pandas as pd

from pipeline.inference import review
from pipeline.stages import evaluate


def per_image(kind: str, args: list[str]) -> pd.DataFrame:
    """img, dice, fp, fn and the review features of every photo the source scores."""
    captured = []
    original = evaluate._table

    def capture(images, rows, with_review=False):  # the features evaluate computes, kept per image
        captured.extend({"img": i, **m, **f} for i, (m, f) in zip(images, rows))
        return original(images, rows, with_review)

    evaluate._table = capture
    try:
        if kind == "runs":
            runs_dir, name, data = args
            evaluate.score_runs(runs_dir, data, [name], n_jobs=1, quiet=False)
        else:
            model_dir, data = args
            evaluate.score_pretrained(model_dir, data, device="cpu", quiet=False)
    finally:
        evaluate._table = original
    return pd.DataFrame(captured)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["runs", "model"])
    p.add_argument("args", nargs="+")
    p.add_argument("--framing", help="CSV with a car column: cars framed unlike the train cars")
    p.add_argument("--csv", help="write the per-image table here")
    a = p.parse_args()
    t = per_image(a.kind, a.args)
    now = review.review_table(t[["img", *review.DEVICE_FEATURES]]).set_index("img")
    t = t.join(now[["score", "why", "uncertain_px", "view_px", "shape_px", "framing_dev"]], on="img")
    t["soft"] = t["soft_error"] / 255
    t["all cars"] = t["soft"] + review.shape_px(t.assign(shape_dev=review.shape_dev(t)))
    if a.csv:
        t.to_csv(a.csv, index=False)
    n, k = len(t), max(1, int(round(review.TOP_SHARE * len(t))))
    print(f"{n} photos of {t.img.str[:12].nunique()} cars; the top 5 % = {k} photos; mean Dice {t.dice.mean():.5f}")
    print(
        "\n| score | top 5 % hold | best possible | share of best | random | Spearman "
        "| good masks in top 5 % by shape |"
    )
    print("|---|---|---|---|---|---|---|")
    good = t.dice > t.dice.median()
    for col in ("soft", "all cars", "score"):
        f = review.review_figures(t.assign(review_score=t[col]))
        top = t.assign(s=t[col]).sort_values(["s", "img"], ascending=[False, True]).head(k)
        by_shape = top[good[top.index] & (top[col] - top["soft"] > top["soft"])]
        print(
            f"| {'own views' if col == 'score' else col} | {f['error_share_top']:.1%} | {f['error_share_best']:.1%} | "
            f"{f['error_share_top'] / f['error_share_best']:.0%} | {f['error_share_random']:.1%} | "
            f"{f['spearman']:.3f} | {len(by_shape)} |"
        )
    if a.framing:
        cars = set(pd.read_csv(a.framing)["car"])
        sel = t[t.img.str[:12].isin(cars)]
        print(f"\ncars framed unlike the train cars here: {sorted(set(sel.img.str[:12]))} ({len(sel)} photos)")
        for col in ("soft", "all cars", "score"):
            rank = t[col].rank(ascending=False, method="min")
            r = rank[sel.index]
            print(f"  {col}: ranks {int(r.min())}-{int(r.max())} of {n}; in the top 5 %: {(r <= k).sum()}")
        err = (t.fp + t.fn).rank(ascending=False, method="min")[sel.index]
        print(f"  their error ranks: {int(err.min())}-{int(err.max())}; Dice {sel.dice.min():.4f}-{sel.dice.max():.4f}")
    print("\nthe top 10 by the score:")
    top = t.sort_values(["score", "img"], ascending=[False, True]).head(10)
    for r in top.itertuples():
        print(f"  {r.img} Dice {r.dice:.4f} errors {int(r.fp + r.fn):,} score {r.score:,.0f}: {r.why}")


if __name__ == "__main__":
    main()
