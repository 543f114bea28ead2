"""Train one fold of one model: the training loop, its checkpoints and resume.

Outputs in ``<runs_dir>/<name>/fold<k>/``: ``config.yaml`` (resolved), ``history.csv`` (one row
per epoch), ``last.pt`` (full state: model, optimizer, scheduler, scaler, epoch, RNG, history)
and ``best.pt`` (best validation Dice); then ``run`` writes the out-of-fold maps (pipeline/stages/oof.py).
Re-running the same command resumes from ``last.pt``; a second training of the same fold at the
same time stops and names the holder (``fold<k>.lock`` beside the folder).

Every checkpoint records the split it was trained on and the code (pipeline/lineage/provenance.py):
resuming against a changed folds CSV is refused, since the held-out cars would leak into
training, and ``oof.json`` is removed as soon as training goes on, so a fold is only ever marked
complete by the model it claims.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, RandomSampler, Subset
from tqdm import tqdm

from ..core import distributed
from ..core.checks import check_compile, check_device, check_fold
from ..core.config import SPEED_SETTINGS, Config, ConfigError, config_from_dict, run_name_problem
from ..core.device import autocast, pick_device, resolve_channels_last, resolve_precision, use_device
from ..core.distributed import RankSampler
from ..core.errors import CheckpointError, DataError, ResumeError, TrainingError
from ..core.identity import code_version, file_sha256
from ..core.io_utils import (
    RELATIVE_TO_FILE,
    OutputLock,
    atomic_path,
    check_writable,
    stored_path,
    write_json,
    write_text,
)
from ..core.measure import machine
from ..data.augment import train_transform
from ..data.datasets import SegmentationDataset
from ..data.folds import load_folds, load_test_split, split_fold
from ..data.layout import Layout
from ..inference.tta import TTAS
from ..lineage.provenance import check_same_folds, checkpoint_lineage, folds_fingerprint
from ..lineage.runs import FINAL, FULL_SUMMARY, clear_fold_outputs, cross_validation
from ..masks.metrics import dice_batch
from ..models.losses import get_loss
from ..models.unet import build_model, read_checkpoint, resolve_model_config
from .oof import predict_oof

# Config sections that must not change when resuming a run.
# What may differ when a run is resumed or re-run: where things are and how fast they go. Every other
# setting made the checkpoint (or, for predict.*, its out-of-fold maps, which are re-predicted when
# they differ): changing one on resume would leave a record that describes a model it did not make.
_FREE_ON_RESUME = {
    *SPEED_SETTINGS,
    "device", "data_dir", "folds_csv", "runs_dir", "test_split",  # the split's content is checked by its hash
    "train.channels_last", "predict.tta", "predict.amp",
    "train.amp",  # the device may change on resume (a CPU run goes on on a GPU), and 'auto' follows it
}  # fmt: skip


def check_train_config(cfg: Config) -> Config:
    """Every name in a training config (pipeline/core/checks.py checks its device and compile settings);
    returns it with the model section resolved (see models)."""
    problem = run_name_problem(cfg.name)
    if problem:  # the name becomes <runs_dir>/<name>/: never a path of its own
        raise ConfigError(f"name: {problem}")
    t = cfg.train
    choices = {
        "train.optimizer": (t.optimizer, ("adam", "adamw")),
        "train.scheduler": (t.scheduler, ("cosine", "constant")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: not one of {', '.join(allowed)}")
    try:
        get_loss(t.loss)
    except ValueError as e:
        raise ConfigError(f"train.loss={t.loss!r}: {e}") from None
    unknown = [n for n in cfg.predict.tta if n not in TTAS and n != "none"]
    if unknown:
        raise ConfigError(f"predict.tta={cfg.predict.tta}: unknown {unknown}; available: {sorted(TTAS)} (or [])")
    if not 0 <= t.ema < 1:
        raise ConfigError(f"train.ema={t.ema!r}: the decay of the weights' moving average is in [0, 1) (0: off)")
    if t.progressive_epochs and (len(t.progressive_size) != 2 or min(t.progressive_size) < 32):
        raise ConfigError(f"train.progressive_size={t.progressive_size!r}: [height, width], each at least 32")
    check_compile(t.compile, "train.compile")
    check_device(cfg.device)
    cfg.model = resolve_model_config(cfg.model)
    return cfg


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Training steps between two looks at the loss on the host (progress bar, non-finite check): a look
# waits for the device, so doing it every step would stall the GPU's queue of work each time.
LOSS_SYNC_EVERY = 20


def _check_finite(value: float, what: str, run_dir: Path, epoch: int) -> None:
    if not math.isfinite(value):
        kept = f"last.pt and best.pt keep the last good state (epoch {epoch})" if epoch else "no checkpoint written"
        raise TrainingError(
            f"{run_dir}: {what} is {value} in epoch {epoch + 1}; stopped, {kept}. "
            "Lower train.lr, try train.amp=off, or check the data."
        )


def _read_last(path: Path) -> dict:
    try:
        return read_checkpoint(path, "last.pt")
    except CheckpointError as e:
        raise CheckpointError(
            f"{e}. Ways out: --fresh starts this fold over (deleting its outputs); best.pt beside it keeps the best "
            "model so far (copy it aside first if you want it; training cannot resume from it)"
        ) from None


def _numpy_rng_state() -> dict:
    """NumPy's RNG state as tensors and numbers: checkpoints load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": [has_gauss, gauss]}


def _set_numpy_rng_state(state) -> None:
    if isinstance(state, dict):
        keys = state["keys"].numpy().astype(np.uint32)
        np.random.set_state((state["kind"], keys, state["pos"], *state["gauss"]))
    else:  # checkpoints written before: numpy's own tuple
        np.random.set_state(state)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    # Each worker gets its own augmentation stream, derived from the loader's seeded generator,
    # so an epoch's augmentations depend only on (seed, epoch): resume continues identically.
    info = torch.utils.data.get_worker_info()
    s = torch.initial_seed() % 2**31
    np.random.seed(s)
    random.seed(s)
    if info is not None and info.dataset.transform is not None:
        info.dataset.transform.set_random_seed(s)


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    raise ValueError(f"unknown optimizer {t.optimizer!r}; use adam or adamw")


def make_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    warmup = int(t.warmup_epochs * steps_per_epoch)
    if t.scheduler not in ("cosine", "constant"):
        raise ValueError(f"unknown scheduler {t.scheduler!r}; use cosine or constant")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if t.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _restore_cuda_rng(state, device: torch.device) -> None:
    """The CUDA RNG state of the training device (a tensor). Checkpoints written before held one state
    per visible GPU (a list), which fails to restore wherever the number of GPUs differs: the state
    of this device's index is taken from it, or the last one."""
    if state is None or device.type != "cuda":
        return
    if isinstance(state, (list, tuple)):
        if not state:
            return
        index = device.index if device.index is not None else torch.cuda.current_device()
        state = state[min(index, len(state) - 1)]
    torch.cuda.set_rng_state(state, device)


def _save(path: Path, state: dict) -> None:
    if not distributed.is_main():  # DDP: only rank 0 writes the run's files
        return
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch's writer reports a short write (full disk) with no errno
            free = shutil.disk_usage(tmp.parent).free
            raise DataError(
                f"{path}: cannot write the checkpoint ({str(e).strip().splitlines()[0]}; {free / 1e6:.0f} MB "
                "free there); free some space or point runs_dir elsewhere. The checkpoints written before are "
                "kept: the same command resumes from the last one"
            ) from None


class Trainer:
    """One fold of one model (or ``fold: full``), built in the order the steps below are named: the
    split, the run folder (resume or fresh), the model, the optimisation, the data, the wrappers."""

    def __init__(self, cfg: Config, fresh: bool = False, quiet: bool = False):
        cfg = check_train_config(cfg)  # every name, before anything in the run dir is touched
        self.cfg = cfg
        self.quiet = quiet
        self.run_dir = cfg.run_dir
        self._set_up_device()
        self._split_cars()
        resume = self._prepare_run_folder(fresh)
        seed_everything(cfg.seed)  # the random init of the decoder (and encoder without weights)
        self._build_model(resume)
        self._build_optimisation()
        self._restore_or_start(resume)
        self._build_datasets()
        self._wrap_for_training()

    def _set_up_device(self) -> None:
        self.device = pick_device(self.cfg.device)
        use_device(self.device)
        if self.device.type == "cuda":
            # Fixed input size: cuDNN picks the fastest convolution algorithms once, from the first fold on.
            torch.backends.cudnn.benchmark = True

    def _split_cars(self) -> None:
        """train_df and val_df from the folds CSV: the held-out fold's cars are validated, never trained on."""
        cfg = self.cfg
        self.layout = Layout(cfg.data_dir)
        folds = load_folds(cfg.folds_csv)
        check_fold(cfg, sorted(set(folds.fold)))
        test_cars = load_test_split(cfg.test_split) if cfg.test_split else frozenset()
        self.folds_id = folds_fingerprint(folds, cfg.fold, test_cars)
        # fold "full": every car trains, none is held out (so no validation and no out-of-fold maps).
        self.train_df, self.val_df = split_fold(folds, cfg.fold, test_cars)
        if self.train_df.empty or (not cfg.full and self.val_df.empty):
            empty = "training" if self.train_df.empty else f"fold {cfg.fold}'s validation"
            raise DataError(
                f"{cfg.test_split}: holds every car of {empty} in {cfg.folds_csv}, which would leave it empty "
                "(no score, no checkpoint); use a test split that leaves cars in every fold, or other folds"
            )
        tested = folds.car_id.isin(test_cars)
        if tested.any() and not self.quiet and distributed.is_main():
            n_cars = folds.car_id[tested].nunique()
            print(f"test split {cfg.test_split}: {int(tested.sum())} images of {n_cars} cars kept out of training")

    def _prepare_run_folder(self, fresh: bool) -> bool:
        """Whether the run resumes from last.pt (checked to be the same run); writes config.yaml."""
        check_writable(self.run_dir, "run folder")
        distributed.barrier()  # DDP: every rank sees what rank 0 finished writing before deciding to resume
        resume = (self.run_dir / "last.pt").exists() and not fresh
        if resume:
            self._check_resumable()
        elif fresh and distributed.is_main():
            clear_fold_outputs(self.run_dir)
        if distributed.is_main():
            write_text(self.run_dir / "config.yaml", self.cfg.to_yaml())
        return resume

    def _build_model(self, resume: bool) -> None:
        cfg = self.cfg
        if resume:  # weights come from the checkpoint: do not fetch the encoder again
            self.model = build_model(dataclasses.replace(cfg.model, encoder_weights="none"))
        else:
            self.model = build_model(cfg.model)
        self.model.to(self.device)  # parameters stay fp32 in every precision: autocast casts per operation
        self.precision = resolve_precision(cfg.train.amp, self.device)
        self.channels_last = resolve_channels_last(cfg.train.channels_last, self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.loss_fn = get_loss(cfg.train.loss).to(self.device)
        # A measurement hook around each training epoch and validation: ``probe(name)`` returns a
        # context manager (pipeline/stages/smoke.py times them and reads their peak memory).
        self.probe = lambda name: contextlib.nullcontext()

    def _build_optimisation(self) -> None:
        """Optimizer, schedule, loss scaling and the weights' moving average."""
        cfg, t = self.cfg, self.cfg.train
        self.dist = distributed.current()  # DDP under torchrun; rank 0 of 1 otherwise
        # An epoch is one pass over the training images by all ranks together (batch_size per rank).
        self.steps_per_epoch = t.steps_per_epoch or max(1, len(self.train_df) // (t.batch_size * self.dist.world))
        self.optimizer = make_optimizer(cfg, self.model)
        self.scheduler = make_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        # fp16's narrow range needs loss scaling (bf16 has fp32's range); torch has a GradScaler per device type.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        # The weights' moving average (train.ema): what validation, best.pt and out-of-fold use. Its
        # decay warms up (1 - (1 + step)^-3/4, capped at train.ema), so short runs average over fewer steps.
        self.ema = ModelEmaV3(self.model, decay=t.ema, use_warmup=True, warmup_power=0.75) if t.ema else None

    def _restore_or_start(self, resume: bool) -> None:
        """Epoch 0, or everything last.pt holds (weights, optimizer, schedule, RNG states, history)."""
        self.epoch = 0
        self.best = -1.0
        self.bad_epochs = 0
        self.finished = False
        self.history: list[dict] = []
        if resume:
            self._load(self.run_dir / "last.pt")
        if not self.finished:  # training goes on: the fold is not complete until predict_oof says so
            for mark in ("oof.json", FULL_SUMMARY):
                (self.run_dir / mark).unlink(missing_ok=True)

    def _build_datasets(self) -> None:
        t = self.cfg.train
        self.transform = train_transform(self.cfg.augment, seed=self.cfg.seed)
        h, w = self.cfg.image.height, self.cfg.image.width
        self.train_ds = SegmentationDataset(
            [self.layout.train_image(i) for i in self.train_df.img],
            [self.layout.mask(i) for i in self.train_df.img],
            h,
            w,
            transform=self.transform,
            cache=t.cache_images,
        )
        # Progressive resizing: the same images and augmentation at the smaller size, first epochs only.
        self.small_ds = None
        if t.progressive_epochs:
            self.small_ds = SegmentationDataset(
                self.train_ds.images,
                self.train_ds.masks,
                *t.progressive_size,
                transform=self.transform,
                cache=t.cache_images,
            )
        self.val_ds = SegmentationDataset(  # empty for a full run
            [self.layout.train_image(i) for i in self.val_df.img],
            [self.layout.mask(i) for i in self.val_df.img],
            h,
            w,
            transform=None,
            cache=t.cache_images,
        )

    def _wrap_for_training(self) -> None:
        t = self.cfg.train
        # DDP: a wrapper for the training forward/backward (gradients averaged over ranks); self.model
        # stays the plain module for checkpoints, validation and out-of-fold prediction.
        self.ddp = None
        if self.dist.world > 1:
            ids = [self.device] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.train_model = self.ddp if self.ddp is not None else self.model  # what the steps run (compiled if asked)
        if t.compile:
            backend = "inductor" if t.compile is True else t.compile
            self.train_model = torch.compile(self.train_model, backend=backend)
        self._val_loader: DataLoader | None = None

    # -- checkpoints -------------------------------------------------------------------------
    def _check_resumable(self) -> None:
        ckpt = _read_last(self.run_dir / "last.pt")
        check_same_folds(ckpt.get("folds"), self.folds_id, self.run_dir / "last.pt", self.cfg.folds_csv, "resume")
        old, new = _flat(config_from_dict(ckpt["config"]).to_dict()), _flat(self.cfg.to_dict())
        changed = sorted(k for k in old.keys() | new.keys() if k not in _FREE_ON_RESUME and old.get(k) != new.get(k))
        if changed:
            shown = ", ".join(f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in changed[:3])
            raise ResumeError(
                f"{self.run_dir / 'last.pt'}: the existing run was trained with {shown}"
                f"{f' and {len(changed) - 3} more' if len(changed) > 3 else ''}; resuming or re-running it so would "
                "leave a record of a model it did not make. Use another name, or --fresh to start this run over."
            )

    def _model_state(self) -> dict:
        """best.pt (or a full run's final.pt): the config, the model to predict with, and its lineage."""
        return {
            "config": self.cfg.to_dict(),
            "model": self.eval_model.state_dict(),
            "epoch": self.epoch,
            "folds": self.folds_id,
            "lineage": checkpoint_lineage(self.cfg.folds_csv, self.run_dir / "best.pt"),
        }

    def _state(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "finished": self.finished,
            "history": self.history,
            "folds": self.folds_id,
            "lineage": checkpoint_lineage(self.cfg.folds_csv, self.run_dir / "best.pt"),
            "rng": {
                "python": random.getstate(),
                "numpy": _numpy_rng_state(),
                "torch": torch.get_rng_state(),
                # The training device's only: a list per visible GPU would not restore on another host.
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            },
        }

    def _load(self, path: Path) -> None:
        ckpt = _read_last(path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:  # empty: saved by a disabled scaler (bf16/fp32); resumed in fp16, scaling starts anew
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:  # a run that had no average yet (ema turned on at resume) starts it from here
            self.ema.module.load_state_dict(ckpt.get("ema") or self.model.state_dict())
        self.epoch, self.best, self.bad_epochs = ckpt["epoch"], ckpt["best"], ckpt["bad_epochs"]
        self.finished, self.history = ckpt["finished"], ckpt["history"]
        rng = ckpt["rng"]
        random.setstate(rng["python"])
        _set_numpy_rng_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        _restore_cuda_rng(rng["cuda"], self.device)
        best = "" if self.cfg.full else f" (best val Dice {self.best:.5f})"  # a full run never validates
        self._log(f"resumed {path} at epoch {self.epoch}{best}")

    # -- loop ----------------------------------------------------------------------------------
    @property
    def _bars_off(self) -> bool:
        return self.quiet or not self.dist.is_main  # DDP: rank 0 alone shows progress

    def _log(self, msg: str) -> None:
        if not self._bars_off:
            tqdm.write(f"[{self.cfg.name}/{self.run_dir.name}] {msg}")

    def _train_loader(self) -> DataLoader:
        t = self.cfg.train
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.epoch)
        small = self.small_ds is not None and self.epoch < t.progressive_epochs
        dataset = self.small_ds if small else self.train_ds
        sampler = RandomSampler(dataset, num_samples=self.steps_per_epoch * t.batch_size, generator=g)
        if self.dist.world > 1:  # DDP: this rank's share of the epoch; its own augmentation streams
            seed, r = self.cfg.seed * 1000 + self.epoch, self.dist.rank
            sampler = RankSampler(len(self.train_ds), self.steps_per_epoch * t.batch_size, seed, r, self.dist.world)
            g = torch.Generator().manual_seed(seed + 1_000_003 * r)
            self.transform.set_random_seed(seed + 1_000_003 * r)
        return DataLoader(
            dataset,
            batch_size=t.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=t.num_workers,
            worker_init_fn=_worker_init,
            generator=g,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _forward(
        self, batch: dict, model: torch.nn.Module | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, target, input) of a batch, under AMP and channels_last where configured."""
        x = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if model is None:
            model = self.train_model if torch.is_grad_enabled() else self.model
        with autocast(self.device, self.precision):
            logits = model(x)
        return logits, batch["mask"].to(self.device, non_blocking=True), x

    def train_epoch(self) -> float:
        t = self.cfg.train
        seed = self.cfg.seed * 1000 + self.epoch
        seed_everything(seed)
        self.transform.set_random_seed(seed)  # used when num_workers == 0
        self.model.train()
        losses: list[torch.Tensor] = []  # on the device: read on the host every LOSS_SYNC_EVERY steps only
        bar = tqdm(
            self._train_loader(),
            total=self.steps_per_epoch,
            desc=f"epoch {self.epoch + 1}/{t.epochs}",
            leave=False,
            disable=self._bars_off,
        )
        for batch in bar:
            logits, y, x = self._forward(batch)
            loss = self.loss_fn(logits, y, x)  # fp32 (the losses cast)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model, step=self.scheduler.last_epoch)
            losses.append(loss.detach())
            if len(losses) % LOSS_SYNC_EVERY == 0:
                recent = torch.stack(losses[-LOSS_SYNC_EVERY:]).mean().item()
                _check_finite(recent, "the training loss", self.run_dir, self.epoch)
                bar.set_postfix(loss=f"{recent:.4f}")
        if not losses:
            return float("nan")
        mean = torch.stack(losses).double().mean().item()
        _check_finite(mean, "the training loss", self.run_dir, self.epoch)
        return mean

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is validated, saved as best.pt and predicted with: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def validate(self, model: torch.nn.Module | None = None) -> tuple[float, float, float]:
        """Mean loss, Dice and IoU (threshold 0.5, per image) on the held-out cars, at training resolution."""
        model = model or self.eval_model
        model.eval()
        t = self.cfg.train
        val_ds = (
            self.val_ds
            if self.dist.world == 1
            else Subset(self.val_ds, range(self.dist.rank, len(self.val_ds), self.dist.world))
        )
        if self._val_loader is None:  # one loader for the whole run: its workers stay up between epochs
            self._val_loader = DataLoader(
                val_ds,
                batch_size=t.batch_size,
                shuffle=False,
                num_workers=t.num_workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=t.num_workers > 0,
            )
        losses, dices = [], []  # kept on the device, read on the host once after the loop
        for batch in tqdm(self._val_loader, desc="validate", leave=False, disable=self._bars_off):
            logits, y, x = self._forward(batch, model)
            losses.append(self.loss_fn(logits, y, x).detach().double() * len(y))
            dices.append(dice_batch(logits.float() > 0, y > 0.5))
        n = len(self.val_ds)
        loss_sum = torch.stack(losses).sum().item() if losses else 0.0
        _check_finite(loss_sum, "the validation loss", self.run_dir, self.epoch - 1)
        d = torch.cat(dices).cpu() if dices else torch.zeros(0, dtype=torch.float64)
        # Per image IoU = Dice / (2 - Dice) exactly (both are 1 when prediction and truth are empty).
        iou = d / (2 - d)
        if self.dist.world > 1:  # DDP: each rank validated every world-th image; sum over ranks
            loss_sum, dice_sum, iou_sum, n = distributed.all_reduce_sum(
                [loss_sum, float(d.sum()), float(iou.sum()), len(d)], self.device
            )
            return loss_sum / n, dice_sum / n, iou_sum / n
        return loss_sum / n, float(d.mean()), float(iou.mean())

    def fit(self) -> None:
        t = self.cfg.train
        while not self.finished and self.epoch < t.epochs:
            start = time.time()
            with self.probe("train"):
                train_loss = self.train_epoch()
            if self.dist.world > 1:  # DDP: every rank ran the same number of steps; mean of the means
                train_loss = distributed.all_reduce_sum([train_loss], self.device)[0] / self.dist.world
                distributed.broadcast_buffers(self.model)  # validate and save rank 0's BatchNorm statistics
            self.epoch += 1
            row = {
                "epoch": self.epoch,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": train_loss,
                "val_loss": float("nan"),
                "val_dice": float("nan"),
                "val_iou": float("nan"),
            }
            if not self.cfg.full and (self.epoch % t.val_every == 0 or self.epoch == t.epochs):
                with self.probe("validate"):
                    row["val_loss"], row["val_dice"], row["val_iou"] = self.validate()
                    if self.ema is not None and self.epoch == t.epochs:  # the average's gain, on record
                        row["val_dice_raw"] = self.validate(self.model)[1]
                if row["val_dice"] > self.best:
                    self.best, self.bad_epochs = row["val_dice"], 0
                    _save(self.run_dir / "best.pt", {**self._model_state(), "val_dice": self.best})
                else:
                    self.bad_epochs += 1
            row["seconds"] = round(time.time() - start, 2)
            row["best_val_dice"] = self.best
            self.history.append(row)
            if self.epoch >= t.epochs or (t.early_stopping and self.bad_epochs >= t.early_stopping):
                self.finished = True
            if self.finished and self.cfg.full:  # no validation to pick a best epoch: the model is the last one
                _save(self.run_dir / FINAL, self._model_state())
            _save(self.run_dir / "last.pt", self._state())
            self._write_history()
            self._tensorboard(row)
            self._log(
                f"epoch {self.epoch}: train_loss {train_loss:.4f} val_loss {row['val_loss']:.4f} "
                f"val_dice {row['val_dice']:.5f} ({row['seconds']:.0f}s)"
            )
            if self.finished and self.epoch < t.epochs:
                self._log(f"early stop: no improvement for {self.bad_epochs} epochs")

    def _tensorboard(self, row: dict) -> None:
        """Mirror the epoch's history row to TensorBoard (``train.tensorboard``) in ``<run_dir>/tb/``."""
        if not self.cfg.train.tensorboard:
            return
        if getattr(self, "_tb", None) is None:
            try:  # lazy: tensorboard is only needed when asked for
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError(f"train.tensorboard: true needs the tensorboard package ({e})") from None
            # purge_step drops what a killed run logged after its last checkpoint: resumed curves stay clean.
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=row["epoch"])
        tags = {"train_loss": "train/loss", "val_loss": "val/loss", "val_dice": "val/dice", "val_iou": "val/iou"}
        for key, tag in {"lr": "lr", **tags}.items():
            if not math.isnan(row[key]):
                self._tb.add_scalar(tag, row[key], row["epoch"])
        self._tb.flush()

    def _write_history(self) -> None:
        if not self.dist.is_main:
            return
        with atomic_path(self.run_dir / "history.csv") as tmp:
            pd.DataFrame(self.history).to_csv(tmp, index=False)


def _command() -> str:
    """The command line this process runs, as a user would type it (for records)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv = ["python", "-m", "pipeline", *argv[1:]]
    return shlex.join(argv)


def finish_full(trainer: Trainer) -> dict:
    """A full run's record, ``full.json`` (written last: the run is complete): final.pt by content, the
    split it was trained on (every car), the time it took and where, and the out-of-fold figures of the
    folds of the same config and split beside it, which are what stand for it."""
    cfg, run_dir = trainer.cfg, trainer.run_dir
    folds = trainer.train_df
    summary = {
        "name": cfg.name,
        "fold": cfg.fold,
        "checkpoint": FINAL,
        "checkpoint_sha256": file_sha256(run_dir / FINAL),
        "epochs": trainer.epoch,
        "trained_on": {
            "all_cars": True,
            "n_images": len(folds),
            "n_cars": int(folds.car_id.nunique()),
            "folds_csv": stored_path(cfg.folds_csv, run_dir / FULL_SUMMARY),
            "folds": {k: trainer.folds_id[k] for k in ("folds_sha", "fold_sha", "k")},
            # Which cars it saw, and the test split it never saw: what a test-split score checks.
            "cars": sorted(folds.car_id.unique()),
            "test_split_cars": trainer.folds_id.get("test_split_cars", []),
        },
        "cross_validation": cross_validation(
            cfg.runs_dir, cfg.name, cfg.to_dict(), trainer.folds_id["folds_sha"], run_dir / FULL_SUMMARY
        ),
        "paths": RELATIVE_TO_FILE,
        "train_seconds": round(sum(float(r.get("seconds", 0)) for r in trainer.history), 1),
        "machine": machine(trainer.device),
        "command": _command(),
        # The code that trained it (a re-run of the finished command only rewrites this record).
        "code": (read_checkpoint(run_dir / FINAL, "final.pt", mmap=True).get("lineage") or {}).get("code")
        or code_version(),
    }
    write_json(run_dir / FULL_SUMMARY, summary)
    return summary


def run(cfg: Config, fresh: bool = False, quiet: bool = False) -> dict:
    """Train (or resume) one fold, then predict its out-of-fold maps; one process per fold folder at a time."""
    cfg = check_train_config(cfg)  # a typo or a leaking folds CSV fails before the run folder or its lock is made
    check_fold(cfg, sorted(set(load_folds(cfg.folds_csv).fold)))
    # DDP: rank 0 holds the lock for all ranks (only it writes the run's files).
    lock = OutputLock(cfg.run_dir, "training this fold") if distributed.is_main() else None
    with lock or contextlib.nullcontext():
        trainer = Trainer(cfg, fresh=fresh, quiet=quiet)
        trainer.fit()
        if not distributed.is_main():  # DDP: rank 0 predicts out-of-fold and reports
            return {}
        if cfg.full:
            summary = finish_full(trainer)
            if not quiet:
                cv = summary["cross_validation"]
                stands = (
                    f"out-of-fold Dice {cv['oof_dice_at_0.5']['mean']:.5f} of folds {cv['folds']} stands for it"
                    if cv
                    else f"no folds of {cfg.name} on this split beside it: `make train FOLD=all` measures it"
                )
                tqdm.write(
                    f"[{cfg.name}/full] trained on all {summary['trained_on']['n_images']} images "
                    f"({summary['trained_on']['n_cars']} cars); {stands} -> {cfg.run_dir / FINAL}"
                )
            return summary
        if not (cfg.run_dir / "best.pt").exists():
            raise TrainingError(f"{cfg.run_dir}: training ended without a validated checkpoint")
        summary = predict_oof(cfg, quiet=quiet)
    if not quiet:
        tqdm.write(
            f"[{cfg.name}/fold{cfg.fold}] out-of-fold Dice {summary['mean_dice']:.5f} on "
            f"{summary['n_images']} images (full resolution, TTA {summary['tta']}) -> {cfg.run_dir}"
        )
    return summary
