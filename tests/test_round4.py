"""Issue 25, reliability round 4: the exported model folder is untrusted input in every stage, a run's
record never describes a model it did not make, and nothing of ours or of a library's lands outside
its folder. Each case as a user meets it, through the command line where there is one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from pipeline.core.errors import ModelFolderError, ResumeError
from pipeline.core.io_utils import OutputLock, read_json
from pipeline.inference.model_folder import load_pretrained
from pipeline.stages.export import export_model
from pipeline.stages.predict import OutputLog, choose_model
from pipeline.stages.train import Trainer, run
from tests.conftest import run_cli as _cli
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(split_model, tmp_path):
    """A private copy of the tiny model trained apart from its test split (its record lists its cars)."""
    _, apart, _ = split_model
    shutil.copytree(apart, tmp_path / "model")
    return tmp_path / "model"


def _edit(folder: Path, change) -> None:
    spec = json.loads((folder / "pipeline.json").read_text())
    change(spec)
    (folder / "pipeline.json").write_text(json.dumps(spec))


# -- 1. settings checked where the folder is read, for every stage ------------------------------------
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


def test_a_malformed_config_json_is_one_line(folder, tiny_data, tmp_path, capsys):
    (folder / "config.json").write_text("{not json")
    _edit(
        folder,
        lambda spec: spec["files"].update(**{"config.json": __import__("hashlib").sha256(b"{not json").hexdigest()}),
    )
    code, _, err = _cli(capsys, "evaluate", "--pretrained", folder, "--data", tiny_data)
    assert code == 2 and "config.json: not valid JSON" in err


def test_the_folder_s_mean_and_std_are_applied(folder):
    _edit(folder, lambda spec: spec["input"].update(mean=[10.0, 20.0, 30.0], std=[2.0, 3.0, 4.0]))
    model = load_pretrained(folder).model
    assert model.mean.flatten().tolist() == [10.0, 20.0, 30.0] and model.std.flatten().tolist() == [2.0, 3.0, 4.0]


# -- 2. names as keys and paths -----------------------------------------------------------------------
def test_a_model_named_like_a_run_never_takes_its_row(split_model, folder, tiny_data, tmp_path, capsys):
    split, _, _ = split_model
    _edit(folder, lambda spec: spec.update(name="apart"))  # the name of the run it was made from
    runs = folder.parent.parent / "apart_runs"
    shutil.copytree(split_model[1].parent / "runs", runs)
    per_image = tmp_path / "scores.csv"
    code, out, _ = _cli(
        capsys, "evaluate", "--runs", runs, "--pretrained", folder, "--data", tiny_data, "--per-image", per_image
    )
    assert code == 0
    sources = set(__import__("pandas").read_csv(per_image).source)
    assert sources == {"apart", "model:apart"}  # both rows, each its own


def test_a_model_is_scored_only_on_cars_it_never_saw(split_model, folder, tiny_data, tmp_path, capsys):
    split, _, _ = split_model
    per_image = tmp_path / "scores.csv"
    code, _, _ = _cli(capsys, "evaluate", "--pretrained", folder, "--data", tiny_data, "--per-image", per_image)
    cars = {img.split("_")[0] for img in __import__("pandas").read_csv(per_image).img}
    test = set(__import__("pandas").read_csv(split).car_id)
    assert code == 0 and cars == test  # it trained on every other car, and tuned on them


def test_report_draws_no_worst_image_from_a_model_that_may_have_trained_on_it(folder, tiny_data, tmp_path, capsys):
    _edit(folder, lambda spec: spec["source"].update(trained=None, cars=None))  # a folder that does not say what it saw
    code, _, err = _cli(
        capsys, "report", "--pretrained", folder, "--data", tiny_data, "--runs", tmp_path / "none",
        "--out", tmp_path / "rep", "--worst", "2", "--recipe", tmp_path / "none.json",
    )  # fmt: skip
    page = (tmp_path / "rep" / "index.html").read_text()
    label = f"model:{json.loads((folder / 'pipeline.json').read_text())['name']}"
    assert code == 0 and label in page and "Worst out-of-fold images" not in page
    assert "does not record the cars it was trained on" in page


def test_submission_from_a_folder_keeps_every_recipe_it_did_not_write(folder, tiny_data, tmp_path, capsys):
    out_dir = tmp_path / "subs"
    out_dir.mkdir()
    mine = out_dir / "recipe-apart.json"
    mine.write_text('{"mine": true}')  # a user's recipe with the folder's name
    argv = ["submission", "--pretrained", folder, "--data", tiny_data, "--out", out_dir / "sub.csv.gz", "--limit", "2"]
    code, _, _ = _cli(capsys, *argv)
    assert code == 0 and mine.read_text() == '{"mine": true}'
    made = list(out_dir.glob("recipe-pretrained-*.json"))
    assert len(made) == 1
    stamp = made[0].stat().st_mtime_ns
    code, _, _ = _cli(capsys, *argv)
    assert code == 0 and made[0].stat().st_mtime_ns == stamp  # written once, then kept
    made[0].write_text('{"members": []}')  # something else at its name: never overwritten
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and "is not the recipe of" in err and made[0].read_text() == '{"members": []}'


def test_recipe_and_pretrained_together_are_refused(folder, tiny_data, tmp_path, capsys):
    photo = next((tiny_data / "test").glob("*.jpg"))
    code, _, err = _cli(
        capsys, "predict", photo, "--pretrained", folder, "--recipe", tmp_path / "r.json", "--out", tmp_path
    )
    assert code == 2 and "--recipe and --pretrained" in err
    code, _, err = _cli(
        capsys, "submission", "--pretrained", folder, "--recipe", tmp_path / "r.json", "--data", tiny_data
    )
    assert code == 2 and "--recipe and --pretrained" in err


def test_predict_without_a_named_recipe_uses_the_shipped_model(tmp_path, monkeypatch):
    """After `make demo` a submissions/recipe.json exists; a real photo still gets the shipped model."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "submissions").mkdir()
    (tmp_path / "submissions" / "recipe.json").write_text("{}")
    recipe, checkpoint, pretrained = choose_model(None, None, None)
    assert recipe is None and checkpoint is None and pretrained.name == "carvana-unet-mobilenetv2"
    assert choose_model("submissions/recipe.json", None, None)[0] == Path("submissions/recipe.json")


def test_make_passes_a_recipe_only_when_asked(tmp_path):
    def dry(*args):
        return subprocess.run(["make", "-n", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    assert "--recipe" not in dry("predict", "IN=x.jpg")
    assert "--recipe" not in dry("merge")
    assert '--recipe "r.json"' in dry("predict", "IN=x.jpg", "RECIPE=r.json")
    sub = dry("submission", "PRETRAINED=models/carvana-unet-mobilenetv2")
    assert "--pretrained" in sub and "--recipe" not in sub


# -- 3. a run's record --------------------------------------------------------------------------------
def test_a_finished_run_rerun_with_another_setting_is_refused(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 1})
    run(cfg, quiet=True)
    written = (cfg.run_dir / "config.yaml").read_text()
    with pytest.raises(ResumeError, match="train.lr=0.001 \\(now 0.002\\)"):
        run(tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 1, "train.lr": 0.002}), quiet=True)
    assert (cfg.run_dir / "config.yaml").read_text() == written  # its record untouched
    # where things are and how fast they go may change
    Trainer(
        tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 1, "train.num_workers": 1}), quiet=True
    )


def test_a_killed_run_resumed_with_another_setting_is_refused(tiny_data, tmp_path):
    from tests.conftest import kill_after_first_epoch

    cfg = tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 3})
    trainer = Trainer(cfg, quiet=True)
    kill_after_first_epoch(trainer)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    with pytest.raises(ResumeError, match="augment.hflip"):
        Trainer(
            tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 3, "augment.hflip": 0.0}), quiet=True
        )
    Trainer(
        tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 3, "augment.hflip": 0.0}),
        fresh=True,
        quiet=True,
    )


# -- 4. export: files that are not ours, odd outputs, fp16's range ----------------------------------------
@pytest.fixture
def final_pt(split_model):
    _, apart, _ = split_model
    return apart.parent / "runs" / "apart" / "full" / "final.pt"


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


# -- 5. nothing written outside the output folder ------------------------------------------------------
def test_predict_keeps_its_upright_copies_in_its_own_folder(folder, tiny_data, tmp_path, monkeypatch, capsys):
    from PIL import Image

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    src = next((tiny_data / "test").glob("*.jpg"))
    rotated = tmp_path / "in" / "phone.jpg"
    rotated.parent.mkdir()
    im = Image.open(src)
    exif = im.getexif()
    exif[0x0112] = 6  # stored sideways, shown upright
    im.save(rotated, exif=exif)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / ".upright-left-by-a-kill").mkdir()  # as a killed predict leaves it: listed in its log
    OutputLog(tmp_path / "p").mark([tmp_path / "p" / ".upright-left-by-a-kill"], "upright", "claimed")
    code, _, _ = _cli(capsys, "predict", rotated, "--pretrained", folder, "--out", tmp_path / "p")
    assert code == 0 and (tmp_path / "p" / "phone_mask.png").is_file()
    assert list(system_tmp.iterdir()) == []
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(".upright")]


def test_the_cpu_runtimes_write_nothing_to_home_or_the_temp_folder(tmp_path, monkeypatch):
    from pipeline.inference.backends import runtime

    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    net = torch.nn.Conv2d(3, 1, 3, padding=1)
    for backend in ("onnxruntime", "openvino"):
        out = runtime(net, backend)(torch.zeros(1, 3, 32, 32))
        assert out.shape == (1, 1, 32, 32)
    assert list(home.rglob("*")) == [] and list(tmp.rglob("*")) == []


def test_imagenet_weights_offline_fail_at_once(monkeypatch):
    """No connection to the hub: huggingface_hub is asked offline (its cache only), not for a minute of retries."""
    import huggingface_hub.constants as hf
    import segmentation_models_pytorch as smp

    from pipeline.core.config import ModelConfig
    from pipeline.models import unet

    def unreachable(*a, **k):
        raise OSError("no network")

    seen = {}

    def create_model(*a, **k):
        seen["offline"] = hf.HF_HUB_OFFLINE
        raise OSError("not in the cache")

    monkeypatch.setattr(unet.socket, "create_connection", unreachable)
    monkeypatch.setattr(smp, "create_model", create_model)
    before = hf.HF_HUB_OFFLINE
    with pytest.raises(unet.WeightsError, match="Offline"):
        unet.build_model(ModelConfig(arch="Unet", encoder="mobilenet_v2", encoder_weights="imagenet"))
    assert seen["offline"] is True and hf.HF_HUB_OFFLINE == before  # offline for that call only


def test_merge_after_shards_of_an_exported_model(folder, tiny_data, tmp_path, capsys):
    out = tmp_path / "subs" / "sub.csv.gz"
    for i in (0, 1):
        code, _, _ = _cli(
            capsys, "submission", "--pretrained", folder, "--data", tiny_data, "--out", out, f"--shard={i}/2"
        )
        assert code == 0
    code, _, err = _cli(capsys, "merge", "--data", tiny_data, "--out", out)
    assert code == 0, err
    assert read_json(out.with_name(out.name + ".json"))["rows"] == len(list((tiny_data / "test").glob("*.jpg")))


def test_a_lock_in_a_user_s_folder_is_removed_on_release_and_still_excludes(tmp_path):
    target = tmp_path / ".predict"
    with OutputLock(target, "predicting into it", remove=True):
        with pytest.raises(Exception, match="another run is predicting into it"):
            with OutputLock(target, "predicting into it", remove=True):
                pass
        assert (tmp_path / ".predict.lock").is_file()
    assert list(tmp_path.iterdir()) == []  # nothing of ours left in the user's folder
    with OutputLock(target, remove=True):  # and the next run takes it
        pass


def test_lineage_says_when_a_folder_s_settings_are_not_what_its_figures_measured(folder, capsys):
    recorded = json.loads((folder / "pipeline.json").read_text())["source"]["recipe"]
    code, out, _ = _cli(capsys, "lineage", folder)
    assert code == 0 and "stands for it" in out and "other settings" not in out
    _edit(folder, lambda spec: spec.update(postprocess=["remove_far_blobs", *recorded["postprocess"]]))
    code, out, _ = _cli(capsys, "lineage", folder)
    assert code == 0 and "measured it with other settings (postprocess" in out and "stands for it" not in out
