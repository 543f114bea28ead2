"""The recipe (pipeline/inference/recipe.py): read and checked once, completely, before any model loads;
and the one place a blend of probabilities becomes a mask (the threshold, then the post-processing)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from pipeline.core.errors import LineageError
from pipeline.core.io_utils import read_json, write_json
from pipeline.data.layout import DataError
from pipeline.inference import members as members_mod
from pipeline.inference.engine import Engine
from pipeline.inference.model_folder import SHIPPED, check_folder
from pipeline.inference.recipe import Recipe
from pipeline.masks import snakes
from pipeline.masks.postprocess import apply
from pipeline.masks.probability import HALF
from tests.conftest import run_cli as _cli
from tests.conftest import tiny_submission as _sub


def _blend(h: int = 40, w: int = 60) -> np.ndarray:
    """A uint8 blend: a confident car (a rectangle with a hole), a faint blob, a ramp along the bottom rows."""
    b = np.zeros((h, w), np.uint8)
    b[5:30, 10:50] = 230
    b[16, 26] = 20  # a one-pixel hole in the car
    b[33:36, 2:5] = 200  # a blob away from it
    b[-2:, :] = np.linspace(0, 255, w).astype(np.uint8)
    return b


def test_half_is_what_the_engine_makes_of_probability_one_half():
    q = Engine.quantize(torch.full((1, 1, 2, 2), 0.5), 2, 2)
    assert (q == HALF).all()


def test_the_mask_is_the_threshold_then_the_post_processing():
    blended = _blend()
    raw, final = Recipe(threshold=200, postprocess=("largest_cc", "fill_holes")).mask(blended)
    assert raw.dtype == bool and np.array_equal(raw, blended >= 200)
    assert np.array_equal(final, apply(blended >= 200, ["largest_cc", "fill_holes"]))
    assert raw[34, 3] and not final[34, 3] and final[16, 26] and not raw[16, 26]  # the blob gone, the hole filled
    # The engine thresholds on the device where no step needs the probabilities: the same mask from there.
    assert np.array_equal(Recipe(threshold=200, postprocess=("largest_cc", "fill_holes")).postprocessed(raw), final)
    plain_raw, plain = Recipe().mask(blended)  # one checkpoint, a run's maps: probability 0.5, no steps
    assert plain is plain_raw and np.array_equal(plain, blended >= 128)


def test_the_photo_is_decoded_only_for_a_step_that_needs_it():
    blended, photo = _blend(), np.full((40, 60, 3), 90, np.uint8)
    photo[5:30, 10:50] = 240
    decoded = []

    def decode():
        decoded.append(1)
        return photo

    Recipe(postprocess=("largest_cc",)).mask(blended, decode)
    assert decoded == []
    params = {"active_contour": dict(snakes.DEFAULTS, min_width=1.0, min_points=4, pad=2)}
    recipe = Recipe(postprocess=("active_contour",), postprocess_params=params)
    _, final = recipe.mask(blended, decode)
    assert decoded == [1]
    assert np.array_equal(final, apply(blended >= HALF, ["active_contour"], blended, photo, params))
    with pytest.raises(ValueError, match="needs the blended probabilities and the photo"):
        recipe.mask(blended)  # a photo step without the photo: refused, never skipped


def test_load_checks_the_file_and_makes_its_paths_usable(tmp_path):
    folder = tmp_path / "sub"
    folder.mkdir()
    member = {"name": "a", "weight": 2, "checkpoints": ["../runs/a/fold0/best.pt"], "checkpoint_sha256": ["0" * 64]}
    member |= {"tta": ["hflip"], "height": 32, "width": 48, "precision": "bf16"}
    data = {"format": 3, "runs_dir": "../runs", "threshold": 117, "postprocess": ["fill_holes"], "members": [member]}
    write_json(folder / "recipe.json", data)
    recipe = Recipe.load(folder / "recipe.json")
    assert (recipe.threshold, recipe.postprocess, recipe.weights) == (117, ("fill_holes",), [2])
    assert recipe.threshold_probability == round(117 / 255, 6) and recipe.path == folder / "recipe.json"
    (m,) = recipe.active
    assert (m.name, m.tta, m.precision, m.folds) == ("a", ("hflip",), "bf16", None)
    assert m.checkpoints == (str(tmp_path / "runs" / "a" / "fold0" / "best.pt"),)  # relative to the recipe's folder
    assert recipe.runs_dir == str(tmp_path / "runs")
    assert recipe.to_dict()["members"][0]["checkpoints"] == list(m.checkpoints)  # an edited copy stays usable
    write_json(folder / "recipe.json", {**data, "threshold": 256})
    with pytest.raises(DataError, match=r"recipe.json: malformed recipe: 'threshold' 256 is not an integer in 1..255"):
        Recipe.load(folder / "recipe.json")
    (folder / "recipe.json").write_text("{")
    with pytest.raises(DataError, match="recipe.json: not valid JSON"):
        Recipe.load(folder / "recipe.json")
    with pytest.raises(DataError, match="recipe not found; run `make ensemble` first"):
        Recipe.load(folder / "other.json")


def test_a_model_folder_gives_its_recipe():
    spec = check_folder(SHIPPED)
    recipe = Recipe.of_model(spec)
    assert recipe.threshold == spec["threshold"] and list(recipe.postprocess) == spec["postprocess"]
    assert recipe.postprocess_params.keys() == spec["postprocess_params"].keys() and not recipe.members


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

    monkeypatch.setattr(members_mod, "load_checkpoint", no_models)
    with pytest.raises((DataError, LineageError), match=expected):
        _sub(recipe, tiny_data, tmp_path / "s.csv.gz")
