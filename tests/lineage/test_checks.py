"""What a user chose, checked before a stage writes anything (pipeline/lineage/checks.py): run names,
training settings, recipes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, load_config
from pipeline.core.errors import LineageError
from pipeline.core.io_utils import read_json, write_json
from pipeline.data.layout import DataError
from pipeline.lineage.checks import check_train_config
from pipeline.stages import submission as submission_mod
from tests.conftest import run_cli as _cli
from tests.conftest import tiny_submission as _sub

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


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"format": 4}, "format 4, which this version of the pipeline does not know"),
        ({"members_v2": []}, r"unknown key\(s\) \['members_v2'\]"),
    ],
)
def test_a_recipe_this_code_does_not_know_is_refused(lab, tiny_data, tmp_path, capsys, change, expected):
    _, recipe = lab
    write_json(recipe, {**read_json(recipe), **change})
    code, _, err = _cli(capsys, "submission", "--recipe", recipe, "--data", tiny_data, "--out", tmp_path / "s.csv.gz")
    assert code == 2 and re.search(expected, err)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"threshold": 0}, "'threshold' 0 is not an integer in 1..255"),
        ({"threshold_probability": 1.7}, "'threshold_probability' 1.7 is not in"),
        ({"postprocess": ["despeckle"]}, "postprocess .*unknown step"),
        ({"m.weight": -1}, "negative weight"),
        ({"m.weight": 1.5}, "wrong type for \\['weight'\\]"),
        ({"m.weight": True}, "wrong type for \\['weight'\\]"),
        ({"m.tta": ["vflip"]}, "unknown TTA \\['vflip'\\]"),
        ({"m.checkpoints": []}, "'checkpoints' must be a non-empty list"),
        ({"m.height": 0}, "input size 0x48"),
        ({"m.checkpoint_sha256": None}, "no content hash for each checkpoint"),
        ({"m.width": 64}, "trained at 32x48, but the recipe runs member '.' at 32x64"),
    ],
)
def test_recipe_is_checked_completely_before_any_model_loads(lab, tiny_data, tmp_path, monkeypatch, change, expected):
    _, recipe = lab
    spec = json.loads(recipe.read_text())
    used = next(m for m in spec["members"] if m["weight"] > 0)  # the one whose models would load
    for key, value in change.items():
        target = used if key.startswith("m.") else spec
        target[key.removeprefix("m.")] = value
    write_json(recipe, spec)

    def no_models(*a, **k):
        raise AssertionError("a model was built before the recipe was checked")

    monkeypatch.setattr(submission_mod, "load_checkpoint", no_models)
    with pytest.raises((DataError, LineageError), match=expected):
        _sub(recipe, tiny_data, tmp_path / "s.csv.gz")
