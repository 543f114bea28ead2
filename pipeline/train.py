"""Train one fold of one model, then write its out-of-fold predictions.

Outputs in ``<runs_dir>/<name>/fold<k>/``: ``config.yaml`` (resolved), ``history.csv`` (one row
per epoch), ``last.pt`` (full state: model, optimizer, scheduler, scaler, epoch, RNG, history)
and ``best.pt`` (best validation Dice), ``oof/<image>.png`` (uint8 probabilities at full
resolution, the engine's output), ``oof_dice.csv`` and ``oof.json`` (written last: it marks the
fold as complete). Re-running the same command resumes from ``last.pt``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from .augment import train_transform
from .config import Config, ConfigError
from .data import Layout, read_mask
from .datasets import SegmentationDataset
from .engine import Engine, Member, autocast, pick_device
from .folds import load_folds
from .io_utils import atomic_path, write_json, write_text
from .losses import get_loss
from .metrics import dice, dice_batch
from .models import build_model, load_checkpoint_model

# Config sections that must not change when resuming a run.
_FIXED_ON_RESUME = ("model", "image", "fold", "name")


class ResumeError(RuntimeError):
    pass


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


def _save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class Trainer:
    def __init__(self, cfg: Config, fresh: bool = False, quiet: bool = False):
        self.cfg = cfg
        self.quiet = quiet
        self.run_dir = cfg.run_dir
        self.device = pick_device(cfg.device)
        self.layout = Layout(cfg.data_dir)
        folds = load_folds(cfg.folds_csv)
        if cfg.fold not in set(folds.fold):
            raise ValueError(f"fold {cfg.fold} not in {cfg.folds_csv} (folds {sorted(set(folds.fold))})")
        self.train_df = folds[folds.fold != cfg.fold].reset_index(drop=True)
        self.val_df = folds[folds.fold == cfg.fold].reset_index(drop=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resume = (self.run_dir / "last.pt").exists() and not fresh
        if resume:
            self._check_resumable()
        elif fresh:
            for name in ("last.pt", "best.pt", "oof.json", "history.csv"):
                (self.run_dir / name).unlink(missing_ok=True)
        write_text(self.run_dir / "config.yaml", cfg.to_yaml())

        seed_everything(cfg.seed)  # the random init of the decoder (and encoder without weights)
        if resume:  # weights come from the checkpoint: do not fetch the encoder again
            self.model = build_model(dataclasses.replace(cfg.model, encoder_weights="none"))
        else:
            self.model = build_model(cfg.model)
        self.model.to(self.device)
        self.channels_last = cfg.train.channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.loss_fn = get_loss(cfg.train.loss).to(self.device)

        t = cfg.train
        self.steps_per_epoch = t.steps_per_epoch or max(1, len(self.train_df) // t.batch_size)
        self.optimizer = make_optimizer(cfg, self.model)
        self.scheduler = make_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        use_scaler = self.device.type == "cuda" and t.amp and t.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.epoch = 0
        self.best = -1.0
        self.bad_epochs = 0
        self.finished = False
        self.history: list[dict] = []
        if resume:
            self._load(self.run_dir / "last.pt")

        self.transform = train_transform(cfg.augment, seed=cfg.seed)
        h, w = cfg.image.height, cfg.image.width
        self.train_ds = SegmentationDataset(
            [self.layout.train_image(i) for i in self.train_df.img],
            [self.layout.mask(i) for i in self.train_df.img],
            h,
            w,
            transform=self.transform,
            cache=t.cache_images,
        )
        self.val_ds = SegmentationDataset(
            [self.layout.train_image(i) for i in self.val_df.img],
            [self.layout.mask(i) for i in self.val_df.img],
            h,
            w,
            transform=None,
            cache=t.cache_images,
        )

    # -- checkpoints -------------------------------------------------------------------------
    def _check_resumable(self) -> None:
        ckpt = torch.load(self.run_dir / "last.pt", map_location="cpu", weights_only=False)
        old, new = ckpt["config"], self.cfg.to_dict()
        changed = [k for k in _FIXED_ON_RESUME if old.get(k) != new.get(k)]
        if changed:
            raise ResumeError(
                f"{self.run_dir / 'last.pt'}: the existing run was trained with a different {', '.join(changed)}. "
                "Use another name, or --fresh to start this run over."
            )

    def _state(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "finished": self.finished,
            "history": self.history,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }

    def _load(self, path: Path) -> None:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.best, self.bad_epochs = ckpt["epoch"], ckpt["best"], ckpt["bad_epochs"]
        self.finished, self.history = ckpt["finished"], ckpt["history"]
        rng = ckpt["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self._log(f"resumed {path} at epoch {self.epoch} (best val Dice {self.best:.5f})")

    # -- loop ----------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if not self.quiet:
            tqdm.write(f"[{self.cfg.name}/fold{self.cfg.fold}] {msg}")

    def _train_loader(self) -> DataLoader:
        t = self.cfg.train
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.epoch)
        sampler = RandomSampler(self.train_ds, num_samples=self.steps_per_epoch * t.batch_size, generator=g)
        return DataLoader(
            self.train_ds,
            batch_size=t.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=t.num_workers,
            worker_init_fn=_worker_init,
            generator=g,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, target, input) of a batch, under AMP and channels_last where configured."""
        x = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.cfg.train.amp, self.cfg.train.amp_dtype):
            logits = self.model(x)
        return logits, batch["mask"].to(self.device, non_blocking=True), x

    def train_epoch(self) -> float:
        t = self.cfg.train
        seed = self.cfg.seed * 1000 + self.epoch
        seed_everything(seed)
        self.transform.set_random_seed(seed)  # used when num_workers == 0
        self.model.train()
        losses = []
        bar = tqdm(
            self._train_loader(),
            total=self.steps_per_epoch,
            desc=f"epoch {self.epoch + 1}/{t.epochs}",
            leave=False,
            disable=self.quiet,
        )
        for batch in bar:
            logits, y, x = self._forward(batch)
            loss = self.loss_fn(logits, y, x)  # fp32 (the losses cast)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def validate(self) -> tuple[float, float, float]:
        """Mean loss, Dice and IoU (threshold 0.5, per image) on the held-out cars, at training resolution."""
        self.model.eval()
        t = self.cfg.train
        loader = DataLoader(self.val_ds, batch_size=t.batch_size, shuffle=False, num_workers=t.num_workers)
        losses, dices = [], []
        for batch in tqdm(loader, desc="validate", leave=False, disable=self.quiet):
            logits, y, x = self._forward(batch)
            losses.append(self.loss_fn(logits, y, x).item() * len(y))
            dices.append(dice_batch(logits.float() > 0, y > 0.5).cpu())
        n = len(self.val_ds)
        d = torch.cat(dices)
        # Per image IoU = Dice / (2 - Dice) exactly (both are 1 when prediction and truth are empty).
        return float(np.sum(losses) / n), float(d.mean()), float((d / (2 - d)).mean())

    def fit(self) -> None:
        t = self.cfg.train
        while not self.finished and self.epoch < t.epochs:
            start = time.time()
            train_loss = self.train_epoch()
            self.epoch += 1
            row = {
                "epoch": self.epoch,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": train_loss,
                "val_loss": float("nan"),
                "val_dice": float("nan"),
                "val_iou": float("nan"),
            }
            if self.epoch % t.val_every == 0 or self.epoch == t.epochs:
                row["val_loss"], row["val_dice"], row["val_iou"] = self.validate()
                if row["val_dice"] > self.best:
                    self.best, self.bad_epochs = row["val_dice"], 0
                    _save(
                        self.run_dir / "best.pt",
                        {
                            "config": self.cfg.to_dict(),
                            "model": self.model.state_dict(),
                            "epoch": self.epoch,
                            "val_dice": self.best,
                        },
                    )
                else:
                    self.bad_epochs += 1
            row["seconds"] = round(time.time() - start, 2)
            row["best_val_dice"] = self.best
            self.history.append(row)
            if self.epoch >= t.epochs or (t.early_stopping and self.bad_epochs >= t.early_stopping):
                self.finished = True
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
        with atomic_path(self.run_dir / "history.csv") as tmp:
            pd.DataFrame(self.history).to_csv(tmp, index=False)


def predict_oof(cfg: Config, quiet: bool = False) -> dict:
    """Predict the fold's held-out cars with ``best.pt`` through the shared engine; store uint8 PNGs."""
    run_dir = cfg.run_dir
    device = pick_device(cfg.device)
    model, mcfg = load_checkpoint_model(run_dir / "best.pt", device)
    folds = load_folds(cfg.folds_csv)
    val = folds[folds.fold == cfg.fold].reset_index(drop=True)
    layout = Layout(cfg.data_dir)
    oof_dir = run_dir / "oof"
    oof_dir.mkdir(exist_ok=True)
    todo = [img for img in val.img if not (oof_dir / f"{Path(img).stem}.png").exists()]
    engine = Engine(
        [Member(cfg.name, [model], mcfg.image.height, mcfg.image.width, cfg.predict.tta)],
        device,
        amp=cfg.train.amp,
        amp_dtype=cfg.train.amp_dtype,
        channels_last=cfg.train.channels_last,
        batch_size=cfg.predict.batch_size,
        num_workers=cfg.predict.num_workers,
    )
    for name, q in tqdm(
        engine.predict([layout.train_image(i) for i in todo]),
        total=len(todo),
        desc="out-of-fold",
        unit="img",
        disable=quiet,
    ):
        target = oof_dir / f"{Path(name).stem}.png"
        tmp = oof_dir / f".tmp.{target.name}"
        cv2.imwrite(str(tmp), q[0].cpu().numpy())
        os.replace(tmp, target)
    rows = []
    for img in tqdm(val.img, desc="out-of-fold dice", unit="img", disable=quiet):
        q = cv2.imread(str(oof_dir / f"{Path(img).stem}.png"), cv2.IMREAD_UNCHANGED)
        rows.append((img, dice(q >= 128, read_mask(layout.mask(img)))))
    scores = pd.DataFrame(rows, columns=["img", "dice"])
    with atomic_path(run_dir / "oof_dice.csv") as tmp:
        scores.to_csv(tmp, index=False, float_format="%.6f")
    summary = {
        "name": cfg.name,
        "fold": cfg.fold,
        "n_images": len(scores),
        "mean_dice": float(scores.dice.mean()),
        "threshold": 128,
        "tta": list(cfg.predict.tta),
        "height": mcfg.image.height,
        "width": mcfg.image.width,
        "encoder": mcfg.model.encoder,
        "checkpoint": "best.pt",
    }
    write_json(run_dir / "oof.json", summary)
    return summary


def run(cfg: Config, fresh: bool = False, quiet: bool = False) -> dict:
    trainer = Trainer(cfg, fresh=fresh, quiet=quiet)
    trainer.fit()
    if not (cfg.run_dir / "best.pt").exists():
        raise RuntimeError(f"{cfg.run_dir}: training ended without a validated checkpoint")
    summary = predict_oof(cfg, quiet=quiet)
    if not quiet:
        tqdm.write(
            f"[{cfg.name}/fold{cfg.fold}] out-of-fold Dice {summary['mean_dice']:.5f} on "
            f"{summary['n_images']} images (full resolution, TTA {summary['tta']}) -> {cfg.run_dir}"
        )
    return summary
