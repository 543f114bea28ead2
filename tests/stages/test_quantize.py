"""make quantize: a model folder's INT8 networks, calibrated on its training cars, bound by hash, checked before
they are written, run by default on a CPU that has INT8 (and only there), close to the fp32 masks; re-export
drops them."""

from __future__ import annotations

import json
import shutil

import cv2
import pandas as pd
import pytest

from pipeline.core.errors import ModelFolderError
from pipeline.inference import backends
from pipeline.inference.model_folder import cars_seen, check_folder, load_pretrained
from pipeline.inference.tta import view_sizes
from pipeline.stages import quantize
from pipeline.stages.export import export_model
from pipeline.stages.quantize import quantize_folder
from pipeline.stages.train import run
from tests.conftest import edit_pipeline_json, run_cli, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def v2_model(split_model, tiny_data, tmp_path_factory):
    """A tiny MobileNetV2 U-Net (the shipped model's encoder) trained on every car but the test split's, exported:
    (its checkpoint, its folder). (The suite's usual tiny encoder, timm's mobilenetv3, is one OpenVINO 2026.4.1
    cannot run in INT8: ``check_network`` refuses it.)"""
    split, _, _ = split_model
    root = tmp_path_factory.mktemp("v2")
    over = {"model.encoder": "mobilenet_v2", "test_split": str(split)}
    run(tiny_config(tiny_data, root / "runs", name="v2", fold="full", **over), quiet=True)
    checkpoint = root / "runs" / "v2" / "full" / "final.pt"
    export_model(checkpoint, root / "model", dtype="fp32", quiet=True)
    return checkpoint, root / "model"


@pytest.fixture(scope="module")
def quantized(v2_model, tiny_data, tmp_path_factory):
    """That folder quantized on 12 photos of its training cars."""
    folder = tmp_path_factory.mktemp("quantized") / "model"
    shutil.copytree(v2_model[1], folder)
    # A loose bound: a 32x48 mask moves by more than the shipped bound with one pixel, and a tight one would put
    # layer after layer back in float; the path is the same.
    quantize_folder(folder, tiny_data, photos=12, max_drop=0.5, quiet=True)
    return folder


@pytest.fixture
def q_folder(quantized, tmp_path):
    shutil.copytree(quantized, tmp_path / "model")
    return tmp_path / "model"


def test_quantize_writes_a_network_per_view_size_bound_by_hash_calibrated_on_training_cars_only(quantized, split_model):
    split, _, _ = split_model
    spec = check_folder(quantized)
    inp = spec["input"]
    sizes = view_sizes(spec["tta"], inp["height"], inp["width"])
    assert set(spec["int8"]["networks"]) == {f"{h}x{w}" for h, w in sizes}
    for size, net in spec["int8"]["networks"].items():
        assert net == {"xml": f"network-int8-{size}.xml", "weights": f"network-int8-{size}.weights"}
        for name in net.values():
            assert (quantized / name).is_file() and len(spec["files"][name]) == 64
    calibration = spec["int8"]["calibration"]
    assert len(calibration["photos"]) == 12
    cars = {p.split("_")[0] for p in calibration["photos"]}
    assert cars == set(calibration["cars"]) and cars <= cars_seen(spec)["trained on"]
    assert not cars & set(pd.read_csv(split)["car_id"])  # never a car of the test split
    assert len(cars) > 1  # spread over the cars, not one car's views
    checked = spec["int8"]["accuracy_control"]["validation_photos"]  # the masks' check: other photos, same cars
    assert checked and not set(checked) & set(calibration["photos"])
    assert {p.split("_")[0] for p in checked} <= cars_seen(spec)["trained on"]
    assert load_pretrained(quantized).int8_networks.keys() == sizes
    assert "| INT8 networks | `network-int8-*`" in (quantized / "README.md").read_text()  # the card says so


def test_the_masks_check_scores_the_worst_tenth_of_the_views():
    import numpy as np
    import torch

    ref = np.zeros((1, 1, 2, 5), bool)
    ref[..., :4] = True  # 4 car pixels
    data = [(torch.full((1, 3, 2, 5), float(i)), ref, 0.5) for i in range(10)]

    def compiled(x):  # input i: the first i pixels of the row above 0.5, the rest below
        logits = np.zeros((1, 1, 2, 5), np.float32)
        logits[..., : int(x[0, 0, 0, 0])] = 1.0
        return [logits]

    worst, per = quantize.tail_dice(compiled, data)
    # per row: min(i, 5) pixels marked against 4 true ones, min(i, 4) of them shared
    assert per == [2 * min(i, 4) / (min(i, 5) + 4) for i in range(10)] and worst == per[0] == 0.0


def test_a_changed_int8_network_is_refused_naming_the_file(q_folder):
    weights = (
        q_folder / json.loads((q_folder / "pipeline.json").read_text())["int8"]["networks"].popitem()[1]["weights"]
    )
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelFolderError, match=f"{weights.name}.*sha256 differs"):
        load_pretrained(q_folder)


def test_int8_files_are_named_by_size_only(q_folder):
    size = next(iter(json.loads((q_folder / "pipeline.json").read_text())["int8"]["networks"]))
    edit_pipeline_json(q_folder, lambda s: s["int8"]["networks"][size].update(xml="../elsewhere.xml"))
    with pytest.raises(ModelFolderError, match="int8.networks"):
        check_folder(q_folder)


def test_quantize_refuses_what_it_cannot_calibrate_honestly(folder, tiny_data, tmp_path, capsys):
    empty = tmp_path / "data"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(ModelFolderError, match="no photo of the .* cars"):
        quantize_folder(folder, empty, quiet=True)
    edit_pipeline_json(folder, lambda s: [s["source"].pop(k, None) for k in ("cars", "trained")])
    code, _, err = run_cli(capsys, "quantize", "--pretrained", folder, "--data", tiny_data)
    assert code == 2 and "does not record the cars it was trained on" in err


def test_quantize_again_needs_force(q_folder, tiny_data, capsys):
    code, _, err = run_cli(capsys, "quantize", "--pretrained", q_folder, "--data", tiny_data)
    assert code == 2 and "already has INT8 networks" in err and "--force" in err


def _predict(capsys, folder, photo, out, *args):
    code, text, _ = run_cli(capsys, "predict", photo, "--pretrained", folder, "--out", out, *args)
    assert code == 0
    return text, cv2.imread(str(out / f"{photo.stem}_mask.png"), cv2.IMREAD_GRAYSCALE) > 0


def test_a_cpu_with_int8_runs_the_int8_networks_by_default_close_to_the_fp32_masks(
    quantized, folder, tiny_data, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(backends, "cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))
    photos = sorted((tiny_data / "test").glob("*.jpg"))[:4]
    agree = []
    for i, photo in enumerate(photos):
        text, int8 = _predict(capsys, quantized, photo, tmp_path / f"int8-{i}")
        assert "inference: OpenVINO int8 (the rest in fp32)" in text and "INT8 networks" in text
        _, exact = _predict(capsys, quantized, photo, tmp_path / f"fp32-{i}", "--precision", "fp32")
        agree.append((int8 == exact).mean())
    assert min(agree) > 0.98, agree  # a wrong network (another size's, garbage) disagrees on far more
    from pipeline.stages.predict import load_predictor

    lineage = load_predictor(pretrained=quantized, device="cpu").lineage  # what the outputs' key is made of
    assert (lineage["precision"], lineage["backend"]) == ("int8", "openvino")
    text, _ = _predict(capsys, quantized, photos[0], tmp_path / "bf16", "--precision", "bf16")
    assert "PyTorch bf16" in text or "OpenVINO bf16" in text  # asked for: no INT8
    code, _, err = run_cli(
        capsys, "predict", photos[0], "--pretrained", folder, "--out", tmp_path, "--precision", "int8"
    )  # a folder never quantized
    assert code == 2 and "no INT8 network" in err and "make quantize" in err


def test_without_int8_on_the_cpu_or_in_the_folder_the_float_runtime_runs(
    quantized, folder, tiny_data, tmp_path, capsys, monkeypatch
):
    photo = next((tiny_data / "test").glob("*.jpg"))
    monkeypatch.setattr(backends, "cpu_capabilities", lambda: frozenset({"FP32", "BF16"}))  # no INT8 said
    text, _ = _predict(capsys, quantized, photo, tmp_path / "a")
    assert "inference: OpenVINO bf16" in text
    monkeypatch.setattr(backends, "cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))
    text, _ = _predict(capsys, folder, photo, tmp_path / "b")  # a folder never quantized
    assert "inference: OpenVINO fp32" in text


def test_the_submission_key_records_int8_so_a_resume_never_mixes_runtimes(
    quantized, tiny_data, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(backends, "cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))
    out = tmp_path / "s.csv.gz"
    argv = ["submission", "--pretrained", quantized, "--data", tiny_data, "--out", out, "--limit", "3"]
    code, text, _ = run_cli(capsys, *argv)  # the default on a CPU with INT8, for a quantized folder
    assert code == 0 and "OpenVINO int8" in text
    trial = tmp_path / "s.limit3-trial.csv.gz"
    key = json.loads((tmp_path / "s.limit3-trial.csv.gz.json").read_text())["key"]
    assert (key["backend"], key["precision"]) == ("openvino", "int8")
    code, _, err = run_cli(capsys, *argv, "--backend", "openvino", "--precision", "fp32")
    assert code == 2 and trial.is_file()  # another runtime's rows are not appended to these


def test_a_network_openvino_cannot_run_is_refused_and_nothing_is_written(folder, tiny_data, monkeypatch):
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(quantize, "_CHECK", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(
        ModelFolderError, match="could not run this model's INT8 network .*signal 11.*nothing was written"
    ):
        quantize_folder(folder, tiny_data, photos=4, max_drop=0.5, quiet=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_export_into_a_quantized_folder_drops_the_old_model_s_int8_networks(v2_model, q_folder):
    export_model(v2_model[0], q_folder, dtype="fp32", quiet=True)
    assert not list(q_folder.glob("network-int8-*")) and "int8" not in check_folder(q_folder)
