"""An exported model folder is untrusted input (pipeline/inference/model_folder.py): its settings are
checked where it is read, for every stage; the shipped folder is complete."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.inference.model_folder import check_folder, load_pretrained
from tests.conftest import edit_pipeline_json as _edit
from tests.conftest import run_cli as _cli

REPO = Path(__file__).resolve().parents[2]


BAD_SETTINGS = [
    ("threshold", 300, "threshold 300"),
    ("threshold", 0, "threshold 0"),
    ("threshold", -1, "threshold -1"),
    ("threshold", "128", "threshold '128'"),
    ("input.height", 0, "input.height 0"),
    ("input.width", 480.5, "input.width 480.5"),
    ("input.pad_to_multiple", 7, "input.pad_to_multiple 7"),
    ("input.mean", [1, 2], "input.mean"),
    ("input.std", [58, 0, 57], "input.std"),
    ("input", None, "input: missing"),
    ("tta", ["spin"], "tta ['spin']"),
    ("tta", "hflip", "tta 'hflip'"),
    ("postprocess", ["melt"], "postprocess ['melt']"),
    ("postprocess_params", [], "postprocess_params"),
    ("precision", "fp8", "precision 'fp8'"),
    ("name", "x/../recipe", "name:"),
    ("model", {"arch": "Unet"}, "model: needs"),
]


@pytest.mark.slow
@pytest.mark.parametrize("key, value, expected", BAD_SETTINGS)
def test_a_bad_setting_in_pipeline_json_is_refused_by_every_stage(
    folder, tiny_data, tmp_path, capsys, key, value, expected
):
    def change(spec):
        *path, last = key.split(".")
        target = spec
        for k in path:
            target = target[k]
        target[last] = value

    _edit(folder, change)
    photo = next((tiny_data / "test").glob("*.jpg"))
    runs = [
        ("predict", photo, "--pretrained", folder, "--out", tmp_path / "p"),
        ("evaluate", "--pretrained", folder, "--data", tiny_data),
        ("report", "--pretrained", folder, "--data", tiny_data, "--runs", tmp_path / "none", "--out", tmp_path / "r"),
        ("submission", "--pretrained", folder, "--data", tiny_data, "--out", tmp_path / "s" / "sub.csv.gz"),
    ]
    for argv in runs:
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and "pipeline.json" in err and expected in err, (argv[0], err)
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").glob("*.png"))
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").glob("*.json"))  # no recipe written first


@pytest.mark.slow
def test_a_malformed_config_json_is_one_line(folder, tiny_data, tmp_path, capsys):
    (folder / "config.json").write_text("{not json")
    _edit(
        folder,
        lambda spec: spec["files"].update(**{"config.json": __import__("hashlib").sha256(b"{not json").hexdigest()}),
    )
    code, _, err = _cli(capsys, "evaluate", "--pretrained", folder, "--data", tiny_data)
    assert code == 2 and "config.json: not valid JSON" in err


@pytest.mark.slow
def test_the_folder_s_mean_and_std_are_applied(folder):
    _edit(folder, lambda spec: spec["input"].update(mean=[10.0, 20.0, 30.0], std=[2.0, 3.0, 4.0]))
    model = load_pretrained(folder).model
    assert model.mean.flatten().tolist() == [10.0, 20.0, 30.0] and model.std.flatten().tolist() == [2.0, 3.0, 4.0]


def test_shipped_model_folder_is_complete():
    """The folder committed in models/ loads and is what its pipeline.json says (skips before it exists)."""
    from pipeline.inference.model_folder import SHIPPED

    if not (SHIPPED / "pipeline.json").is_file():
        pytest.skip(f"{SHIPPED} not in this checkout")
    spec = check_folder(SHIPPED)
    assert spec["model"]["weights_dtype"] == "fp16"
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 32e6  # 13.4 MB of weights, 16 MB of INT8 networks
    # Its record names the cars it was trained on and those that tuned its threshold and post-processing:
    # none is a car of the test split its card is scored on.
    from pipeline.data.folds import load_test_split
    from pipeline.inference.model_folder import cars_seen, int8_sizes
    from pipeline.inference.tta import view_sizes

    seen = cars_seen(spec)
    assert all(seen.values()), seen
    assert not set().union(*seen.values()) & load_test_split(REPO / "folds" / "test_split.csv")
    # Its INT8 networks (what a CPU runs by default) cover every TTA view's size; they were calibrated and
    # checked on cars it was trained on.
    inp = spec["input"]
    assert view_sizes(spec["tta"], inp["height"], inp["width"]) <= int8_sizes(spec)
    int8 = spec["int8"]
    used = {n.split("_")[0] for n in int8["calibration"]["photos"] + int8["accuracy_control"]["validation_photos"]}
    assert used <= seen["trained on"]
    model = load_pretrained(SHIPPED)
    x = torch.zeros(1, 3, spec["input"]["height"], spec["input"]["width"])
    with torch.no_grad():
        assert model.model(x).shape == (1, 1, spec["input"]["height"], spec["input"]["width"])
