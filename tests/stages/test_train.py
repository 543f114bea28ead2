"""Training (pipeline/stages/train.py): the loss goes down, resume continues identically, early stopping,
weight averaging and progressive resizing, a non-finite loss and a broken photo stop it clearly."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from pipeline.core.errors import TrainingError
from pipeline.data.folds import load_folds
from pipeline.stages.train import Trainer
from tests.conftest import copy_data as _copy
from tests.conftest import kill_after_first_epoch, tiny_config
from tests.conftest import truncate as _truncate


def test_training_steps_lower_the_loss(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    t = Trainer(cfg, quiet=True)
    batch = next(iter(torch.utils.data.DataLoader(t.val_ds, batch_size=8)))
    t.model.train()
    opt = torch.optim.Adam(t.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = t.loss_fn(t.model(batch["image"]), batch["mask"], batch["image"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_resume_continues_identically(tiny_data, tmp_path):
    # Uninterrupted: 2 epochs.
    a = Trainer(tiny_config(tiny_data, tmp_path / "a"), quiet=True)
    a.fit()
    # Killed right after epoch 1's checkpoint, then resumed by a new Trainer (a new process).
    kill_after_first_epoch(Trainer(tiny_config(tiny_data, tmp_path / "b"), quiet=True))
    b2 = Trainer(tiny_config(tiny_data, tmp_path / "b"), quiet=True)
    assert b2.epoch == 1 and not b2.finished
    b2.fit()
    assert b2.epoch == 2
    pa, pb = _params(a.model), _params(b2.model)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), f"{k} differs after resume"
    assert a.history[-1]["train_loss"] == b2.history[-1]["train_loss"]
    sa, sb = a.optimizer.state_dict()["state"], b2.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


def test_early_stopping_and_best_checkpoint(tiny_data, tmp_path):
    # Validation Dice 0.5 then 0.4: with patience 1 training stops after epoch 2 of 5, best is epoch 1.
    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"train.epochs": 5, "train.early_stopping": 1})
    t = Trainer(cfg, quiet=True)
    scores = iter([(1.0, 0.5, 1 / 3), (1.0, 0.4, 0.25), (1.0, 0.3, 0.3 / 1.7)])
    t.validate = lambda: next(scores)
    t.fit()
    assert t.finished and t.epoch == 2
    best = torch.load(cfg.run_dir / "best.pt", weights_only=False)
    assert best["epoch"] == 1 and best["val_dice"] == t.history[0]["val_dice"]
    again = Trainer(cfg, quiet=True)  # a finished run is not trained further when re-run
    again.fit()
    assert again.epoch == 2


@pytest.mark.slow
def test_weight_average_is_what_is_validated_saved_and_resumed(tiny_data, tmp_path):
    over = {"train.ema": 0.9, "train.epochs": 2, "train.val_every": 2}  # one validation: best.pt is epoch 2
    a = Trainer(tiny_config(tiny_data, tmp_path / "a", **over), quiet=True)
    a.fit()
    best = torch.load(a.run_dir / "best.pt", weights_only=False)
    last = torch.load(a.run_dir / "last.pt", weights_only=False)
    ema, raw = a.ema.module.state_dict(), a.model.state_dict()
    # best.pt holds the average, never the raw weights; last.pt holds both.
    assert best["epoch"] == 2
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())
    assert all(torch.equal(best["model"][k], ema[k]) for k in ema)
    assert all(torch.equal(last["ema"][k], ema[k]) for k in ema)
    assert all(torch.equal(last["model"][k], raw[k]) for k in raw)
    # The last validation also scores the raw weights; its row says so.
    assert "val_dice_raw" in a.history[-1] and "val_dice_raw" not in a.history[0]
    # Killed after epoch 1 and resumed: the average continues exactly.
    kill_after_first_epoch(Trainer(tiny_config(tiny_data, tmp_path / "b", **over), quiet=True))
    b = Trainer(tiny_config(tiny_data, tmp_path / "b", **over), quiet=True)
    b.fit()
    for k, v in b.ema.module.state_dict().items():
        assert torch.equal(v, ema[k]), f"{k}: the moving average differs after resume"


def test_progressive_resizing_trains_first_epochs_small(tiny_data, tmp_path):
    cfg = tiny_config(
        tiny_data,
        tmp_path / "runs",
        **{"train.epochs": 3, "train.progressive_epochs": 2, "train.progressive_size": "[32,32]"},
    )
    t = Trainer(cfg, quiet=True)
    seen = []
    real = t._train_loader

    def loader():
        dl = real()
        seen.append(tuple(next(iter(dl))["image"].shape[-2:]))
        return dl

    t._train_loader = loader
    t.fit()
    assert seen == [(32, 32), (32, 32), (32, 48)]
    assert t.history[-1]["val_dice"] >= 0  # validated at the full training size


def test_non_finite_loss_stops_and_keeps_the_last_good_state(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"train.epochs": 3})
    t = Trainer(cfg, quiet=True)
    real = t.loss_fn

    def explodes_in_epoch_2(logits, y, x):
        loss = real(logits, y, x)
        return loss * float("nan") if t.model.training and t.epoch >= 1 else loss

    t.loss_fn = explodes_in_epoch_2
    with pytest.raises(
        TrainingError,
        match=r"training loss is nan in epoch 2; stopped, last.pt and best.pt keep the last good state \(epoch 1\)",
    ):
        t.fit()
    last = torch.load(cfg.run_dir / "last.pt", weights_only=False)
    best = torch.load(cfg.run_dir / "best.pt", weights_only=False)
    assert last["epoch"] == 1 and not last["finished"] and best["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert all(torch.equal(last["model"][k], best["model"][k]) for k in best["model"])
    assert len(pd.read_csv(cfg.run_dir / "history.csv")) == 1 and not (cfg.run_dir / "oof.json").exists()


@pytest.mark.multiprocess
def test_dataloader_worker_error_is_one_line(cli, tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    folds = load_folds(tmp_path / "folds.csv")
    victim = data / "train" / sorted(folds[folds.fold == 0].img)[5]  # read by validation, in a worker
    _truncate(victim)
    err = cli("train", "--data", data, "--folds-csv", tmp_path / "folds.csv", "--set", "train.num_workers=1")
    assert (
        err == f"error: {victim}: truncated JPEG (no end-of-image marker FF D9 at the end); re-copy or re-download it"
    )
