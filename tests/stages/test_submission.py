"""The submission (pipeline/stages/submission.py): input errors named before any work, workers from the
members' configs, a finished file replaced only when asked."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.io_utils import read_json
from pipeline.models.unet import build_model
from pipeline.stages.submission import make_submission
from tests.conftest import run_cli as _cli
from tests.conftest import tiny_config, write_recipe
from tests.conftest import truncate as _truncate


def _recipe(tmp_path, checkpoint, **over):
    member = {"name": "a", "weight": 1, "checkpoints": [str(checkpoint)], "tta": [], "height": 32, "width": 48}
    return write_recipe(tmp_path / "recipe.json", [member], **over)


def test_submission_input_errors(cli, tiny_data, tmp_path):
    out = tmp_path / "s.csv.gz"
    common = ["--data", tiny_data, "--out", out, "--device", "cpu", "--num-workers", "0"]
    foreign = tmp_path / "foreign.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, foreign)
    err = cli("submission", "--recipe", _recipe(tmp_path, foreign), *common)
    assert f"{foreign}: not a checkpoint of this pipeline" in err
    truncated = tmp_path / "best.pt"
    torch.save({"config": {}, "model": {"w": torch.zeros(1000)}}, truncated)
    _truncate(truncated, 0.5)
    assert f"{truncated}: unreadable checkpoint" in cli("submission", "--recipe", _recipe(tmp_path, truncated), *common)
    bad = tmp_path / "bad.json"
    bad.write_text('{"threshold": 128, "members": [')
    assert f"{bad}: not valid JSON" in cli("submission", "--recipe", bad, *common)
    assert "malformed recipe: 'threshold' 300" in cli(
        "submission", "--recipe", _recipe(tmp_path, foreign, threshold=300), *common
    )
    assert not out.exists()


@pytest.mark.multiprocess
def test_submission_workers_default_to_the_configs(tiny_data, tmp_path):
    from tests.conftest import write_recipe

    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"predict.num_workers": 1})
    torch.save({"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()}, tmp_path / "m.pt")
    member = {"name": "m", "weight": 1, "checkpoints": [str(tmp_path / "m.pt")], "height": 32, "width": 48, "tta": []}
    recipe = write_recipe(tmp_path / "recipe.json", [member])
    summary = make_submission(recipe, tiny_data, tmp_path / "s.csv.gz", device="cpu", quiet=True)
    assert summary["num_workers"] == 1  # predict.num_workers of the member's config, not a fixed 2


@pytest.mark.slow
def test_a_finished_submission_of_another_precision_is_never_replaced_silently(lab, tiny_data, tmp_path, capsys):
    _, recipe = lab
    out = tmp_path / "s.csv.gz"
    args = ["submission", "--recipe", recipe, "--data", tiny_data, "--out", out, "--device", "cpu"]
    assert _cli(capsys, *args, "--precision", "fp32")[0] == 0  # explicit: a CPU with BF16 runs bf16 by default
    before = out.read_bytes()
    code, _, err = _cli(capsys, *args, "--precision", "bf16")
    assert code == 2 and "made with another precision" in err and "--force" in err and out.read_bytes() == before
    assert _cli(capsys, *args, "--precision", "bf16", "--force")[0] == 0
    assert read_json(out.with_name(out.name + ".json"))["key"]["precision"] == "bf16"
