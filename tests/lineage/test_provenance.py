"""Every artifact bound to what made it (pipeline/lineage/provenance.py): a changed input is refused by
every consumer, on the bytes it loads."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.errors import LineageError
from pipeline.stages import submission as submission_mod
from pipeline.stages.submission import make_submission
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import retrain_stand_in as _retrain
from tests.conftest import run_cli_stderr as _cli
from tests.conftest import tiny_submission as _sub


def test_a_changed_checkpoint_is_refused_by_submission_predict_and_lineage(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    out = tmp_path / "sub" / "s.csv.gz"
    _sub(recipe, tiny_data, out)
    code, _ = _cli(capsys, "lineage", out)
    assert code == 0 and "links hold" in _cli.out
    _retrain(runs / "a" / "fold0" / "best.pt")
    # Re-running to the old output used to answer "already complete"; now the recipe is stale.
    with pytest.raises(LineageError, match=r"a/fold0/best.pt changed since the recipe was tuned.*make ensemble"):
        _sub(recipe, tiny_data, out)
    code, err = _cli(
        capsys, "predict", tiny_data / "test", "--out", tmp_path / "p", "--recipe", recipe, "--device", "cpu"
    )
    assert code == 2 and "a/fold0/best.pt changed since the recipe was tuned" in _one_error_line(err)
    assert not (tmp_path / "p").exists()
    code, _ = _cli(capsys, "lineage", out)
    shown = _cli.out
    assert code == 1 and "BROKEN checkpoint" in shown and "a/fold0/best.pt" in shown and "links broken" in shown


def test_the_bytes_loaded_are_the_bytes_checked(lab, tiny_data, tmp_path, monkeypatch):
    """A checkpoint replaced between the recipe's check and the load (a retrain finishing) is refused."""
    runs, recipe = lab
    real = submission_mod.load_recipe

    def check_then_replace(path):
        checked = real(path)
        ckpt = runs / "a" / "fold0" / "best.pt"
        state = torch.load(ckpt, weights_only=True)
        first = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][first] = state["model"][first] + 1
        torch.save(state, ckpt)
        return checked

    monkeypatch.setattr(submission_mod, "load_recipe", check_then_replace)
    with pytest.raises(LineageError, match="changed since it was recorded"):
        make_submission(recipe, tiny_data, tmp_path / "s.csv.gz", device="cpu", num_workers=0, quiet=True)
