"""A model that ships with the project (pipeline/stages/export.py). FOLD=full, export in smp's own format with a model
card, predict and submit from the folder (or a hub id) with no training, and the folder refused when it
is pickled, tampered or of an unknown format."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.core.errors import ModelFolderError
from pipeline.core.io_utils import OutputLock, read_json
from pipeline.inference.model_folder import check_folder, load_pretrained
from pipeline.lineage.runs import discover
from pipeline.masks.submission_csv import read_sample_names
from pipeline.stages.export import export_model
from pipeline.stages.train import run
from tests.conftest import run_cli as _cli
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def full(tiny_data, tmp_path_factory):
    """Folds 0 and 1 of a tiny member and its full run (every car) on the same split: (runs, full run dir)."""
    runs = tmp_path_factory.mktemp("full") / "runs"
    for fold in (0, 1, "full"):
        run(tiny_config(tiny_data, runs, name="m", fold=fold), quiet=True)
    return runs, runs / "m" / "full"


@pytest.fixture(scope="module")
def exported(full, tiny_data, tmp_path_factory):
    """The full run exported in fp32 and fp16, with a recipe of its folds: (fp32 folder, fp16 folder, recipe)."""
    from pipeline.stages.ensemble import tune

    runs, run_dir = full
    root = tmp_path_factory.mktemp("exported")
    recipe = root / "recipe-m.json"
    tune(runs, tiny_data, recipe, steps=1, n_jobs=1, quiet=True, allow_incomplete=True, postprocess_steps="fill_holes")
    fp32 = root / "models" / "m32"
    export_model(run_dir / "final.pt", fp32, recipe=recipe, dtype="fp32", name="m32", quiet=True)
    fp16 = root / "models" / "m16"
    export_model(run_dir / "final.pt", fp16, recipe=recipe, dtype="fp16", name="m16", quiet=True)
    return fp32, fp16, recipe


@pytest.mark.slow
def test_full_run_trains_on_every_car_and_is_never_a_fold(full, tiny_data, capsys):
    runs, run_dir = full
    record = read_json(run_dir / "full.json")
    folds = __import__("pandas").read_csv(tiny_data.parent / "folds.csv")
    assert record["fold"] == "full" and record["trained_on"]["all_cars"]
    assert record["trained_on"]["n_images"] == len(folds) and record["trained_on"]["n_cars"] == folds.car_id.nunique()
    ckpt = torch.load(run_dir / "final.pt", weights_only=True)
    assert ckpt["folds"]["held_out_cars"] == [] and ckpt["folds"]["n_train_images"] == len(folds)
    assert not (run_dir / "oof.json").exists() and not (run_dir / "best.pt").exists()
    # Its record names the folds of the same config beside it, which stand for it.
    cv = record["cross_validation"]
    assert cv["folds"] == [0, 1] and 0 <= cv["oof_dice_at_0.5"]["mean"] <= 1
    # Ensemble and evaluate never take it as a fold: only fold0 and fold1 are the member's.
    assert [f["fold"] for f in discover(runs, allow_incomplete=True, quiet=True)["m"]] == [0, 1]
    code, out, _ = _cli(capsys, "evaluate", "--runs", runs, "--data", tiny_data, "--jobs", "1")
    assert code == 0 and "m " in out
    code, out, _ = _cli(capsys, "lineage", run_dir / "final.pt")
    assert (
        code == 0 and "trained on all" in out and "trained on all its cars (fold full)" in out and "BROKEN" not in out
    )


def test_full_fold_value_is_checked(tiny_data, tmp_path, capsys):
    code, _, err = _cli(
        capsys, "train", "--config", REPO / "configs" / "cpu.yaml", "--fold", "ful", "--data", tiny_data
    )
    assert code == 2 and "'all' or 'full'" in err


@pytest.mark.slow
def test_export_round_trip_gives_the_checkpoints_masks(full, exported, tiny_data, tmp_path, capsys):
    _, run_dir = full
    fp32, _, recipe = exported
    files = sorted(p.name for p in fp32.iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "pipeline.json"]
    spec = read_json(fp32 / "pipeline.json")
    assert spec["threshold"] == read_json(recipe)["threshold"] and spec["postprocess"] == ["fill_holes"]
    card = (fp32 / "README.md").read_text()
    assert "library_name: segmentation-models-pytorch" in card and "Data and terms" in card
    assert str(spec["source"]["recipe"]["folds"]) in card
    # The same masks as predicting with the checkpoint and the recipe's settings: the weights are exact.
    model = load_pretrained(fp32)
    ckpt = torch.load(run_dir / "final.pt", weights_only=True)["model"]
    for k, v in model.model.state_dict().items():
        assert torch.equal(v, ckpt[k]), k
    out = tmp_path / "pred"
    code, printed, _ = _cli(
        capsys, "predict", tiny_data / "test", "--out", out, "--pretrained", fp32, "--device", "cpu"
    )
    assert code == 0 and "m32" in printed
    assert len(list(out.glob("*_mask.png"))) == 16


def test_a_fold_checkpoint_exports_with_its_exact_weights(tiny_runs, tmp_path):
    """Any best.pt exports, not only a full run's final.pt: the folder loads with the checkpoint's weights
    exactly and its training TTA; a recipe blending several members cannot stand for one model."""
    runs, recipe = tiny_runs
    ckpt = runs / "a" / "fold0" / "best.pt"
    with pytest.raises(ModelFolderError, match="blends 2 members"):
        export_model(ckpt, tmp_path / "a0", recipe=recipe, quiet=True)
    assert not (tmp_path / "a0").exists()
    spec = export_model(ckpt, tmp_path / "a0", dtype="fp32", quiet=True)
    assert (spec["name"], spec["tta"], spec["threshold"], spec["source"]["checkpoint"]) == (
        "a0",
        ["hflip"],
        128,
        "best.pt",
    )
    model = load_pretrained(tmp_path / "a0")
    weights = torch.load(ckpt, weights_only=True)["model"]
    assert all(torch.equal(v, weights[k]) for k, v in model.model.state_dict().items())


def _strings(value):
    """Every string in a JSON value (keys too)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.slow
def test_an_export_records_no_absolute_path(full, exported, tiny_data):
    """The folder travels: its pipeline.json and card name the data, folds, runs and command of its training
    relative to the project or the data root, or by name, never by this machine's absolute paths."""
    runs, _ = full
    for folder in exported[:2]:
        spec = read_json(folder / "pipeline.json")
        card = (folder / "README.md").read_text()
        machine = [s for s in _strings(spec) if s.startswith("/") or str(tiny_data.parent) in s or str(REPO) in s]
        assert machine == []
        assert str(tiny_data.parent) not in card and str(REPO) not in card and str(runs) not in card
        config, trained = spec["source"]["config"], spec["source"]["trained"]
        # The tiny run's data, folds and runs lie outside the project: recorded by name, and said so.
        assert (config["data_dir"], config["runs_dir"], config["folds_csv"]) == ("data", "runs", "folds.csv")
        assert trained["trained_on"]["folds_csv"] == "folds.csv" and trained["cross_validation"]["runs"] == "m"
        paths = spec["source"]["paths"]
        assert paths["config.data_dir"] == paths["config.runs_dir"] == "name only" and "project root" in paths["rule"]
        assert "| paths | by name alone (outside the project and the data root): `data_dir`" in card


def test_recorded_paths_are_relative_to_the_project_else_the_data_root_else_a_name(tmp_path):
    from pipeline.stages.export import portable_path, portable_source

    project, data = tmp_path / "project", tmp_path / "carvana"
    assert portable_path(str(project / ".exp" / "cars270"), project, data) == (".exp/cars270", "project root")
    assert portable_path("folds/folds_270.csv", project, data) == ("folds/folds_270.csv", "project root")
    assert portable_path(str(data / "weights" / "w.pth"), project, data) == ("weights/w.pth", "data root")
    assert portable_path("/opt/weights/w.pth", project, data) == ("w.pth", "name only")
    assert portable_path("../shared/weights/w.pth", project, data) == ("w.pth", "name only")
    run_dir = project / ".exp" / "runs" / "ship" / "full"
    source = portable_source(
        {
            "config": {
                "data_dir": str(data),
                "runs_dir": str(project / ".exp" / "runs"),
                "folds_csv": "folds/folds.csv",
                "test_split": None,
                "model": {"encoder_weights": "imagenet"},
            },
            "trained": {
                "trained_on": {"folds_csv": "../../../../folds/folds.csv"},  # relative to full.json, as train writes
                "cross_validation": {"runs": "../../ship"},
                "paths": "relative to this file",
                "command": f"python -m pipeline train --data {data} --runs {project}/.exp/runs "
                f"--set model.encoder_weights={data}/w.pth --set name=ship",
            },
        },
        run_dir / "full.json",
        project,
    )
    config, trained = source["config"], source["trained"]
    assert (config["data_dir"], config["runs_dir"], config["folds_csv"]) == ("carvana", ".exp/runs", "folds/folds.csv")
    assert config["test_split"] is None and config["model"]["encoder_weights"] == "imagenet"
    assert trained["trained_on"]["folds_csv"] == "folds/folds.csv" and trained["cross_validation"]["runs"] == (
        ".exp/runs/ship"
    )
    assert trained["command"] == (
        "python -m pipeline train --data carvana --runs .exp/runs --set model.encoder_weights=w.pth --set name=ship"
    )
    assert source["paths"]["config.data_dir"] == "name only" and source["paths"]["config.runs_dir"] == "project root"
    assert trained["paths"] == "as source.paths says"


@pytest.mark.slow
def test_folder_loads_with_smp_alone(exported):
    """smp.from_pretrained loads it in a process that never imports this pipeline."""
    fp32, _, _ = exported
    code = (
        "import sys, torch, segmentation_models_pytorch as smp\n"
        f"net = smp.from_pretrained({str(fp32)!r}).eval()\n"
        "with torch.no_grad(): y = net(torch.zeros(1, 3, 64, 96))\n"
        "assert y.shape == (1, 1, 64, 96), y.shape\n"
        "assert not any(m.startswith('pipeline') for m in sys.modules)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0 and done.stdout.split()[-1] == "ok", done.stderr[-2000:]


@pytest.mark.slow
def test_fp16_weights_against_fp32(exported, tiny_data):
    """fp16 storage rounds each weight once (loaded back into fp32): the maps move by at most two levels of
    255, so a mask pixel changes side only right at the threshold (the effect on real out-of-fold Dice is
    measured in docs/record/shipped-model.md)."""
    from pipeline.stages.evaluate import pretrained_predictions

    fp32, fp16, _ = exported
    a, b = load_pretrained(fp32), load_pretrained(fp16)
    for (k, v32), v16 in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        if v32.is_floating_point():
            assert torch.equal(v16, v32.half().float()), k
    images = sorted((tiny_data / "test").glob("*.jpg"))
    maps32 = np.stack([m for _, m, _, _ in pretrained_predictions(a, images)])
    maps16 = np.stack([m for _, m, _, _ in pretrained_predictions(b, images)])
    diff = np.abs(maps32.astype(int) - maps16.astype(int))
    assert diff.max() <= 2
    t = read_json(fp32 / "pipeline.json")["threshold"]
    flipped = (maps32 >= t) != (maps16 >= t)
    assert (np.abs(maps32[flipped].astype(int) - t) <= 2).all()  # only pixels at the threshold can change side
    assert (fp16 / "model.safetensors").stat().st_size < 0.6 * (fp32 / "model.safetensors").stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["pickled", "tampered", "config", "format", "half"])
def test_a_pickled_or_tampered_folder_is_refused(exported, tmp_path, capsys, tiny_data, fault):
    fp32, _, _ = exported
    folder = tmp_path / "m"
    shutil.copytree(fp32, folder)
    if fault == "pickled":
        torch.save({"weights": 1}, folder / "pytorch_model.bin")
        expected = "pickled weights (pytorch_model.bin)"
    elif fault == "tampered":
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[-1] ^= 1
        (folder / "model.safetensors").write_bytes(bytes(data))
        expected = "model.safetensors: not the file pipeline.json names"
    elif fault == "config":
        cfg = read_json(folder / "config.json")
        (folder / "config.json").write_text(json.dumps({**cfg, "decoder_channels": [8, 8, 8, 8, 8]}))
        expected = "config.json: not the file pipeline.json names"
    elif fault == "format":
        spec = read_json(folder / "pipeline.json")
        (folder / "pipeline.json").write_text(json.dumps({**spec, "format": 99}))
        expected = "format 99"
    else:
        (folder / "model.safetensors").unlink()
        expected = "model.safetensors missing"
    with pytest.raises(ModelFolderError, match=re.escape(expected)):
        check_folder(folder)
    code, _, err = _cli(capsys, "predict", tiny_data / "test", "--out", tmp_path / "o", "--pretrained", folder)
    assert code == 2 and expected in err and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_hub_id_goes_through_huggingface_hub(exported, tiny_data, tmp_path, capsys, monkeypatch):
    """A hub id is downloaded with huggingface_hub (mocked here: no network in CI), then checked and loaded
    as a folder; offline, the error says what to do."""
    import huggingface_hub

    fp32, _, _ = exported
    asked = []

    def fake_download(repo_id, allow_patterns=None, **kw):
        asked.append((repo_id, sorted(allow_patterns)))
        cache = tmp_path / "hub" / repo_id.replace("/", "--")
        if not cache.exists():
            shutil.copytree(fp32, cache)
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    out = tmp_path / "pred"
    code, printed, _ = _cli(capsys, "predict", tiny_data / "test", "--out", out, "--pretrained", "someone/carvana-m")
    assert code == 0 and len(list(out.glob("*_mask.png"))) == 16
    files = ["README.md", "config.json", "model.safetensors", "network-int8-*.weights", "network-int8-*.xml"]
    assert asked[0] == ("someone/carvana-m", [*files, "pipeline.json"])  # the folder's files, never pickles

    def offline(*a, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    code, _, err = _cli(capsys, "predict", tiny_data / "test", "--out", tmp_path / "p2", "--pretrained", "a/b")
    assert code == 2 and "could not download it from the Hugging Face hub" in err and "offline?" in err


@pytest.mark.slow
def test_submission_from_an_exported_model_validates_and_is_traced(exported, tiny_data, tmp_path, capsys):
    fp32, _, _ = exported
    out = tmp_path / "sub" / "submission.csv.gz"
    code, printed, _ = _cli(
        capsys, "submission", "--pretrained", fp32, "--data", tiny_data, "--out", out, "--device", "cpu"
    )
    assert code == 0 and out.is_file()
    summary = read_json(out.with_name(out.name + ".json"))
    assert summary["rows"] == len(read_sample_names(tiny_data / "sample_submission.csv"))
    code, printed, _ = _cli(capsys, "lineage", out)
    assert code == 0 and "model folder" in printed and "trained on all" in printed and "BROKEN" not in printed
    # The folder changed after the submission: lineage and a new submission say so.
    spec = read_json(fp32 / "pipeline.json")
    moved = tmp_path / "m32"
    shutil.copytree(fp32, moved)
    (moved / "pipeline.json").write_text(json.dumps({**spec, "threshold": 200}))
    (recipe,) = out.parent.glob("recipe-pretrained-*.json")  # named by the folder's hash, never by its name
    r = read_json(recipe)
    r["members"][0]["model"] = str(moved)
    recipe.write_text(json.dumps(r))
    code, printed, _ = _cli(capsys, "lineage", out)
    assert code == 1 and "BROKEN" in printed


@pytest.mark.slow
def test_predict_uses_the_shipped_model_when_there_is_no_recipe(exported, tiny_data, tmp_path, capsys, monkeypatch):
    import pipeline.inference.model_folder as export_mod

    fp32, _, _ = exported
    monkeypatch.setattr(export_mod, "SHIPPED", fp32)
    monkeypatch.chdir(tmp_path)  # no submissions/recipe.json here
    code, printed, _ = _cli(capsys, "predict", tiny_data / "test", "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0 and "using the model this project ships" in printed and "m32" in printed
    mask = cv2.imread(str(next((tmp_path / "out").glob("*_mask.png"))), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 96)


@pytest.mark.slow
def test_evaluate_and_report_score_an_exported_model(exported, tiny_data, tmp_path, capsys):
    fp32, _, _ = exported
    """Trained on every car of the tiny data: nothing there is unseen, so nothing is scored as if it were
    (tests/stages/test_evaluate.py scores a model on the cars it never saw)."""
    code, _, err = _cli(capsys, "evaluate", "--pretrained", fp32, "--data", tiny_data, "--device", "cpu")
    assert code == 2 and "trained or tuned on every car here" in err
    code, _, err = _cli(
        capsys, "report", "--pretrained", fp32, "--data", tiny_data, "--runs", tmp_path / "none", "--out",
        tmp_path / "rep", "--worst", "1", "--recipe", tmp_path / "none.json",
    )  # fmt: skip
    assert code == 2 and "trained or tuned on every car here" in err


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_cpu_backends_give_the_torch_masks(exported, tiny_data, tmp_path, capsys, backend):
    """The same exported model in ONNX Runtime / OpenVINO fp32: masks as PyTorch's fp32 (only pixels at
    the threshold could differ), and the outputs' key says which runtime made them."""
    fp32, _, _ = exported
    args = ["predict", tiny_data / "test", "--pretrained", fp32, "--background", "none", "--precision", "fp32"]
    assert _cli(capsys, *args, "--out", tmp_path / "torch")[0] == 0
    assert _cli(capsys, *args, "--out", tmp_path / backend, "--backend", backend)[0] == 0
    masks = sorted((tmp_path / "torch").glob("*_mask.png"))
    agree = np.mean([(cv2.imread(str(p), 0) == cv2.imread(str(tmp_path / backend / p.name), 0)).mean() for p in masks])
    assert len(masks) == 16 and agree >= 0.999
    log = (tmp_path / backend / "lineage.jsonl").read_text()
    assert log != (tmp_path / "torch" / "lineage.jsonl").read_text()  # another runtime: another key
    code, _, err = _cli(capsys, *args[:-2], "--out", tmp_path / "x", "--backend", backend, "--precision", "fp16")
    assert code == 2 and "fp16" in err


@pytest.mark.slow
def test_export_with_an_outline_refiner(full, exported, tiny_data, tmp_path, capsys):
    """``--refiner``: the step goes first after the threshold, its weights inside pipeline.json, checked
    where the folder is read; predict and submission apply it, and a broken file or text is refused."""
    from pipeline.masks.outline_refiner import OutlineRefiner, save_file

    runs, run_dir = full
    _, _, recipe = exported
    net = OutlineRefiner(width=4, dilations=(1, 2, 4, 8))
    with torch.no_grad():
        net.head.bias.fill_(20.0)  # every pixel of a tile along the outline becomes car: visible in the masks
    weights = tmp_path / "refiner.safetensors"  # trained, it says, at the tiny photos' size: applied there
    save_file(net, weights, trained_size=(64, 96))
    out = tmp_path / "models" / "mr"
    spec = export_model(run_dir / "final.pt", out, recipe=recipe, dtype="fp32", name="mr", quiet=True, refiner=weights)
    assert spec["postprocess"][0] == "refine_outline" and spec["postprocess"][1:] == ["fill_holes"]
    assert spec["source"]["refiner"]["file"] == "refiner.safetensors"
    assert check_folder(out)["postprocess_params"]["refine_outline"]["width"] == 4
    assert "smp alone does not apply it" in (out / "README.md").read_text()  # the card says what smp alone misses
    plain = tmp_path / "models" / "mp"
    export_model(run_dir / "final.pt", plain, recipe=recipe, dtype="fp32", name="mp", quiet=True)
    areas = {}
    for folder in (plain, out):
        dest = tmp_path / f"pred-{folder.name}"
        code, _, _ = _cli(
            capsys, "predict", tiny_data / "test", "--pretrained", folder, "--out", dest, "--device", "cpu"
        )
        assert code == 0
        areas[folder.name] = sum(
            int(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(bool).sum()) for p in dest.glob("*_mask.png")
        )
    assert areas["mr"] > areas["mp"]  # the refiner's tiles were drawn in
    sub = tmp_path / "sub" / "submission.csv.gz"
    code, _, _ = _cli(capsys, "submission", "--pretrained", out, "--data", tiny_data, "--out", sub, "--device", "cpu")
    assert code == 0 and read_json(sub.with_name(sub.name + ".json"))["rows"] > 0
    # The weights in pipeline.json changed by hand: refused, naming the step.
    broken = tmp_path / "models" / "broken"
    shutil.copytree(out, broken)
    spec = read_json(broken / "pipeline.json")
    params = spec["postprocess_params"]["refine_outline"]
    w = params["weights"]
    params["weights"] = w[:100] + ("B" if w[100] != "B" else "C") + w[101:]
    (broken / "pipeline.json").write_text(json.dumps(spec))
    with pytest.raises(ModelFolderError, match="refine_outline.*sha256"):
        check_folder(broken)
    # Not a refiner's weights: one line saying so, and nothing written.
    with pytest.raises(ModelFolderError, match="not an outline refiner"):
        export_model(
            run_dir / "final.pt", tmp_path / "models" / "x", recipe=recipe, quiet=True, refiner=run_dir / "final.pt"
        )
    assert not (tmp_path / "models" / "x").exists()


@pytest.fixture
def final_pt(split_model):
    _, apart, _ = split_model
    return apart.parent / "runs" / "apart" / "full" / "final.pt"


@pytest.mark.slow
def test_re_export_keeps_the_user_s_files_and_a_killed_one_leaves_nothing(final_pt, tmp_path):
    out = tmp_path / "models" / "m"
    export_model(final_pt, out, dtype="fp32", quiet=True)
    (out / "NOTES.txt").write_text("mine")
    (out / "onnx").mkdir()
    (out / "onnx" / "model.onnx").write_bytes(b"x")
    stale = tmp_path / "models" / ".m.export-dead"  # what a killed export left
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    export_model(final_pt, out, dtype="fp32", quiet=True)
    assert (out / "NOTES.txt").read_text() == "mine" and (out / "onnx" / "model.onnx").is_file()
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".m.") and p.is_dir()) == []
    load_pretrained(out)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["dot", "link", "quote"])
def test_export_refuses_an_output_or_name_that_means_something_else(final_pt, tmp_path, monkeypatch, what):
    monkeypatch.chdir(tmp_path)
    if what == "dot":
        with pytest.raises(ModelFolderError, match="--out \\.: name a folder"):
            export_model(final_pt, ".", quiet=True)
    elif what == "link":
        export_model(final_pt, tmp_path / "real", dtype="fp32", quiet=True)
        (tmp_path / "alias").symlink_to(tmp_path / "real")
        with pytest.raises(ModelFolderError, match="alias: a symbolic link"):
            export_model(final_pt, tmp_path / "alias", quiet=True)
        load_pretrained(tmp_path / "real")
    else:
        with pytest.raises(ModelFolderError, match="--name"):
            export_model(final_pt, tmp_path / "q", name="it's", quiet=True)
        assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_fp16_export_refuses_a_weight_beyond_its_range(final_pt, tmp_path):
    ckpt = torch.load(final_pt, weights_only=False)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["model"][key] = ckpt["model"][key].clone()
    ckpt["model"][key].view(-1)[0] = 1e6
    big = tmp_path / "final.pt"
    torch.save(ckpt, big)
    with pytest.raises(ModelFolderError, match="beyond fp16's range"):
        export_model(big, tmp_path / "m16", dtype="fp16", quiet=True)
    assert not (tmp_path / "m16").exists()


@pytest.mark.slow
def test_two_exports_or_predicts_into_one_folder_are_refused(folder, final_pt, tiny_data, tmp_path, capsys):
    out = tmp_path / "models" / "m"
    with OutputLock(out.parent / ".m.export"):
        with pytest.raises(Exception, match="another run is exporting a model there"):
            export_model(final_pt, out, quiet=True)
    photo = next((tiny_data / "test").glob("*.jpg"))
    (tmp_path / "p").mkdir()
    with OutputLock(tmp_path / "p" / ".predict"):
        code, _, err = _cli(capsys, "predict", photo, "--pretrained", folder, "--out", tmp_path / "p")
    assert code == 2 and "another run is predicting into it" in err
