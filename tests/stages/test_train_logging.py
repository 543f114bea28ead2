"""What training records: validation IoU in history.csv, and TensorBoard events when enabled."""

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.masks.metrics import score_image
from pipeline.stages.train import Trainer
from tests.conftest import tiny_config


def test_history_has_per_image_val_iou(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    t = Trainer(cfg, quiet=True)
    t.fit()
    history = pd.read_csv(cfg.run_dir / "history.csv")
    assert {"val_dice", "val_iou"} <= set(history.columns) and len(history) == 2
    assert not (cfg.run_dir / "tb").exists()  # off by default
    # Recompute the last epoch's scores independently, image by image, with the final weights.
    t.model.eval()
    rows = []
    with torch.no_grad():
        for i in range(len(t.val_ds)):
            item = t.val_ds[i]
            pred = (t.model(item["image"][None].float())[0, 0] > 0).numpy()
            rows.append(score_image(pred, item["mask"][0].numpy() > 0.5))
    scores = pd.DataFrame(rows)
    last = history.iloc[-1]
    assert last.val_iou == pytest.approx(scores.iou.mean(), abs=1e-9)
    assert last.val_dice == pytest.approx(scores.dice.mean(), abs=1e-9)
    assert (history.val_iou <= history.val_dice + 1e-12).all()


def test_tensorboard_writes_the_history_curves(tiny_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"train.tensorboard": "true"})
    t = Trainer(cfg, quiet=True)
    t.fit()
    assert list((cfg.run_dir / "tb").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(cfg.run_dir / "tb"))
    events.Reload()
    history = pd.read_csv(cfg.run_dir / "history.csv")
    for tag, column in (("val/iou", "val_iou"), ("val/dice", "val_dice"), ("train/loss", "train_loss"), ("lr", "lr")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == history.epoch.tolist()
        np.testing.assert_allclose([e.value for e in logged], history[column], rtol=1e-6)  # stored as float32
