"""Shared fixtures: a tiny generated dataset in the Kaggle layout (96x64 images) and a tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.demo_data import generate
from pipeline.folds import make_folds

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL = SHARED / "data" / "carvana_real"
WEIGHTS = SHARED / "weights"

W, H = 96, 64


def needs_real_data():
    return pytest.mark.skipif(not REAL.is_dir(), reason=f"real Carvana sample not found at {REAL} (../shared)")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """6 train cars + 1 test car, 16 views each, 96x64 JPEG + GIF masks, folds k=3."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    generate(root, n_train_cars=6, n_test_cars=1, width=W, height=H, seed=7, n_jobs=1)
    make_folds(root, root.parent / "folds.csv", k=3, seed=0, n_jobs=1)
    return root


def tiny_config(data: Path, runs: Path, **over):
    base = [
        f"data_dir={data}",
        f"folds_csv={data.parent / 'folds.csv'}",
        f"runs_dir={runs}",
        "name=tiny",
        "device=cpu",
        "model.encoder=resnet18",
        "model.encoder_weights=none",
        "model.decoder_channels=[16,8,8,8,8]",
        "image.height=32",
        "image.width=48",
        "train.epochs=2",
        "train.batch_size=4",
        "train.steps_per_epoch=2",
        "train.num_workers=0",
        "train.lr=0.001",
        "train.early_stopping=0",
        "predict.num_workers=0",
        "predict.batch_size=4",
    ]
    return load_config(None, base + [f"{k}={v}" for k, v in over.items()])


@pytest.fixture(scope="session")
def tiny_runs(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny members trained on fold 0 only, and their ensemble recipe: (runs dir, recipe path)."""
    from pipeline.ensemble import tune
    from pipeline.train import run

    root = tmp_path_factory.mktemp("tiny_runs")
    runs = root / "runs"
    for name, over in {"a": {}, "b": {"model.decoder_channels": "[8,8,8,8,8]", "predict.tta": "[]"}}.items():
        run(tiny_config(tiny_data, runs, name=name, fold=0, **over), quiet=True)
    recipe = root / "recipe.json"
    tune(runs, tiny_data, recipe, steps=2, n_jobs=1, quiet=True, allow_incomplete=True)  # fold 0 only
    return runs, recipe
