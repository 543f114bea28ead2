"""``make smoke MODEL=vgg11``: the real config at its real size through every stage, in minutes.

Before GPU-hours are spent: does this config, this data and this machine work, how fast, and in how
much memory? On a handful of real images, symlinked into a scratch folder (never ``runs/`` or
``submissions/``), it runs the config at its own resolution through every stage on whatever device
there is: 2 training steps (the first is a warm-up: workers, cuDNN autotuning, the allocator),
validation and out-of-fold prediction of 2 held-out images, the ensemble, a submission of 4 test
images and ``predict`` of 1. Training and inference batches default to 1 image (``--set
train.batch_size=4`` etc. to try others).

Per stage it prints seconds, peak memory and images/s; then the largest batch sizes that the
measured memory per image allows on this device. Peak memory is ``torch.cuda.max_memory_allocated``
on CUDA (reset per stage) and the peak RSS of this process on CPU (VmHWM, reset per stage through
``/proc/self/clear_refs``; DataLoader workers are separate processes and not counted).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.checks import check_device
from ..core.config import Config, load_config
from ..core.device import pick_device, resolve_channels_last, resolve_precision
from ..core.io_utils import write_json
from ..core.measure import GB, Meter
from ..data.folds import COLUMNS, scan_train
from ..data.layout import DataError, Layout, list_images, parse_name

HEADROOM = 0.9  # of the device's memory: what the batch-size estimates may fill (fragmentation, cuDNN workspaces)
TRAIN_IMAGES, VAL_IMAGES, TEST_IMAGES = 2, 2, 4


# -- a scratch dataset of a handful of real images ----------------------------------------------------------
@dataclass
class Scratch:
    data: Path
    folds_csv: Path
    test_images: list[Path]


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve())


def prepare(data: str | Path, root: Path, n_train: int) -> Scratch:
    """``root/data``: ``n_train`` views of one car to train on, 2 of another held out (fold 0), and 4 test
    images (the data's own, topped up with other train views), all symlinks; and its folds CSV."""
    layout = Layout(data)
    layout.require(layout.train_dir, layout.masks_dir)
    by_car: dict[str, list[str]] = {}
    for img in list_images(layout.train_dir):
        if layout.mask(img).is_file():
            by_car.setdefault(parse_name(img)[0], []).append(img)
    cars = sorted(by_car, key=lambda c: (-len(by_car[c]), c))
    if len(cars) < 2 or len(by_car[cars[0]]) < n_train or len(by_car[cars[1]]) < VAL_IMAGES:
        raise DataError(
            f"{layout.train_dir}: smoke needs two cars with masks, one with {n_train} views and one with "
            f"{VAL_IMAGES}; found {len(cars)} car(s)"
        )
    train, val = by_car[cars[0]][:n_train], by_car[cars[1]][:VAL_IMAGES]
    scratch = Layout(root / "data")
    for img in train + val:
        _link(layout.train_image(img), scratch.train_image(img))
        _link(layout.mask(img), scratch.mask(img))
    test = list_images(layout.test_dir)[:TEST_IMAGES] if layout.test_dir.is_dir() else []
    sources = [layout.test_dir / n for n in test]
    spare = [i for c in cars[2:] + cars[:2] for i in by_car[c] if i not in train + val and i not in test]
    sources += [layout.train_image(i) for i in spare[: TEST_IMAGES - len(sources)]]
    for src in sources:
        _link(src, scratch.test_dir / src.name)
    names = [p.name for p in sources]
    (scratch.root / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{n},1 1\n" for n in names))
    table = scan_train(scratch, n_jobs=1)  # checks the images and masks as `make folds` does
    table["fold"] = [0 if parse_name(i)[0] == cars[1] else 1 for i in table.img]
    folds_csv = root / "folds.csv"
    table[COLUMNS].to_csv(folds_csv, index=False)
    return Scratch(scratch.root, folds_csv, [scratch.test_dir / n for n in names])


# -- the stages -----------------------------------------------------------------------------------------
def _params_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _largest(capacity: int, fixed: int, per_item: float) -> int | None:
    """None when the memory per item is too small to measure (tiny sizes): no bound from it."""
    if per_item < 1024**2:
        return None
    return max(0, math.floor((capacity * HEADROOM - fixed) / per_item))


def run_smoke(
    config: str | Path,
    data: str | Path,
    overrides: list[str] | None = None,
    device: str | None = None,
    workdir: str | Path | None = None,
    quiet: bool = True,
) -> dict:
    """Every stage of ``config`` on a handful of images of ``data``; returns the figures (see module doc)."""
    from .ensemble import tune
    from .oof import predict_oof
    from .predict import run_predict
    from .submission import make_submission
    from .train import Trainer, check_train_config

    start = time.time()
    # Everything the user chose is checked before a scratch folder is made.
    cfg: Config = load_config(config, ["train.batch_size=1", "predict.batch_size=1", *(overrides or [])])
    if device is not None:
        check_device(device, "--device")
        cfg.device = device
    cfg = check_train_config(cfg)
    layout = Layout(data)
    layout.require(layout.train_dir, layout.masks_dir)
    dev = pick_device(cfg.device)
    t = cfg.train
    keep = workdir is not None
    if keep and Path(workdir).exists() and any(Path(workdir).iterdir()):
        raise DataError(f"--workdir {workdir}: not empty; smoke writes a scratch dataset and runs there")
    remove_stale_scratch()
    root = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    if not keep:  # whose it is, for the next smoke to clean up after a kill -9
        (root / SCRATCH_MARK).write_text(f"{os.getpid()}\n")
    try:
        scratch = prepare(data, root, max(TRAIN_IMAGES, t.batch_size))
        cfg.data_dir, cfg.folds_csv, cfg.runs_dir, cfg.fold = str(scratch.data), str(scratch.folds_csv), str(root), 0
        # 2 training steps as 2 epochs of 1 step (timed apart), validation after the second only.
        t.epochs, t.steps_per_epoch, t.val_every, t.early_stopping = 2, 1, 2, 0
        train_precision, infer_precision = resolve_precision(t.amp, dev), resolve_precision(cfg.predict.amp, dev)
        channels_last = resolve_channels_last(t.channels_last, dev)
        print(
            f"smoke {cfg.name} ({config}) at {cfg.image.height}x{cfg.image.width} on {dev}: training in "
            f"{train_precision}, inference in {infer_precision}, channels_last {channels_last}, batch "
            f"{t.batch_size} (train) / {cfg.predict.batch_size} (inference); scratch {root}",
            flush=True,
        )
        print(f"  {'stage':<30} {'seconds':>9} {'peak GB':>9} {'images':>7} {'img/s':>9}", flush=True)
        meter = Meter(dev, show=True)
        with meter.stage("build model"):
            trainer = Trainer(cfg, fresh=True, quiet=quiet)
        model_bytes, n_val = _params_bytes(trainer.model), len(trainer.val_ds)
        steps = []

        def probe(name: str):
            if name == "validate":
                return meter.stage(f"validate ({n_val} images)", images=n_val)
            steps.append(len(meter.stages))
            label = "train step 1 (warm-up)" if len(steps) == 1 else f"train step {len(steps)}"
            return meter.stage(label, images=t.batch_size)

        trainer.probe = probe
        trainer.fit()
        del trainer  # inference is measured without the training state
        with meter.stage(f"out-of-fold ({n_val} images)", images=n_val):
            oof = predict_oof(cfg, quiet=quiet)
        oof_stage = meter.stages[-1]
        recipe = root / "submissions" / "recipe.json"
        with meter.stage("ensemble"), contextlib.redirect_stdout(io.StringIO()):  # its "lacks fold 1" warning
            tune(root, scratch.data, recipe, steps=1, n_jobs=1, quiet=quiet, allow_incomplete=True)
        n_test = len(scratch.test_images)
        with meter.stage(f"submission ({n_test} images)", images=n_test):
            sub = make_submission(
                recipe, scratch.data, root / "submissions" / "submission.csv.gz", device=str(dev),
                batch_size=cfg.predict.batch_size, num_workers=cfg.predict.num_workers, quiet=quiet,
            )  # fmt: skip
        with meter.stage("predict (1 image)", images=1):
            run_predict(scratch.test_images[0], root / "predict", recipe=recipe, device=str(dev),
                        batch_size=cfg.predict.batch_size, quiet=quiet)  # fmt: skip

        # Memory per image, from the measured stages: training from the last step (its baseline holds
        # the model, gradients' and optimizer's state), inference from out-of-fold (the model loaded
        # inside the stage is taken out; every view of a batch goes through the model in one call).
        step = meter.stages[steps[-1]]
        train_per_image = (step["peak_gb"] - step["baseline_gb"]) * GB / t.batch_size
        train_fixed = step["baseline_gb"] * GB
        views = 1 + len([v for v in cfg.predict.tta if v != "none"])
        per_call = min(cfg.predict.batch_size, n_val)
        view_bytes = max(0.0, (oof_stage["peak_gb"] - oof_stage["baseline_gb"]) * GB - model_bytes) / (per_call * views)
        infer_fixed = oof_stage["baseline_gb"] * GB + 5 * model_bytes  # a member's 5 fold models resident
        memory = {
            "capacity_gb": round(meter.capacity / GB, 2),
            "capacity": meter.capacity_what,
            "headroom": HEADROOM,
            "peaks_reset_per_stage": meter.resettable,
            "model_gb": round(model_bytes / GB, 3),
            "train": {
                "per_image_gb": round(train_per_image / GB, 3),
                "fixed_gb": round(train_fixed / GB, 3),
                "max_batch": _largest(meter.capacity, train_fixed, train_per_image),
            },
            "inference": {
                "per_view_gb": round(view_bytes / GB, 3),
                "views_per_image": views,
                "fixed_gb": round(infer_fixed / GB, 3),
                "max_batch": _largest(meter.capacity, infer_fixed, view_bytes * views),
            },
        }
        result = {
            "config": str(config),
            "name": cfg.name,
            "device": str(dev),
            "size": f"{cfg.image.height}x{cfg.image.width}",
            "train_precision": train_precision,
            "inference_precision": infer_precision,
            "channels_last": channels_last,
            "train_batch_size": t.batch_size,
            "predict_batch_size": cfg.predict.batch_size,
            "stages": meter.stages,
            "memory": memory,
            "oof_dice": oof["mean_dice"],
            "submission_rows": sub["rows"],
            "seconds": round(time.time() - start, 1),
            "torch": torch.__version__,
        }
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    tm, im = memory["train"], memory["inference"]

    def batch(n):
        return "no bound (too little memory per image to measure at this size)" if n is None else f"{n} images"

    print(
        f"largest batch on this device ({memory['capacity']}, {HEADROOM:.0%} of it): "
        f"training {batch(tm['max_batch'])} ({tm['per_image_gb']:.2f} GB per image over {tm['fixed_gb']:.2f} GB), "
        f"inference {batch(im['max_batch'])} ({im['per_view_gb']:.2f} GB per view, {views} views per image, "
        f"over {im['fixed_gb']:.2f} GB with 5 fold models)"
        + ("" if meter.resettable else "; peaks are since the start (this kernel cannot reset them)")
    )
    print(f"smoke {cfg.name}: every stage ran in {result['seconds']:.0f} s")
    return result


SCRATCH_PREFIX, SCRATCH_MARK = "smoke-", ".smoke-scratch"


def remove_stale_scratch() -> list[Path]:
    """Scratch folders of earlier smoke runs that were killed (kill -9 runs no cleanup): each holds the
    pid of its run in its mark file; those whose process is gone are removed. Nothing else is touched."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(SCRATCH_PREFIX + "*"):
        mark = folder / SCRATCH_MARK
        try:
            if folder.is_symlink() or not mark.is_file():
                continue
            pid = int(mark.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # unwinds through the scratch folder's cleanup, as Ctrl-C does


def main_smoke(a) -> None:
    """``python -m pipeline smoke`` (see pipeline/__main__.py)."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    result = run_smoke(a.config, a.data, a.set, device=a.device, workdir=a.workdir, quiet=not a.verbose)
    if a.json:
        write_json(a.json, result)
        print(f"figures -> {a.json}")


def markdown(results: list[dict]) -> str:
    """The figures of several smoke runs as a Markdown table (for docs/record/full-resolution-memory.md)."""
    head = "| config | device | size | precision (train/infer) | stage | seconds | peak GB | img/s |"
    lines = [head, "|" + "---|" * 8]
    for r in results:
        for s in r["stages"]:
            img_s = f"{s['img_s']:.3f}" if s["img_s"] is not None else ""
            lines.append(
                f"| {r['name']} | {r['device']} | {r['size']} | {r['train_precision']}/{r['inference_precision']} "
                f"| {s['stage']} | {s['seconds']:.1f} | {s['peak_gb']:.2f} | {img_s} |"
            )
    lines += ["", "| config | memory per training image | largest training batch | per inference view | "
              "largest inference batch | device memory |", "|" + "---|" * 6]  # fmt: skip
    for r in results:
        m = r["memory"]
        lines.append(
            f"| {r['name']} | {m['train']['per_image_gb']:.2f} GB | {m['train']['max_batch']} | "
            f"{m['inference']['per_view_gb']:.2f} GB | {m['inference']['max_batch']} | {m['capacity']} |"
        )
    return "\n".join(lines) + "\n"
