"""Command line: ``python -m pipeline <stage> --help``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _folds_arg(value: str) -> list[int | str] | None:
    """``all`` (None: every fold of the CSV), ``full`` (every car, no held-out fold), a number or a comma list."""
    from .core.config import FULL, ConfigError

    try:
        return None if value == "all" else [v if v == FULL else int(v) for v in value.split(",")]
    except ValueError:
        raise ConfigError(
            f"--fold {value!r}: expected a fold number, a comma list (0,2), 'all' or 'full' (train on every car)"
        ) from None


def _at_least(option: str, value: int, low: int) -> None:
    """Sizes and counts checked up front: a clear error instead of one from deep inside a library."""
    from .core.config import ConfigError

    if value < low:
        raise ConfigError(f"{option} {value}: must be at least {low}")


def _precision(a) -> str | None:
    """``--precision`` (overrides every member's recorded precision), or the deprecated ``--no-amp`` (fp32)."""
    if not a.no_amp:
        return a.precision
    if a.precision not in (None, "fp32"):
        from .core.config import ConfigError

        raise ConfigError(f"--no-amp means --precision fp32; it contradicts --precision {a.precision}")
    print("note: --no-amp is deprecated; use --precision fp32", file=sys.stderr)
    return "fp32"


def _check_backend(a) -> None:
    """An ONNX Runtime / OpenVINO run: the package installed, on the CPU, in fp32, without torch.compile."""
    from .core.config import ConfigError
    from .inference.backends import check_backend

    check_backend(a.backend)
    if a.backend == "torch":
        return
    if a.device not in ("cpu", "auto") or a.compile or a.precision not in (None, "fp32"):
        raise ConfigError(f"--backend {a.backend}: runs on the CPU in fp32 without --compile (--device cpu)")
    a.device = "cpu"


def _channels_last(value: str) -> bool | str:
    return {"true": True, "false": False}.get(value, value)


def _add_compile_option(s, what: str) -> None:
    s.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        metavar="BACKEND",
        help=f"torch.compile {what} (off by default; a backend name, e.g. eager, instead of inductor)",
    )


def _add_inference_options(s) -> None:
    s.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "onnxruntime", "openvino"),
        help="the runtime on the CPU: PyTorch, or the same model exported to ONNX Runtime / OpenVINO (fp32)",
    )
    s.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="inference precision for every member (default: each member's, as its out-of-fold maps were made)",
    )
    s.add_argument("--no-amp", action="store_true", help="deprecated: --precision fp32")
    s.add_argument(
        "--channels-last", default="auto", choices=("auto", "true", "false"), help="memory format (auto: CUDA only)"
    )
    _add_compile_option(s, "the models")


def cmd_demo_data(a) -> None:
    from .data.demo_data import generate

    for option, value, low in (("--train-cars", a.train_cars, 1), ("--test-cars", a.test_cars, 1)):
        _at_least(option, value, low)
    _at_least("--width", a.width, 32)
    _at_least("--height", a.height, 32)

    out = generate(
        a.out, n_train_cars=a.train_cars, n_test_cars=a.test_cars, width=a.width, height=a.height, seed=a.seed
    )
    print(f"demo data in {out}: {a.train_cars} train cars, {a.test_cars} test cars, {a.width}x{a.height}")


def cmd_folds(a) -> None:
    from .data.folds import make_folds, summary

    df = make_folds(a.data, a.out, k=a.k, seed=a.seed, index=a.index, strict=a.strict)
    print(summary(df))
    print(f"{a.out}: {len(df)} images, {df.car_id.nunique()} cars, {a.k} folds")


def _car_list(path: str) -> list[str]:
    """Car ids from a text file (one per line, # comments) or a Kaggle data root's train/ photos."""
    from .data.layout import DataError, Layout, list_images, parse_name

    p = Path(path)
    if p.is_dir():
        return sorted({parse_name(i)[0] for i in list_images(Layout(p).train_dir)})
    if not p.is_file():
        raise DataError(f"{p}: no such car list (a text file of car ids, or a data root with train/)")
    return sorted({line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")})


def cmd_test_split(a) -> None:
    from .core.io_utils import atomic_path
    from .data.folds import make_test_split, read_index

    exclude = set()
    for source in a.exclude:
        exclude |= set(_car_list(source))
    cars = _car_list(a.cars)
    test = make_test_split(read_index(a.index), cars, exclude, k=a.k, seed=a.seed)
    with atomic_path(a.out) as tmp:
        test.to_csv(tmp, index=False, float_format="%.6f")
    print(
        f"{a.out}: {len(test)} test cars, fold 0 of {a.k} (seed {a.seed}) over the {len(set(cars) - exclude)} cars "
        f"of {a.cars} not in {', '.join(a.exclude) or 'no exclusion'}"
    )


def cmd_train(a) -> None:
    from .core.config import load_config
    from .data.folds import load_folds
    from .stages.train import run

    overrides = list(a.set or [])
    for key, value in (("data_dir", a.data), ("folds_csv", a.folds_csv), ("runs_dir", a.runs), ("device", a.device)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if a.compile:
        overrides.append(f"train.compile={'true' if a.compile is True else a.compile}")
    cfg = load_config(a.config, overrides)
    # torchrun: one fold trained by all ranks with DistributedDataParallel (pipeline/stages/train.py).
    from datetime import timedelta

    from .core import distributed

    info = distributed.env_info()
    if info.world > 1:
        cfg.device = distributed.rank_device(cfg.device, info)
        distributed.init(cfg.device, timeout=timedelta(hours=2))  # ranks wait while rank 0 predicts out-of-fold
    folds = _folds_arg(a.fold)
    if folds is None:
        folds = sorted(set(load_folds(cfg.folds_csv).fold))
    try:
        for fold in folds:
            cfg.fold = fold
            run(cfg, fresh=a.fresh)
    finally:
        distributed.shutdown()


def cmd_smoke(a) -> None:
    from .stages.smoke import main_smoke

    main_smoke(a)


def cmd_ensemble(a) -> None:
    from .stages.ensemble import tune

    _check_jobs(a.jobs)

    tune(
        a.runs,
        a.data,
        a.out,
        names=a.members.split(",") if a.members else None,
        steps=a.steps,
        n_jobs=a.jobs,
        postprocess_steps=a.postprocess,
        allow_incomplete=a.allow_incomplete,
        force=a.force,
    )


def cmd_submission(a) -> None:
    from datetime import timedelta

    from .core import distributed
    from .lineage.checks import check_compile, check_device, check_recipe
    from .masks.submission_csv import SubmissionError
    from .stages.submission import make_submission, merge_shards, parse_shard

    check_device(a.device, "--device")
    check_compile(a.compile, "--compile")
    _check_backend(a)
    _at_least("--batch-size", a.batch_size, 1)
    if a.num_workers is not None:
        _at_least("--num-workers", a.num_workers, 0)
    if a.limit is not None:
        _at_least("--limit", a.limit, 1)
    if a.pretrained and a.recipe:
        raise SubmissionError("--recipe and --pretrained each name the model: give one of them")
    if a.pretrained:  # an exported model (make export, or the one shipped): a recipe of that one member
        from .stages.export import pretrained_recipe

        a.recipe = pretrained_recipe(a.pretrained, Path(a.out).parent)
        print(f"submission from the exported model {a.pretrained}: recipe {a.recipe}")
    a.recipe = a.recipe or "submissions/recipe.json"
    check_recipe(a.recipe)

    # torchrun: every rank computes shard rank/world on its own GPU; rank 0 merges after a barrier.
    info = distributed.env_info()
    shard = parse_shard(a.shard) if a.shard else None
    device = a.device
    if info.world > 1:
        if shard is not None:
            raise SubmissionError("--shard and torchrun both split the test set; use one of them")
        shard, device = (info.rank, info.world), distributed.rank_device(a.device, info)
        # gloo for the barrier on any device; shards may finish hours apart.
        distributed.init(device, timeout=timedelta(hours=48), backend="gloo")
    try:
        make_submission(
            a.recipe,
            a.data,
            a.out,
            device=device,
            batch_size=a.batch_size,
            num_workers=a.num_workers,
            precision=_precision(a),
            force=a.force,
            limit=a.limit,
            shard=shard,
            compile=a.compile,
            channels_last=_channels_last(a.channels_last),
            quiet=info.world > 1 and not info.is_main,  # torchrun: rank 0 alone shows progress
            backend=a.backend,
        )
        if info.world > 1:
            distributed.barrier()
            if info.is_main and not a.limit:
                merge_shards(a.data, a.out, recipe_path=a.recipe)
    finally:
        distributed.shutdown()


def cmd_merge(a) -> None:
    from .stages.submission import merge_shards

    merge_shards(a.data, a.out, recipe_path=a.recipe, shards_of=a.shards_of)


def cmd_evaluate(a) -> None:
    from .core.io_utils import atomic_path, write_json
    from .lineage.checks import check_device
    from .stages.evaluate import check_outputs, evaluate, format_table, json_payload, review_lines

    _check_jobs(a.jobs)
    check_device(a.device, "--device")
    check_outputs(a.json, a.per_image, a.force)
    if a.test_split and not a.pretrained:
        from .core.config import ConfigError

        raise ConfigError("--test-split scores an exported model: give --pretrained DIR_OR_HUB_ID")
    summaries, per_image = evaluate(
        runs=a.runs,
        recipe=a.recipe,
        data=a.data,
        members=a.members.split(",") if a.members else None,
        submission=a.submission,
        pred_dir=a.pred_dir,
        masks=a.masks,
        n_jobs=a.jobs,
        pretrained=a.pretrained,
        device=a.device,
        test_split=a.test_split,
    )
    print(format_table(summaries))
    for name, s in summaries.items():
        print(f"{name}: worst " + ", ".join(f"{w['img']} {w['dice']:.4f}" for w in s["worst"][:5]))
    for line in review_lines(per_image):
        print(line)
    if a.json:
        write_json(a.json, json_payload(summaries))
        print(f"summary -> {a.json}")
    if a.per_image:
        with atomic_path(a.per_image) as tmp:
            per_image.to_csv(tmp, index=False, float_format="%.6f")
        print(f"per-image metrics -> {a.per_image}")


def cmd_lineage(a) -> int:
    """Print the chain behind FILE and whether each link holds; exit 1 if one is broken."""
    from .lineage.trace import trace

    links = trace(a.file)
    for link in links:
        print(link.line())
    checked = [k for k in links if k.holds is not None]
    broken = [k for k in checked if k.holds is False]
    if broken:
        print(f"{len(broken)} of {len(checked)} links broken: {a.file} is not what its inputs make now")
        return 1
    if checked:  # a file that is not a link of a chain (a summary, a lock) was described in one line
        print(f"all {len(checked)} links hold")
    return 0


def cmd_validate(a) -> None:
    from .data.layout import Layout, image_size
    from .masks.submission_csv import read_sample_names, validate_submission

    layout = Layout(a.data)
    names = read_sample_names(layout.sample_submission)
    width, height = image_size(layout.test_dir / names[0])
    print(validate_submission(a.file, names, width, height))


# -- what users see: predict (cut-outs), report, Kaggle download/submit (issue 8) -------------------
def _check_jobs(jobs: int) -> None:
    """joblib's processes: -1 = all cores, n >= 1 (0 means nothing to joblib)."""
    from .core.config import ConfigError

    if jobs == 0 or jobs < -1:
        raise ConfigError(f"--jobs {jobs}: use -1 (all cores) or a number of processes >= 1")


def cmd_predict(a) -> None:
    from .lineage.checks import check_compile, check_device
    from .stages.predict import run_predict

    check_device(a.device, "--device")
    _at_least("--batch-size", a.batch_size, 1)
    check_compile(a.compile, "--compile")
    _check_backend(a)
    run_predict(
        a.input,
        a.out,
        recipe=a.recipe,
        checkpoint=a.checkpoint,
        pretrained=a.pretrained,
        background=None if a.background.lower() == "none" else a.background,
        feather=a.feather,
        device=a.device,
        precision=_precision(a),
        batch_size=a.batch_size,
        resume=a.resume,
        channels_last=_channels_last(a.channels_last),
        compile=a.compile,
        backend=a.backend,
    )


def cmd_download(a) -> None:
    from .stages.kaggle import download

    status = download(a.data, keep_zips=a.keep_zips)
    print(f"{a.data}: " + ", ".join(f"{target} {state}" for target, state in status.items()))


def cmd_submit(a) -> None:
    from .stages.kaggle import submit

    check = submit(a.file, a.message, a.data)
    print(f"{a.file}: {check['rows']} rows validated and uploaded; see your submissions page on Kaggle for the score")


def cmd_report(a) -> None:
    from .stages.report import make_report

    _check_jobs(a.jobs)
    _at_least("--worst", a.worst, 0)
    members = a.members.split(",") if a.members else None
    make_report(
        a.runs, a.data, a.out, recipe_path=a.recipe, names=members, n_worst=a.worst, n_jobs=a.jobs,
        pretrained=a.pretrained,
    )  # fmt: skip


def cmd_export(a) -> None:
    from .stages.export import export_model

    out = a.out or f"models/{a.name or 'model'}"
    notes = {"figures": a.note} if a.note else None
    export_model(a.checkpoint, out, recipe=a.recipe, dtype=a.dtype, name=a.name, notes=notes, refiner=a.refiner)


DEFAULT_BACKGROUND = "#3a6ea5"  # predict's composites, unless --background says otherwise (or none)


def add_user_stages(sub) -> None:
    s = sub.add_parser(
        "export", help="a trained model as one folder: smp's format (smp.from_pretrained), pipeline.json, model card"
    )
    s.add_argument("--checkpoint", required=True, help="a full run's final.pt (make train FOLD=full), or a best.pt")
    s.add_argument(
        "--recipe",
        help="a recipe of the same config's folds: its threshold, TTA, post-processing and out-of-fold figures "
        "go with the model (make ensemble ARGS='--members NAME' RECIPE=...)",
    )
    s.add_argument("--out", help="the folder to write (default models/<name>)")
    s.add_argument("--name", help="the model's name (default: the folder's)")
    s.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"), help="the weights as stored (fp16: half size)")
    s.add_argument(
        "--note", action="append", metavar="TEXT", help="a measured figure for the model card, with its command"
    )
    s.add_argument(
        "--refiner",
        metavar="FILE",
        help="an outline refiner's weights (docs/scripts/outline_refiner.py): redraws the outline at full "
        "resolution, first after the threshold (post-processing step refine_outline)",
    )
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("predict", help="mask, transparent cut-out and composite for any image(s)")
    s.add_argument("input", help="an image file or a folder of images")
    s.add_argument("--out", default="predictions", help="output folder")
    s.add_argument(
        "--recipe",
        help="ensemble recipe (default: submissions/recipe.json if it exists, else the model this project ships)",
    )
    s.add_argument("--checkpoint", help="one checkpoint instead of the recipe (threshold 0.5)")
    s.add_argument(
        "--pretrained",
        metavar="DIR_OR_HUB_ID",
        help="an exported model folder (make export) or a Hugging Face hub id; default when there is no recipe: "
        "the model this project ships (models/)",
    )
    s.add_argument(
        "--background",
        default=DEFAULT_BACKGROUND,
        help=f"composite onto an image file or a colour #rrggbb (default {DEFAULT_BACKGROUND}; none: no composite)",
    )
    s.add_argument("--feather", type=int, default=0, metavar="PX", help="soften the cut-out edge over PX pixels")
    s.add_argument("--device", default="auto")
    _add_inference_options(s)
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
    s.add_argument(
        "--pretrained", metavar="DIR_OR_HUB_ID", help="also score an exported model on every train image of --data"
    )
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
    s.add_argument("--strict", action="store_true", help="cars without exactly views 01..16 are an error")
    s.set_defaults(func=cmd_folds)

    s = sub.add_parser(
        "test-split",
        help="the cars kept out of everything a model's choices see -> folds/test_split.csv (folds/README.md)",
    )
    s.add_argument("--index", required=True, help="train-set index CSV (kaggle_train_index.csv)")
    s.add_argument("--cars", required=True, help="the usable cars: a text file of car ids, or a data root")
    s.add_argument(
        "--exclude", action="append", default=[], help="cars not to draw (a list or a data root), repeatable"
    )
    s.add_argument("--out", default="folds/test_split.csv")
    s.add_argument("--k", type=int, default=8, help="draw fold 0 of k stratified folds (8: 27 of 210 cars)")
    s.add_argument("--seed", type=int, default=42)
    s.set_defaults(func=cmd_test_split)

    s = sub.add_parser("train", help="train fold(s) of one model config, then predict its out-of-fold images")
    s.add_argument("--config", required=True, help="YAML config, e.g. configs/vgg11.yaml")
    s.add_argument(
        "--fold", default="0", help="fold number, comma list, 'all' (each fold), or 'full' (one model on every car)"
    )
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set train.lr=1e-4")
    s.add_argument("--data", help="override data_dir")
    s.add_argument("--folds-csv", help="override folds_csv")
    s.add_argument("--runs", help="override runs_dir")
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--fresh", action="store_true", help="start over instead of resuming from last.pt")
    _add_compile_option(s, "the training forward (= --set train.compile=true)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "smoke", help="a config at its real size through every stage on a few images: seconds, memory, batch sizes"
    )
    s.add_argument("--config", required=True, help="YAML config, e.g. configs/vgg11.yaml")
    s.add_argument("--data", default="data", help="Kaggle data root to take a handful of images from")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set train.batch_size=4")
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's)")
    s.add_argument("--workdir", help="run in this (empty) folder and keep it (default: a temporary folder)")
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.add_argument("--verbose", action="store_true", help="show the stages' own progress bars")
    s.set_defaults(func=cmd_smoke)

    s = sub.add_parser("ensemble", help="tune member weights and threshold on out-of-fold predictions")
    s.add_argument("--runs", default="runs")
    s.add_argument("--data", default="data")
    s.add_argument("--out", default="submissions/recipe.json")
    s.add_argument("--members", help="comma list of run names (default: every completed run)")
    s.add_argument("--steps", type=int, default=10, help="weight grid resolution (10 = steps of 0.1)")
    s.add_argument("--jobs", type=int, default=-1)
    s.add_argument(
        "--postprocess",
        default="auto",
        help="auto (try each candidate, keep the best only if it raises out-of-fold Dice by 1e-5), none, or steps a,b",
    )
    s.add_argument(
        "--allow-incomplete", action="store_true", help="tune even if a member lacks folds (on the images all cover)"
    )
    s.add_argument("--force", action="store_true", help="replace an --out file that is not a recipe")
    s.set_defaults(func=cmd_ensemble)

    s = sub.add_parser("evaluate", help="score predictions against the masks at full resolution (per image)")
    s.add_argument("--runs", help="score the out-of-fold maps of every completed run under this folder")
    s.add_argument("--members", help="with --runs: comma list of run names (default: all)")
    s.add_argument("--recipe", help="score the blend of an ensemble recipe (recipe.json) on out-of-fold maps")
    s.add_argument("--submission", help="score a submission .csv/.csv.gz (needs --masks)")
    s.add_argument("--pred-dir", help="score a folder of predicted mask PNGs (needs --masks)")
    s.add_argument("--masks", help="ground-truth folder of <stem>_mask.gif/.png, e.g. data/train_masks")
    s.add_argument(
        "--pretrained", metavar="DIR_OR_HUB_ID", help="score an exported model on every train image of --data"
    )
    s.add_argument("--device", default="auto", help="for --pretrained: auto | cpu | cuda | cuda:N")
    s.add_argument(
        "--test-split",
        metavar="CSV",
        help="with --pretrained: score only the cars of this test split (folds/test_split.csv), refused if the "
        "model's record says it trained or was tuned on one of them",
    )
    s.add_argument("--data", default="data", help="data root whose train_masks/ --runs and --recipe use")
    s.add_argument("--json", help="write the summary (one source: an object; several: {source: object})")
    s.add_argument("--per-image", help="write one CSV row per source and image")
    s.add_argument("--jobs", type=int, default=-1)
    s.add_argument("--force", action="store_true", help="replace a --json or --per-image file of another kind")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("submission", help="predict test images with the recipe -> Kaggle .csv.gz (resumable)")
    s.add_argument("--recipe", help="the ensemble recipe (default submissions/recipe.json)")
    s.add_argument(
        "--pretrained",
        metavar="DIR_OR_HUB_ID",
        help="an exported model folder or hub id instead of a recipe (writes recipe-pretrained-<its hash>.json "
        "beside --out, once)",
    )
    s.add_argument("--data", default="data")
    s.add_argument("--out", default="submissions/submission.csv.gz")
    s.add_argument("--device", default="auto")
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--num-workers", type=int, help="DataLoader workers (default: the members' predict.num_workers)")
    _add_inference_options(s)
    s.add_argument(
        "--force", action="store_true", help="redo a complete submission, or replace one made from another recipe"
    )
    s.add_argument("--limit", type=int, help="only the first N rows, to <out stem>.limit<N>-trial.csv.gz (a trial)")
    s.add_argument("--shard", metavar="I/N", help="compute only slice I of N (contiguous) into its own file; see merge")
    s.set_defaults(func=cmd_submission)

    s = sub.add_parser("merge", help="assemble the shard files of --out in sample order and validate the result")
    s.add_argument("--data", default="data")
    s.add_argument("--out", default="submissions/submission.csv.gz")
    s.add_argument("--recipe", help="also check that every shard was made with this recipe")
    s.add_argument("--shards-of", help="the --out the shards were computed with, when not --out itself")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("lineage", help="the chain behind a submission, recipe, checkpoint or folds CSV, checked")
    s.add_argument("file", help="submission .csv.gz (or shard), recipe.json, best.pt/last.pt, oof.json or folds CSV")
    s.set_defaults(func=cmd_lineage)

    s = sub.add_parser("validate", help="check a submission file against sample_submission.csv")
    s.add_argument("file")
    s.add_argument("--data", default="data")
    s.set_defaults(func=cmd_validate)

    add_user_stages(sub)

    # Errors: one line naming the file or option (errors.PipelineError); --debug (anywhere on the
    # command line) or PIPELINE_DEBUG=1 shows the full traceback instead.
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PIPELINE_DEBUG", "") not in ("", "0")
    args: list[str] = []
    for v in argv:  # `--shard -1/2` would read as an option: hand the value over as given
        if args and args[-1] == "--shard" and v.startswith("-"):
            args[-1] = f"--shard={v}"
        elif v != "--debug":
            args.append(v)
    a = p.parse_args(args)
    from .core.errors import PipelineError, user_message

    start = time.time()
    try:
        code = a.func(a)
    except (PipelineError, OSError) as e:  # OSError: a file the user named, a full or read-only disk
        if debug:
            raise
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):  # bars left open by the exception: end their line
            bar.close()
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    if code:  # a stage that reports a finding rather than failing (lineage: a broken link)
        return code
    print(f"[{a.stage}] done in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
