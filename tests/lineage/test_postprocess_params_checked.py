"""A model folder's pipeline.json and a recipe are read through one check of their post-processing
(postprocess.chain_problem): parameters for a step that has none are refused by both, in the same words,
before any model loads."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_parameters_for_an_unknown_step_are_refused_in_a_folder_and_in_a_recipe(
    split_model, tiny_data, tmp_path, capsys
):
    _, apart, _ = split_model
    folder = tmp_path / "model"
    shutil.copytree(apart, folder)
    spec = json.loads((folder / "pipeline.json").read_text())
    spec["postprocess_params"] = {"despeckle": {"size": 3}}  # a step this version does not know: would be ignored
    (folder / "pipeline.json").write_text(json.dumps(spec))
    photo = next((tiny_data / "test").glob("*.jpg"))
    expected = "postprocess_params for ['despeckle']: not a step with parameters"
    code, _, err = run_cli(capsys, "predict", photo, "--pretrained", folder, "--out", tmp_path / "p")
    assert code == 2 and expected in err
    member = {"name": "m", "weight": 1, "checkpoints": ["c.pt"], "checkpoint_sha256": ["0"], "tta": [], "height": 32,
              "width": 48}  # fmt: skip
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"threshold": 128, "members": [member], "postprocess_params": {"despeckle": {}}}))
    code, _, err = run_cli(
        capsys, "submission", "--recipe", recipe, "--data", tiny_data, "--out", tmp_path / "s.csv.gz"
    )
    assert code == 2 and expected in err
