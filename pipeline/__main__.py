"""Command line: ``python -m pipeline <stage> --help``."""

from __future__ import annotations

import argparse
import sys
import time


def _folds_arg(value: str) -> list[int] | None:
    return None if value == "all" else [int(v) for v in value.split(",")]


def cmd_demo_data(a) -> None:
    from .demo_data import generate

    out = generate(
        a.out, n_train_cars=a.train_cars, n_test_cars=a.test_cars, width=a.width, height=a.height, seed=a.seed
    )
    print(f"demo data in {out}: {a.train_cars} train cars, {a.test_cars} test cars, {a.width}x{a.height}")


def cmd_folds(a) -> None:
    from .folds import make_folds, summary

    df = make_folds(a.data, a.out, k=a.k, seed=a.seed, index=a.index)
    print(summary(df))
    print(f"{a.out}: {len(df)} images, {df.car_id.nunique()} cars, {a.k} folds")


def cmd_train(a) -> None:
    from .config import load_config
    from .folds import load_folds
    from .train import run

    overrides = list(a.set or [])
    for key, value in (("data_dir", a.data), ("folds_csv", a.folds_csv), ("runs_dir", a.runs), ("device", a.device)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(a.config, overrides)
    folds = _folds_arg(a.fold)
    if folds is None:
        folds = sorted(set(load_folds(cfg.folds_csv).fold))
    for fold in folds:
        cfg.fold = fold
        run(cfg, fresh=a.fresh)


def cmd_ensemble(a) -> None:
    from .ensemble import tune

    tune(a.runs, a.data, a.out, names=a.members.split(",") if a.members else None, steps=a.steps, n_jobs=a.jobs)


def cmd_submission(a) -> None:
    from .submission import make_submission

    make_submission(
        a.recipe,
        a.data,
        a.out,
        device=a.device,
        batch_size=a.batch_size,
        num_workers=a.num_workers,
        amp=not a.no_amp,
        force=a.force,
        limit=a.limit,
    )


def cmd_evaluate(a) -> None:
    from .evaluate import evaluate, format_table, json_payload
    from .io_utils import atomic_path, write_json

    summaries, per_image = evaluate(
        runs=a.runs,
        recipe=a.recipe,
        data=a.data,
        members=a.members.split(",") if a.members else None,
        submission=a.submission,
        pred_dir=a.pred_dir,
        masks=a.masks,
        n_jobs=a.jobs,
    )
    print(format_table(summaries))
    for name, s in summaries.items():
        print(f"{name}: worst " + ", ".join(f"{w['img']} {w['dice']:.4f}" for w in s["worst"][:5]))
    if a.json:
        write_json(a.json, json_payload(summaries))
        print(f"summary -> {a.json}")
    if a.per_image:
        with atomic_path(a.per_image) as tmp:
            per_image.to_csv(tmp, index=False, float_format="%.6f")
        print(f"per-image metrics -> {a.per_image}")


def cmd_validate(a) -> None:
    from .data import Layout, image_size
    from .validate import read_sample_names, validate_submission

    layout = Layout(a.data)
    names = read_sample_names(layout.sample_submission)
    width, height = image_size(layout.test_dir / names[0])
    print(validate_submission(a.file, names, width, height))


# -- what users see: predict (cut-outs), report, Kaggle download/submit (issue 8) -------------------
def cmd_predict(a) -> None:
    from .predict import run_predict

    run_predict(
        a.input,
        a.out,
        recipe=a.recipe,
        checkpoint=a.checkpoint,
        background=a.background,
        feather=a.feather,
        device=a.device,
        amp=not a.no_amp,
        batch_size=a.batch_size,
        resume=a.resume,
    )


def cmd_download(a) -> None:
    from .kaggle import download

    status = download(a.data, keep_zips=a.keep_zips)
    print(f"{a.data}: " + ", ".join(f"{target} {state}" for target, state in status.items()))


def cmd_submit(a) -> None:
    from .kaggle import submit

    check = submit(a.file, a.message, a.data)
    print(f"{a.file}: {check['rows']} rows validated and uploaded; see your submissions page on Kaggle for the score")


def cmd_report(a) -> None:
    from .report import make_report

    members = a.members.split(",") if a.members else None
    make_report(a.runs, a.data, a.out, recipe_path=a.recipe, names=members, n_worst=a.worst, n_jobs=a.jobs)


def add_user_stages(sub) -> None:
    s = sub.add_parser("predict", help="mask, transparent cut-out and composite for any image(s)")
    s.add_argument("input", help="an image file or a folder of images")
    s.add_argument("--out", default="predictions", help="output folder")
    s.add_argument("--recipe", default="submissions/recipe.json", help="ensemble recipe (default)")
    s.add_argument("--checkpoint", help="one checkpoint instead of the recipe (threshold 0.5)")
    s.add_argument("--background", help="composite onto an image file or a colour #rrggbb")
    s.add_argument("--feather", type=int, default=0, metavar="PX", help="soften the cut-out edge over PX pixels")
    s.add_argument("--device", default="auto")
    s.add_argument("--no-amp", action="store_true", help="fp32 inference on CUDA")
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--resume", action="store_true", help="skip images whose outputs all exist")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("report", help="static HTML report: curves, metrics, Dice histogram, worst images")
    s.add_argument("--runs", default="runs")
    s.add_argument("--data", default="data")
    s.add_argument("--recipe", default="submissions/recipe.json", help="adds the blend (skipped if absent)")
    s.add_argument("--members", help="comma list of run names (default: every completed run)")
    s.add_argument("--out", default="reports", help="folder for index.html and its pictures")
    s.add_argument("--worst", type=int, default=6, help="how many of the worst images to show")
    s.add_argument("--jobs", type=int, default=-1, help="processes for scoring (-1: all cores)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("download", help="fetch and unpack the competition data with the Kaggle CLI")
    s.add_argument("--data", default="data", help="data root to fill (train/, train_masks/, test/, CSVs)")
    s.add_argument("--keep-zips", action="store_true", help="keep the downloaded zips in DATA/downloads/")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("submit", help="validate a submission, then upload it with the Kaggle CLI")
    s.add_argument("file", nargs="?", default="submissions/submission.csv.gz")
    s.add_argument("-m", "--message", required=True, help="the submission's description on Kaggle")
    s.add_argument("--data", default="data", help="data root with sample_submission.csv")
    s.set_defaults(func=cmd_submit)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline", description="Carvana image masking pipeline")
    sub = p.add_subparsers(dest="stage", required=True)

    s = sub.add_parser("demo-data", help="generate the synthetic demo dataset (Kaggle layout)")
    s.add_argument("--out", default="demo/data")
    s.add_argument("--train-cars", type=int, default=10)
    s.add_argument("--test-cars", type=int, default=2)
    s.add_argument("--width", type=int, default=1918)
    s.add_argument("--height", type=int, default=1280)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_demo_data)

    s = sub.add_parser("folds", help="group k-fold by car, stratified by mask area -> folds CSV")
    s.add_argument("--data", default="data", help="Kaggle data root (train/, train_masks/, ...)")
    s.add_argument("--out", default="folds/folds.csv")
    s.add_argument("--k", type=int, default=5)
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--index", help="train-set index CSV (img,car_id,view,mask_area,width,height) instead of --data")
    s.set_defaults(func=cmd_folds)

    s = sub.add_parser("train", help="train fold(s) of one model config, then predict its out-of-fold images")
    s.add_argument("--config", required=True, help="YAML config, e.g. configs/vgg11.yaml")
    s.add_argument("--fold", default="0", help="fold number, comma list, or 'all'")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set train.lr=1e-4")
    s.add_argument("--data", help="override data_dir")
    s.add_argument("--folds-csv", help="override folds_csv")
    s.add_argument("--runs", help="override runs_dir")
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--fresh", action="store_true", help="start over instead of resuming from last.pt")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("ensemble", help="tune member weights and threshold on out-of-fold predictions")
    s.add_argument("--runs", default="runs")
    s.add_argument("--data", default="data")
    s.add_argument("--out", default="submissions/recipe.json")
    s.add_argument("--members", help="comma list of run names (default: every completed run)")
    s.add_argument("--steps", type=int, default=10, help="weight grid resolution (10 = steps of 0.1)")
    s.add_argument("--jobs", type=int, default=-1)
    s.set_defaults(func=cmd_ensemble)

    s = sub.add_parser("evaluate", help="score predictions against the masks at full resolution (per image)")
    s.add_argument("--runs", help="score the out-of-fold maps of every completed run under this folder")
    s.add_argument("--members", help="with --runs: comma list of run names (default: all)")
    s.add_argument("--recipe", help="score the blend of an ensemble recipe (recipe.json) on out-of-fold maps")
    s.add_argument("--submission", help="score a submission .csv/.csv.gz (needs --masks)")
    s.add_argument("--pred-dir", help="score a folder of predicted mask PNGs (needs --masks)")
    s.add_argument("--masks", help="ground-truth folder of <stem>_mask.gif/.png, e.g. data/train_masks")
    s.add_argument("--data", default="data", help="data root whose train_masks/ --runs and --recipe use")
    s.add_argument("--json", help="write the summary (one source: an object; several: {source: object})")
    s.add_argument("--per-image", help="write one CSV row per source and image")
    s.add_argument("--jobs", type=int, default=-1)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("submission", help="predict test images with the recipe -> Kaggle .csv.gz (resumable)")
    s.add_argument("--recipe", default="submissions/recipe.json")
    s.add_argument("--data", default="data")
    s.add_argument("--out", default="submissions/submission.csv.gz")
    s.add_argument("--device", default="auto")
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--num-workers", type=int, default=2)
    s.add_argument("--no-amp", action="store_true", help="fp32 inference on CUDA")
    s.add_argument("--force", action="store_true", help="redo a submission that is already complete")
    s.add_argument("--limit", type=int, help="only the first N rows (a trial, not a full submission)")
    s.set_defaults(func=cmd_submission)

    s = sub.add_parser("validate", help="check a submission file against sample_submission.csv")
    s.add_argument("file")
    s.add_argument("--data", default="data")
    s.set_defaults(func=cmd_validate)

    add_user_stages(sub)

    a = p.parse_args(argv)
    from .config import ConfigError
    from .data import DataError
    from .validate import SubmissionError

    start = time.time()
    try:
        a.func(a)
    except (DataError, ConfigError, SubmissionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    print(f"[{a.stage}] done in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
