"""The outline refiner checked like the network's weights, through the command line: non-finite weights
refused by export and by every stage reading a folder (even with the hash recomputed), dilations edited in
pipeline.json refused (and `lineage` says the link is broken), and a photo off the refiner's scale cut out
without it, with a note."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from pipeline.masks import outline_refiner as R
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def apart(split_model, tmp_path):
    _, folder, _ = split_model
    shutil.copytree(folder, tmp_path / "model")
    return tmp_path / "model", folder.parent / "runs" / "apart" / "full" / "final.pt"


def _with_refiner(folder, net: R.OutlineRefiner, trained_size=(64, 96), **edit) -> None:
    spec = json.loads((folder / "pipeline.json").read_text())
    spec["postprocess"] = ["refine_outline"]
    spec["postprocess_params"] = {"refine_outline": dict(R.params_for(net.eval(), trained_size, core=16), **edit)}
    (folder / "pipeline.json").write_text(json.dumps(spec))


def _nan_net() -> R.OutlineRefiner:
    net = R.OutlineRefiner(width=4)
    with torch.no_grad():
        net.body[3].weight.view(-1)[5] = float("nan")
    return net


def test_export_refuses_a_refiner_with_a_nan_weight(apart, tmp_path, capsys):
    _, final_pt = apart
    weights = tmp_path / "refiner.pt"
    torch.save(_nan_net().state_dict(), weights)
    code, _, err = run_cli(capsys, "export", "--checkpoint", final_pt, "--out", tmp_path / "m", "--refiner", weights)
    assert code == 2 and "body.3.weight holds 1 non-finite value(s)" in err
    assert not (tmp_path / "m").exists()


def test_every_stage_refuses_a_folder_whose_refiner_is_not_finite(apart, tiny_data, tmp_path, capsys):
    folder, _ = apart
    _with_refiner(folder, _nan_net())  # the hash in the parameters recomputed: only the weights tell
    photo = next((tiny_data / "test").glob("*.jpg"))
    for argv in (
        ("predict", photo, "--pretrained", folder, "--out", tmp_path / "p"),
        ("evaluate", "--pretrained", folder, "--data", tiny_data),
        ("submission", "--pretrained", folder, "--data", tiny_data, "--out", tmp_path / "s" / "s.csv.gz"),
    ):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "refine_outline: weights: body.3.weight holds 1 non-finite" in err, argv[0]
    assert not (tmp_path / "s" / "s.csv.gz").exists()


def test_dilations_edited_in_pipeline_json_are_refused_and_the_link_broken(apart, tiny_data, tmp_path, capsys):
    folder, _ = apart
    _with_refiner(folder, R.OutlineRefiner(width=4), dilations=[2, 4, 8, 16])
    photo = next((tiny_data / "test").glob("*.jpg"))
    code, _, err = run_cli(capsys, "predict", photo, "--pretrained", folder, "--out", tmp_path / "p")
    assert code == 2 and "dilations [2, 4, 8, 16] disagree with its weights" in err
    code, out, _ = run_cli(capsys, "lineage", folder)
    assert code == 1 and "disagree with its weights" in out


def test_a_photo_off_the_refiner_s_scale_is_cut_out_without_it(apart, tiny_data, tmp_path, capsys):
    folder, _ = apart
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain)
    net = R.OutlineRefiner(width=4)
    with torch.no_grad():
        net.head.bias.fill_(-20.0)  # would erase every tile along the outline
    _with_refiner(folder, net, trained_size=(1280, 1918))  # trained on 1918x1280 photos; these are 96x64
    photos = tiny_data / "test"
    code, _, err = run_cli(capsys, "predict", photos, "--pretrained", folder, "--out", tmp_path / "r")
    note = "note: refine_outline skipped: 96x64 is 0.05 times the width and 0.05 times the height"
    assert code == 0 and err.count(note) == 1
    assert run_cli(capsys, "predict", photos, "--pretrained", plain, "--out", tmp_path / "n")[0] == 0
    for mask in (tmp_path / "n").glob("*_mask.png"):
        np.testing.assert_array_equal(cv2.imread(str(mask)), cv2.imread(str(tmp_path / "r" / mask.name)))
