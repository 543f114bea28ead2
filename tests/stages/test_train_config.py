"""A training config, checked before a stage writes anything (``check_train_config`` in
pipeline/stages/train.py): run names, training settings. (Devices, compile backends and folds:
tests/core/test_checks.py; recipes: tests/inference/test_recipe.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, load_config
from pipeline.stages.train import check_train_config
from tests.conftest import run_cli as _cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted(Path("configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_pass_the_training_checks(path):
    cfg = check_train_config(load_config(path, ["model.encoder_weights=none"]))
    assert cfg.train.progressive_epochs < cfg.train.epochs  # the last epochs train at the full size


def test_bad_average_and_progressive_settings_are_named():
    with pytest.raises(ConfigError, match="train.ema"):
        check_train_config(load_config(None, ["train.ema=1.5"]))
    with pytest.raises(ConfigError, match="train.progressive_size"):
        check_train_config(load_config(None, ["train.progressive_epochs=2", "train.progressive_size=[224]"]))


@pytest.mark.parametrize("name", ["../outside", "a/b", "blend", "img", "a$b", "a b", ""])
def test_run_names_are_plain_names(tiny_data, tmp_path, capsys, name):
    runs = tmp_path / "runs"
    config = REPO / "configs" / "cpu.yaml"
    code, _, err = _cli(
        capsys, "train", "--config", config, "--data", tiny_data, "--runs", runs, "--set", f"name={name}"
    )
    assert code == 2 and "name:" in err and ("plain run name" in err or "reserved" in err)
    assert not runs.exists() and not (tmp_path / "outside").exists()
    code, _, err = _cli(capsys, "smoke", "--config", config, "--data", tiny_data, "--set", f"name={name}")
    assert code == 2 and "name:" in err
