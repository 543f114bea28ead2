"""Command line: ``python -m pipeline <stage> --help``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default, unless there is none worth showing (None, a switch that is
    off, an empty list) or the help already says it; the stage list keeps its layout."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or default == [] or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """The command line's parsers, the stages' included: every help shows the defaults (_HelpFormatter)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


class _Deprecated(argparse.Action):
    """An old spelling of an option: still accepted, with a one-line note naming the new one; not in the help."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_num_workers(s, default: int | None, help: str) -> None:
    """DataLoader workers: processes that read and decode the photos for the model (0: in this process).
    Spelled --num-workers as the configs' num_workers and PyTorch's DataLoader; --workers is the old spelling."""
    s.add_argument("--num-workers", type=int, default=default, metavar="N", help=help)
    s.add_argument("--workers", type=int, dest="num_workers", action=_Deprecated, new="--num-workers")


def _add_jobs(s) -> None:
    """Processes that score or search masks side by side (joblib): another concept than --num-workers."""
    s.add_argument(
        "--jobs", type=int, default=-1, metavar="N", help="processes scoring masks side by side (-1: all cores)"
    )


def _stage(sub, name: str, summary: str):
    """A stage's parser: ``summary`` heads its own help and its line in ``python -m pipeline --help``."""
    return sub.add_parser(name, description=summary)


# `python -m pipeline --help` lists the stages in the order of the work, in these groups. A stage not
# listed here shows under "other" (and tests/system/test_cli.py says where to list it).
STAGE_GROUPS = [
    ("get the data", ["download", "demo-data", "folds", "test-split"]),
    ("train and tune", ["train", "ensemble", "evaluate", "report"]),
    ("submit to Kaggle", ["submission", "merge", "validate", "submit"]),
    ("use the model", ["predict", "serve", "export", "quantize"]),
    ("check the pipeline", ["lineage", "smoke", "bench"]),
]


def _stage_list(sub) -> str:
    """The stages, grouped and in order, each with its summary (the main help's description)."""
    width = max(len(name) for name in sub.choices) + 2
    placed = [name for _, names in STAGE_GROUPS for name in names if name in sub.choices]
    groups = [*STAGE_GROUPS, ("other", sorted(set(sub.choices) - set(placed)))]
    lines = ["Carvana image masking pipeline. The stages, in the order of the work:"]
    for title, names in groups:
        names = [n for n in names if n in sub.choices]
        if names:
            lines += ["", f"{title}:"]
            lines += [f"  {n:<{width}}{sub.choices[n].description or ''}" for n in names]
    return "\n".join(lines)


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
    """The runtime asked for: its package installed; ONNX Runtime / OpenVINO on the CPU, without torch.compile
    (which is PyTorch's: ``--compile`` makes ``auto`` PyTorch). Precisions are checked where the runtime is
    chosen (``backends.resolve_runtime``)."""
    from .core.config import ConfigError
    from .inference.backends import check_backend

    check_backend(a.backend)
    if a.backend == "auto" and a.compile:
        a.backend = "torch"
    if a.backend in ("auto", "torch"):
        return
    if a.device not in ("cpu", "auto") or a.compile:
        raise ConfigError(f"--backend {a.backend}: runs on the CPU without --compile (--device cpu)")
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


def _add_runtime_options(s) -> None:
    """``--backend`` and ``--precision``: what runs the network (predict, submission, serve)."""
    s.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "torch", "onnxruntime", "openvino"),
        help="the network's runtime. auto: on a CPU, OpenVINO in the fastest precision this CPU and model have "
        "(int8 where the model folder has INT8 networks, `make quantize`; else bf16 where the CPU has bfloat16 "
        "instructions; else fp32), on a GPU PyTorch; torch; onnxruntime or openvino (CPU only). The run says at "
        "start which runtime and precision it uses",
    )
    s.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16", "int8"),
        help="inference precision for every member. Default: the fastest this runtime has within the masks' "
        "bound (PyTorch: each member's, as its out-of-fold maps were made); fp32 on a CPU: PyTorch fp32, exact; "
        "int8: OpenVINO's INT8 networks of a quantized model folder (`make quantize`)",
    )


def _add_inference_options(s) -> None:
    _add_runtime_options(s)
    s.add_argument("--no-amp", action="store_true", help="deprecated: --precision fp32")
    s.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="photos in flight at once on the CPU, one thread each (default: two per core this process may use, "
        "no more than the photos; 1: one photo at a time, its network on all the cores; PyTorch takes batches)",
    )
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


def cmd_test_split(a) -> None:
    from .data.folds import write_test_split

    test, usable = write_test_split(a.out, a.index, a.cars, a.exclude, k=a.k, seed=a.seed)
    print(
        f"{a.out}: {len(test)} test cars, fold 0 of {a.k} (seed {a.seed}) over the {usable} cars "
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

    # ranks wait while rank 0 predicts out-of-fold
    with distributed.process_group(cfg.device, timeout=timedelta(hours=2)) as (_, device):
        cfg.device = device
        folds = _folds_arg(a.fold)
        if folds is None:
            folds = sorted(set(load_folds(cfg.folds_csv).fold))
        for fold in folds:
            cfg.fold = fold
            run(cfg, fresh=a.fresh)


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
    from .core.checks import check_compile, check_device
    from .inference.recipe import Recipe
    from .masks.submission_csv import SubmissionError
    from .stages.merge import merge_shards
    from .stages.submission import make_submission
    from .stages.submission_files import parse_shard

    check_device(a.device, "--device")
    check_compile(a.compile, "--compile")
    _check_backend(a)
    _at_least("--batch-size", a.batch_size, 1)
    if a.num_workers is not None:
        _at_least("--num-workers", a.num_workers, 0)
    if a.limit is not None:
        _at_least("--limit", a.limit, 1)
    if a.jobs is not None:
        _at_least("--jobs", a.jobs, 1)
    if a.pretrained and a.recipe:
        raise SubmissionError("--recipe and --pretrained each name the model: give one of them")
    if a.pretrained:  # an exported model (make export, or the one shipped): a recipe of that one member
        from .stages.export import pretrained_recipe

        a.recipe = pretrained_recipe(a.pretrained, Path(a.out).parent)
        print(f"submission from the exported model {a.pretrained}: recipe {a.recipe}")
    a.recipe = a.recipe or "submissions/recipe.json"
    Recipe.load(a.recipe)  # the whole recipe checked before torchrun's ranks start

    # torchrun: every rank computes shard rank/world on its own GPU; rank 0 merges after a barrier.
    shard = parse_shard(a.shard) if a.shard else None
    if shard is not None and distributed.env_info().world > 1:
        raise SubmissionError("--shard and torchrun both split the test set; use one of them")
    # gloo for the barrier on any device; shards may finish hours apart.
    with distributed.process_group(a.device, timeout=timedelta(hours=48), backend="gloo") as (info, device):
        if info.world > 1:
            shard = (info.rank, info.world)
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
            jobs=a.jobs,
            profile=a.profile,
        )
        if info.world > 1:
            distributed.barrier()
            if info.is_main and not a.limit:
                merge_shards(a.data, a.out, recipe_path=a.recipe)


def cmd_merge(a) -> None:
    from .stages.merge import merge_shards

    merge_shards(a.data, a.out, recipe_path=a.recipe, shards_of=a.shards_of)


def cmd_evaluate(a) -> None:
    from .core.checks import check_device
    from .core.io_utils import atomic_path, write_json
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


# -- what users see: predict (cut-outs), report, Kaggle download/submit ------------------------------
def _check_jobs(jobs: int) -> None:
    """joblib's processes: -1 = all cores, n >= 1 (0 means nothing to joblib)."""
    from .core.config import ConfigError

    if jobs == 0 or jobs < -1:
        raise ConfigError(f"--jobs {jobs}: use -1 (all cores) or a number of processes >= 1")


def cmd_predict(a) -> None:
    from .core.checks import check_compile, check_device
    from .stages.predict import run_predict

    check_device(a.device, "--device")
    _at_least("--batch-size", a.batch_size, 1)
    check_compile(a.compile, "--compile")
    _check_backend(a)
    if a.jobs is not None:
        _at_least("--jobs", a.jobs, 1)
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
        jobs=a.jobs,
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


def cmd_bench(a) -> None:
    from .stages.bench import run_bench

    run_bench(a.data, a.out, a.images, a.num_workers, a.batch_size, a.size, a.rss, a.figures)


def cmd_export(a) -> None:
    from .stages.export import export_model

    out = a.out or f"models/{a.name or 'model'}"
    notes = {"figures": a.note} if a.note else None
    export_model(a.checkpoint, out, recipe=a.recipe, dtype=a.dtype, name=a.name, notes=notes, refiner=a.refiner)


def cmd_quantize(a) -> None:
    from .stages.quantize import quantize_folder

    quantize_folder(a.pretrained, a.data, photos=a.photos, max_drop=a.max_drop, force=a.force)


def cmd_serve(a) -> None:
    from .core.checks import check_device
    from .stages.serve import API_KEY_ENV, run_serve

    check_device(a.device, "--device")
    run_serve(
        pretrained=a.pretrained,
        host=a.host,
        port=a.port,
        api_key=a.api_key or os.environ.get(API_KEY_ENV) or None,
        max_upload_mb=a.max_upload_mb,
        max_megapixels=a.max_megapixels,
        queue=a.queue,
        cors_origins=a.cors_origin or (),
        device=a.device,
        backend=a.backend,
        precision=a.precision,
    )


def add_serve(sub) -> None:
    from .stages.serve import API_KEY_ENV, DEFAULT_HOST, DEFAULT_PORT, MAX_MEGAPIXELS, MAX_UPLOAD_MB, QUEUE

    s = _stage(
        sub,
        "serve",
        "cut-outs in a web page and over HTTP (make serve): the page at /, POST /api/remove, docs at /docs",
    )
    s.add_argument(
        "--pretrained",
        metavar="DIR_OR_HUB_ID",
        help="an exported model folder (make export) or a Hugging Face hub id (default: the model this project "
        "ships, models/carvana-unet-mobilenetv2)",
    )
    s.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="the address to listen on (default: %(default)s, this machine only; 0.0.0.0: every interface, "
        "with a warning: set an API key then)",
    )
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="the port (default: %(default)s; 0: a free one)")
    s.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"require this key in the header X-API-Key (or Authorization: Bearer) for /api/remove and /api/model "
        f"(default: the environment variable {API_KEY_ENV}, else none; the variable keeps it out of `ps`)",
    )
    s.add_argument(
        "--max-upload-mb",
        type=float,
        default=MAX_UPLOAD_MB,
        help="uploads above this get 413, read no further (default: %(default)s)",
    )
    s.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_MEGAPIXELS,
        help="photos whose header claims more pixels get 413 before decoding (default: %(default)s)",
    )
    s.add_argument(
        "--queue",
        type=int,
        default=QUEUE,
        help="photos that may wait behind the one being cut out; more get 503 with Retry-After (default: %(default)s)",
    )
    s.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="allow pages of this origin (https://example.com; repeatable) to call the API from a browser "
        "(default: none, no CORS headers)",
    )
    s.add_argument("--device", default="auto", help="the model's device (default: %(default)s)")
    _add_runtime_options(s)
    s.set_defaults(func=cmd_serve)


DEFAULT_BACKGROUND = "#3a6ea5"  # predict's composites, unless --background says otherwise (or none)


def add_user_stages(sub) -> None:
    s = _stage(
        sub, "export", "a trained model as one folder: smp's format (smp.from_pretrained), pipeline.json, model card"
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

    s = _stage(
        sub,
        "quantize",
        "an exported model's network in INT8 for OpenVINO on CPUs (NNCF), calibrated on its training photos",
    )
    s.add_argument("--pretrained", required=True, help="the exported model folder (written into, bound by hash)")
    s.add_argument(
        "--data", required=True, help="a Kaggle-layout root whose train/ holds photos of the cars it was trained on"
    )
    s.add_argument("--photos", type=int, default=120, help="calibration photos, of the cars it was trained on")
    s.add_argument(
        "--max-drop",
        type=float,
        default=0.0008,
        help="accuracy control: the Dice the worst tenth of the validation views' masks may lose against fp32's",
    )
    s.add_argument("--force", action="store_true", help="quantize again where the folder has INT8 networks")
    s.set_defaults(func=cmd_quantize)

    s = _stage(sub, "predict", "mask, transparent cut-out and composite for any image(s)")
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
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _add_inference_options(s)
    s.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    s.add_argument("--resume", action="store_true", help="skip images whose outputs all exist")
    s.set_defaults(func=cmd_predict)

    s = _stage(sub, "report", "static HTML report: curves, metrics, Dice histogram, worst images")
    s.add_argument("--runs", default="runs", help="the trained runs to report (<runs>/<name>/fold<k>/)")
    s.add_argument("--data", default="data", help="data root with the train photos and masks the runs were scored on")
    s.add_argument("--recipe", default="submissions/recipe.json", help="adds the blend (skipped if absent)")
    s.add_argument("--members", help="comma list of run names (default: every completed run)")
    s.add_argument("--out", default="reports", help="folder for index.html and its pictures")
    s.add_argument("--worst", type=int, default=6, help="how many of the worst images to show")
    s.add_argument(
        "--pretrained", metavar="DIR_OR_HUB_ID", help="also score an exported model on every train image of --data"
    )
    _add_jobs(s)
    s.set_defaults(func=cmd_report)

    s = _stage(sub, "download", "fetch and unpack the competition data with the Kaggle CLI")
    s.add_argument("--data", default="data", help="data root to fill (train/, train_masks/, test/, CSVs)")
    s.add_argument("--keep-zips", action="store_true", help="keep the downloaded zips in DATA/downloads/")
    s.set_defaults(func=cmd_download)

    s = _stage(sub, "submit", "validate a submission, then upload it with the Kaggle CLI")
    s.add_argument("file", nargs="?", default="submissions/submission.csv.gz", help="the submission to upload")
    s.add_argument("-m", "--message", required=True, help="the submission's description on Kaggle")
    s.add_argument("--data", default="data", help="data root with sample_submission.csv")
    s.set_defaults(func=cmd_submit)


def build_parser() -> argparse.ArgumentParser:
    """The command line: every stage's parser (no stage module is imported here)."""
    p = _Parser(
        prog="python -m pipeline", epilog="python -m pipeline STAGE --help: a stage's options, each with its default"
    )
    sub = p.add_subparsers(dest="stage", required=True, metavar="STAGE", help="one of the stages above")

    s = _stage(sub, "demo-data", "generate the synthetic demo dataset (Kaggle layout)")
    s.add_argument("--out", default="demo/data", help="data root to write (train/, train_masks/, test/, CSVs)")
    s.add_argument("--train-cars", type=int, default=10, help="cars with photos and masks, 16 views each")
    s.add_argument("--test-cars", type=int, default=2, help="cars with photos only, 16 views each")
    s.add_argument("--width", type=int, default=1918, help="photo width in pixels (Carvana's)")
    s.add_argument("--height", type=int, default=1280, help="photo height in pixels (Carvana's)")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed draws the same cars")
    s.set_defaults(func=cmd_demo_data)

    s = _stage(sub, "folds", "group k-fold by car, stratified by mask area -> folds CSV")
    s.add_argument("--data", default="data", help="Kaggle data root (train/, train_masks/, ...)")
    s.add_argument("--out", default="folds/folds.csv", help="the folds CSV to write")
    s.add_argument("--k", type=int, default=5, help="number of folds")
    s.add_argument("--seed", type=int, default=42, help="random seed of the assignment")
    s.add_argument("--index", help="train-set index CSV (img,car_id,view,mask_area,width,height) instead of --data")
    s.add_argument("--strict", action="store_true", help="cars without exactly views 01..16 are an error")
    s.set_defaults(func=cmd_folds)

    s = _stage(
        sub,
        "test-split",
        "the cars kept out of everything a model's choices see -> folds/test_split.csv (folds/README.md)",
    )
    s.add_argument("--index", required=True, help="train-set index CSV (kaggle_train_index.csv)")
    s.add_argument("--cars", required=True, help="the usable cars: a text file of car ids, or a data root")
    s.add_argument(
        "--exclude", action="append", default=[], help="cars not to draw (a list or a data root), repeatable"
    )
    s.add_argument("--out", default="folds/test_split.csv", help="the test split CSV to write")
    s.add_argument("--k", type=int, default=8, help="draw fold 0 of k stratified folds (8: 27 of 210 cars)")
    s.add_argument("--seed", type=int, default=42, help="random seed of the draw")
    s.set_defaults(func=cmd_test_split)

    s = _stage(sub, "train", "train fold(s) of one model config, then predict its out-of-fold images")
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

    s = _stage(
        sub, "smoke", "a config at its real size through every stage on a few images: seconds, memory, batch sizes"
    )
    s.add_argument("--config", required=True, help="YAML config, e.g. configs/vgg11.yaml")
    s.add_argument("--data", default="data", help="Kaggle data root to take a handful of images from")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set train.batch_size=4")
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's)")
    s.add_argument("--workdir", help="run in this (empty) folder and keep it (default: a temporary folder)")
    s.add_argument("--json", help="also write the figures to this JSON file")
    s.add_argument("--verbose", action="store_true", help="show the stages' own progress bars")
    s.set_defaults(func=cmd_smoke)

    s = _stage(sub, "ensemble", "tune member weights and threshold on out-of-fold predictions")
    s.add_argument("--runs", default="runs", help="the trained runs (<runs>/<name>/fold<k>/): each name is a member")
    s.add_argument("--data", default="data", help="data root whose train_masks/ score the out-of-fold maps")
    s.add_argument("--out", default="submissions/recipe.json", help="the recipe to write")
    s.add_argument("--members", help="comma list of run names (default: every completed run)")
    s.add_argument("--steps", type=int, default=10, help="weight grid resolution (10 = steps of 0.1)")
    _add_jobs(s)
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

    s = _stage(sub, "evaluate", "score predictions against the masks at full resolution (per image)")
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
    _add_jobs(s)
    s.add_argument("--force", action="store_true", help="replace a --json or --per-image file of another kind")
    s.set_defaults(func=cmd_evaluate)

    s = _stage(sub, "submission", "predict test images with the recipe -> Kaggle .csv.gz (resumable)")
    s.add_argument("--recipe", help="the ensemble recipe (default submissions/recipe.json)")
    s.add_argument(
        "--pretrained",
        metavar="DIR_OR_HUB_ID",
        help="an exported model folder or hub id instead of a recipe (writes recipe-pretrained-<its hash>.json "
        "beside --out, once)",
    )
    s.add_argument("--data", default="data", help="data root with test/ and sample_submission.csv")
    s.add_argument("--out", default="submissions/submission.csv.gz", help="the submission to write")
    s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    _add_num_workers(s, None, "DataLoader workers decoding the test photos (default: the members' predict.num_workers)")
    _add_inference_options(s)
    s.add_argument(
        "--force", action="store_true", help="redo a complete submission, or replace one made from another recipe"
    )
    s.add_argument("--limit", type=int, help="only the first N rows, to <out stem>.limit<N>-trial.csv.gz (a trial)")
    s.add_argument(
        "--profile",
        action="store_true",
        help="at the end, print where the time went: each step's milliseconds per photo on its thread",
    )
    s.add_argument("--shard", metavar="I/N", help="compute only slice I of N (contiguous) into its own file; see merge")
    s.set_defaults(func=cmd_submission)

    s = _stage(sub, "merge", "assemble the shard files of --out in sample order and validate the result")
    s.add_argument("--data", default="data", help="data root with sample_submission.csv")
    s.add_argument("--out", default="submissions/submission.csv.gz", help="the submission to write from its shards")
    s.add_argument("--recipe", help="also check that every shard was made with this recipe")
    s.add_argument("--shards-of", help="the --out the shards were computed with, when not --out itself")
    s.set_defaults(func=cmd_merge)

    s = _stage(sub, "lineage", "the chain behind a submission, recipe, checkpoint or folds CSV, checked")
    s.add_argument("file", help="submission .csv.gz (or shard), recipe.json, best.pt/last.pt, oof.json or folds CSV")
    s.set_defaults(func=cmd_lineage)

    s = _stage(sub, "validate", "check a submission file against sample_submission.csv")
    s.add_argument("file", help="the submission .csv or .csv.gz to check")
    s.add_argument("--data", default="data", help="data root with sample_submission.csv and test/")
    s.set_defaults(func=cmd_validate)

    add_user_stages(sub)
    add_serve(sub)

    s = _stage(sub, "bench", "speed and memory figures of the submission, with targets -> bench.json")
    s.add_argument(
        "--data",
        default="../shared/data/carvana_real",
        help="a Kaggle-layout root: real masks for figure 1 and real photos for figures 2 and 4 (generated "
        "ones where it has none)",
    )
    s.add_argument("--out", default="bench.json", help="the figures as JSON, rewritten after each one")
    s.add_argument(
        "--images", type=int, default=96, help="test images for figure 2 (figure 4: half as many, at least 32)"
    )
    _add_num_workers(s, 2, "DataLoader workers of figure 2 (figure 4 uses at least 8)")
    s.add_argument("--batch-size", type=int, default=4, help="images per forward pass in figures 2 and 4")
    s.add_argument("--size", default="1280x1918", help="model input HxW for figure 2 (the configs' resolution)")
    s.add_argument("--rss", default="1000,5000", help="the two test-set sizes of figure 3")
    s.add_argument("--figures", default="1,2,3,4", help="which figures to measure, e.g. 1,2")
    s.set_defaults(func=cmd_bench)

    # Errors: one line naming the file or option (errors.PipelineError); --debug (anywhere on the
    # command line) or PIPELINE_DEBUG=1 shows the full traceback instead.
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.description = _stage_list(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
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
