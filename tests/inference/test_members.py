"""A recipe's members as models (pipeline/inference/members.py): only those with weight, each in the
precision the recipe recorded, what submission and predict both run."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.io_utils import read_json, write_json
from pipeline.inference.members import configured_workers, load_members, member_precisions
from pipeline.inference.recipe import Recipe
from pipeline.masks.submission_csv import SubmissionError
from pipeline.models.unet import read_checkpoint


def first_checkpoint(path, member: dict):
    return path.parent / member["checkpoints"][0]  # a recipe's paths are relative to its folder


@pytest.mark.slow
def test_the_members_with_weight_load_with_their_recorded_sizes_and_precisions(lab):
    _, path = lab
    spec = read_json(path)
    spec["members"][0]["weight"], spec["members"][1]["weight"] = 3, 0
    spec["members"][0]["precision"] = "bf16"
    write_json(path, spec)
    recipe = Recipe.load(path)
    members, weights = load_members(recipe, torch.device("cpu"))
    (m,) = members  # the zero weight would cost time for nothing
    first = spec["members"][0]
    assert (m.name, m.height, m.width, list(m.tta), m.precision) == (
        first["name"], first["height"], first["width"], first["tta"], "bf16"
    )  # fmt: skip
    assert weights == [3] and len(m.models) == len(first["checkpoints"])
    assert member_precisions(recipe, torch.device("cpu")) == "bf16"
    assert member_precisions(recipe, torch.device("cpu"), "fp32") == "fp32"
    saved = read_checkpoint(first_checkpoint(path, first), mmap=True)["config"]["predict"]["num_workers"]
    assert configured_workers(recipe, default=7) == saved and configured_workers(Recipe(), default=7) == 7
    with pytest.raises(SubmissionError, match="no member with a positive weight"):
        load_members(Recipe(), torch.device("cpu"))
