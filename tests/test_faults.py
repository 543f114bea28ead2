"""Issue 6: bad input and faults give a clear error (or the right result), never a silently wrong one.

Every test here failed on the code before the fix. Tiny generated data only (tests/conftest.py).
"""

from __future__ import annotations

import gzip
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from pipeline.__main__ import main
from pipeline.core.config import ConfigError
from pipeline.core.errors import ResumeError, TrainingError
from pipeline.core.identity import file_sha256
from pipeline.core.io_utils import read_json
from pipeline.data.folds import load_folds, make_folds, scan_train
from pipeline.data.layout import DataError, Layout, read_image, read_mask
from pipeline.masks.submission_csv import SubmissionError, read_sample_names, validate_submission
from pipeline.models.unet import build_model
from pipeline.stages.ensemble import tune
from pipeline.stages.oof import predict_oof
from pipeline.stages.train import Trainer, run
from tests.conftest import fake_fold, tiny_config, write_recipe


def _copy(tiny_data, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    shutil.copy(tiny_data.parent / "folds.csv", tmp_path / "folds.csv")
    return dst


def _truncate(path, keep=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _first_train_image(data):
    return sorted((data / "train").iterdir())[0]


# -- silently wrong results ----------------------------------------------------------------------
def test_fresh_repredicts_out_of_fold_maps(tiny_data, tmp_path):
    """--fresh with another seed leaves the new model's maps, not the old ones (only missing maps were predicted)."""
    old = run(tiny_config(tiny_data, tmp_path / "x", seed=1), quiet=True)
    new = run(tiny_config(tiny_data, tmp_path / "x", seed=2), fresh=True, quiet=True)
    clean = run(tiny_config(tiny_data, tmp_path / "y", seed=2), quiet=True)  # the same run, never trained before
    x, y = tmp_path / "x" / "tiny" / "fold0", tmp_path / "y" / "tiny" / "fold0"
    pngs = sorted(p.name for p in (y / "oof").glob("*.png"))
    assert len(pngs) == 32 and sorted(p.name for p in (x / "oof").glob("*.png")) == pngs
    for name in pngs:
        assert np.array_equal(cv2.imread(str(x / "oof" / name), -1), cv2.imread(str(y / "oof" / name), -1)), name
    assert new["mean_dice"] == clean["mean_dice"] and new["checkpoint_sha256"] != old["checkpoint_sha256"]
    assert read_json(x / "oof.json")["checkpoint_sha256"] == file_sha256(x / "best.pt")


def test_ensemble_refuses_oof_of_another_checkpoint(tiny_data, tmp_path):
    layout, runs = Layout(tiny_data), tmp_path / "runs"
    folds = load_folds(tiny_data.parent / "folds.csv")
    for f in range(3):
        _fake_fold(runs, "a", f, sorted(folds[folds.fold == f].img)[:2], layout, k=3)
    assert tune(runs, tiny_data, tmp_path / "r.json", n_jobs=1, quiet=True)["oof"]["dice"] == 1.0
    (runs / "a" / "fold1" / "best.pt").write_bytes(b"retrained or copied over later")
    with pytest.raises(DataError, match=r"fold1/oof.json: written for another best.pt"):
        tune(runs, tiny_data, tmp_path / "r.json", n_jobs=1, quiet=True)


def test_truncated_jpeg_is_a_decode_failure(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    victim = _first_train_image(data)
    assert read_image(victim).shape == (64, 96, 3)
    _truncate(victim)
    assert cv2.imread(str(victim)) is not None  # what OpenCV does: grey fill, no error
    with pytest.raises(DataError, match=rf"{victim.name}: truncated JPEG"):
        read_image(victim, 32, 48)
    with pytest.raises(DataError, match=rf"{victim.name}: truncated JPEG"):
        scan_train(Layout(data), n_jobs=1)  # folds reads more than the header now


def test_non_finite_loss_stops_and_keeps_the_last_good_state(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"train.epochs": 3})
    t = Trainer(cfg, quiet=True)
    real = t.loss_fn

    def explodes_in_epoch_2(logits, y, x):
        loss = real(logits, y, x)
        return loss * float("nan") if t.model.training and t.epoch >= 1 else loss

    t.loss_fn = explodes_in_epoch_2
    with pytest.raises(
        TrainingError,
        match=r"training loss is nan in epoch 2; stopped, last.pt and best.pt keep the last good state \(epoch 1\)",
    ):
        t.fit()
    last = torch.load(cfg.run_dir / "last.pt", weights_only=False)
    best = torch.load(cfg.run_dir / "best.pt", weights_only=False)
    assert last["epoch"] == 1 and not last["finished"] and best["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert all(torch.equal(last["model"][k], best["model"][k]) for k in best["model"])
    assert len(pd.read_csv(cfg.run_dir / "history.csv")) == 1 and not (cfg.run_dir / "oof.json").exists()


def _moved_cars(folds_csv, out):
    """The folds CSV with one car of fold 0 and one of fold 1 swapped (a re-made split)."""
    df = load_folds(folds_csv)
    a, b = df[df.fold == 0].car_id.iloc[0], df[df.fold == 1].car_id.iloc[0]
    df.loc[df.car_id == a, "fold"], df.loc[df.car_id == b, "fold"] = 1, 0
    df.to_csv(out, index=False)
    return out


def test_resume_and_oof_refuse_another_split(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"train.epochs": 1})
    Trainer(cfg, quiet=True).fit()
    other = tiny_config(
        tiny_data, tmp_path / "runs", folds_csv=_moved_cars(tiny_data.parent / "folds.csv", tmp_path / "other.csv")
    )
    other.train.epochs = 1
    with pytest.raises(
        ResumeError, match=r"last.pt: trained on a different split than .*other.csv.*refusing to resume"
    ):
        Trainer(other, quiet=True)
    with pytest.raises(ResumeError, match=r"best.pt: trained on a different split.*refusing to write out-of-fold"):
        predict_oof(other, quiet=True)
    assert not (cfg.run_dir / "oof.json").exists()
    predict_oof(cfg, quiet=True)  # the split it was trained on is fine
    assert read_json(cfg.run_dir / "oof.json")["folds"]["k"] == 3


def _fake_fold(runs, name, fold, images, layout, k=None):
    fake_fold(runs, name, fold, images, [read_mask(layout.mask(i)) * 255 for i in images], k=k)


def test_ensemble_member_missing_folds_is_an_error(tiny_data, tmp_path):
    layout = Layout(tiny_data)
    folds = load_folds(tiny_data.parent / "folds.csv")
    by_fold = {f: sorted(folds[folds.fold == f].img)[:2] for f in range(3)}
    runs = tmp_path / "runs"
    for f in range(3):
        _fake_fold(runs, "a", f, by_fold[f], layout)
    for f in (0, 2):  # fold1's folder was not copied over
        _fake_fold(runs, "b", f, by_fold[f], layout)
    with pytest.raises(
        DataError, match=r"b lacks fold\(s\) \[1\] \(.*runs/b/fold1/oof.json not found\).*--allow-incomplete"
    ):
        tune(runs, tiny_data, tmp_path / "r.json", n_jobs=1, quiet=True)
    recipe = tune(runs, tiny_data, tmp_path / "r.json", n_jobs=1, quiet=True, allow_incomplete=True)
    assert recipe["oof"]["n_images"] == 4
    # One member alone: the k recorded by training says which folds exist.
    solo = tmp_path / "solo"
    for f in (0, 1):
        _fake_fold(solo, "c", f, by_fold[f], layout, k=3)
    with pytest.raises(DataError, match=r"c lacks fold\(s\) \[2\]"):
        tune(solo, tiny_data, tmp_path / "r2.json", n_jobs=1, quiet=True)


def test_config_value_the_arch_ignores_is_an_error(tiny_data, tmp_path):
    from pipeline.core.config import ModelConfig

    with pytest.raises(ConfigError, match=r"model.decoder_channels=\[16, 8, 8, 8, 8\]: architecture FPN has no"):
        build_model(
            ModelConfig(arch="FPN", encoder="resnet18", encoder_weights="none", decoder_channels=[16, 8, 8, 8, 8])
        )
    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"model.arch": "FPN"})  # tiny_config sets decoder_channels
    with pytest.raises(ConfigError, match="FPN"):
        Trainer(cfg, quiet=True)
    assert not cfg.run_dir.exists()  # refused before anything was written
    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"model.arch": "FPN", "model.decoder_channels": "null"})
    t = Trainer(cfg, quiet=True)
    assert type(t.model.net).__name__ == "FPN" and t.cfg.model.decoder_channels is None
    unet = Trainer(tiny_config(tiny_data, tmp_path / "u", **{"model.decoder_channels": "null"}), quiet=True)
    assert unet.cfg.model.decoder_channels == [256, 128, 64, 32, 16]  # the saved config says what was built
    saved = yaml.safe_load((unet.run_dir / "config.yaml").read_text())
    assert saved["model"]["decoder_channels"] == [256, 128, 64, 32, 16]


def _encodings(m):
    kaggle = Image.fromarray(m, "L").convert("P")
    kaggle.putpalette([0, 0, 0, 255, 255, 255])
    reversed_palette = Image.fromarray(1 - m, "L").convert("P")
    reversed_palette.putpalette([255, 255, 255, 0, 0, 0])
    return {
        "kaggle.gif": kaggle,
        "reversed_palette.gif": reversed_palette,
        "grey01.png": Image.fromarray(m, "L"),
        "grey255.png": Image.fromarray(m * 255, "L"),
        "grey255.gif": Image.fromarray(m * 255, "L"),
        "rgb255.png": Image.fromarray(np.stack([m * 255] * 3, -1), "RGB"),
        "bilevel.png": Image.fromarray(m.astype(bool)),
        "opaque_rgba.png": Image.fromarray(np.dstack([m * 255] * 3 + [np.full_like(m, 255)]), "RGBA"),
    }


def test_masks_in_any_encoding_read_as_what_they_show(tmp_path):
    m = np.zeros((64, 96), np.uint8)
    m[20:40, 30:70] = 1
    for name, im in _encodings(m).items():
        im.save(tmp_path / name)
        got = read_mask(tmp_path / name)
        assert got.dtype == np.uint8 and np.array_equal(got, m), name
    soft = cv2.GaussianBlur(m * 255, (5, 5), 0)  # anti-aliased edges: not a binary mask
    Image.fromarray(soft, "L").save(tmp_path / "soft.png")
    with pytest.raises(DataError, match=r"soft.png: mask shows grey levels \[0, .*expected a binary mask"):
        read_mask(tmp_path / "soft.png")
    see_through = np.dstack([m * 255] * 3 + [m * 255])
    Image.fromarray(see_through, "RGBA").save(tmp_path / "alpha.png")
    with pytest.raises(DataError, match="alpha.png: mask has transparency"):
        read_mask(tmp_path / "alpha.png")


def test_csv_name_and_content_must_agree(tiny_data, tmp_path):
    names = ["a.jpg", "b.jpg"]
    text = "img,rle_mask\na.jpg,1 2\nb.jpg,\n"
    gz_named_csv = tmp_path / "s.csv"
    gz_named_csv.write_bytes(gzip.compress(text.encode()))
    plain_named_gz = tmp_path / "s.csv.gz"
    plain_named_gz.write_text(text)
    with pytest.raises(SubmissionError, match=r"s.csv: named .csv but holds gzip-compressed data"):
        validate_submission(gz_named_csv, names, 4, 2)
    with pytest.raises(SubmissionError, match=r"s.csv.gz: named .gz but not gzip data"):
        validate_submission(plain_named_gz, names, 4, 2)
    part = tmp_path / "s.csv.gz.part"  # the submission's partial file goes by content
    part.write_bytes(gzip.compress(text.encode()))
    assert validate_submission(part, names, 4, 2)["rows"] == 2
    folds = tmp_path / "folds.csv"
    folds.write_bytes(gzip.compress((tiny_data.parent / "folds.csv").read_bytes()))
    with pytest.raises(DataError, match="folds.csv: named .csv but holds gzip"):
        load_folds(folds)
    sample = tmp_path / "sample_submission.csv"
    sample.write_bytes(gzip.compress(b"img,rle_mask\na.jpg,1 1\n"))
    with pytest.raises(SubmissionError, match="sample_submission.csv: named .csv but holds gzip"):
        read_sample_names(sample)


def test_views_other_than_01_to_16_are_reported(tiny_data, tmp_path, capsys):
    data = _copy(tiny_data, tmp_path)
    layout = Layout(data)
    first = _first_train_image(data)
    car = first.name[:12]
    layout.train_image(first.name).unlink()
    layout.mask(first.name).unlink()  # car has 15 views
    make_folds(data, tmp_path / "f.csv", k=3, n_jobs=1)
    assert f"warning: car {car}: 15 views, expected 16 (missing [1])" in capsys.readouterr().err
    with pytest.raises(DataError, match=rf"car {car}: 15 views"):
        make_folds(data, tmp_path / "g.csv", k=3, n_jobs=1, strict=True)
    assert not (tmp_path / "g.csv").exists()
    other = sorted((data / "train").iterdir())[-1].name[:12]
    shutil.copy(data / "train" / f"{other}_02.jpg", data / "train" / f"{other}_17.jpg")
    shutil.copy(layout.mask(f"{other}_02.jpg"), layout.mask(f"{other}_17.jpg"))
    assert main(["folds", "--data", str(data), "--out", str(tmp_path / "h.csv"), "--k", "3", "--strict"]) == 2
    assert f"car {other}: view number(s) [17] outside 01..16" in capsys.readouterr().err


# -- errors a user can act on: one line, exit 2, no traceback -------------------------------------
@pytest.fixture
def cli(tiny_data, tmp_path, capsys):
    """Run the CLI; return (exit code, stderr) and check the error is short and traceback-free."""
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.to_yaml())

    def call(*argv, lines=1):
        argv = [str(a) for a in argv]
        if argv[0] == "train":
            argv = ["train", "--config", str(config), *argv[1:]]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        out = err.splitlines()  # progress bars (tqdm, on stderr) may come before the error
        starts = [i for i, line in enumerate(out) if line.startswith("error: ")]
        assert len(starts) == 1 and len(out) - starts[0] <= lines, err
        return "\n".join(out[starts[0] :])

    call.cfg = cfg
    return call


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--set", "model.encoder=resnet19"], "model.encoder='resnet19': unknown encoder (close: resnet18"),
        (["--set", "model.encoder=tu-resnet19"], "model.encoder='tu-resnet19': timm has no model 'resnet19'"),
        (["--set", "model.arch=Unet3"], "model.arch='Unet3': unknown architecture; available: DPT"),
        (["--set", "train.loss=focal"], "train.loss='focal': unknown loss term"),
        (["--set", "train.optimizer=sgd"], "train.optimizer='sgd': not one of adam, adamw"),
        (["--set", "predict.tta=[vflip]"], "predict.tta=['vflip']: unknown ['vflip']"),
        (["--device", "gpu"], "device='gpu': unknown device; use auto, cpu, cuda or cuda:N"),
        (["--fold", "7"], "fold 7: not in"),
        (["--fold", "one"], "--fold 'one': expected a fold number"),
        (["--set", "image.height=0"], "image.height=0: must be at least 1"),
        (["--set", "train.batch_size=-2"], "train.batch_size=-2: must be at least 1"),
        (
            ["--set", "model.decoder_channels=[16,8"],
            "--set 'model.decoder_channels=[16,8': the value is not valid YAML",
        ),
        (["--set", "model.decoder_channels=[8,8]"], "architecture Unet needs 5 values"),
    ],
)
def test_train_option_errors(cli, argv, expected):
    assert expected in cli("train", *argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(cli, tmp_path):
    assert "device=cuda: CUDA asked for, but torch sees no GPU" in cli("train", "--device", "cuda")
    recipe = tmp_path / "r.json"
    recipe.write_text("{}")
    assert "--device=cuda:1: CUDA asked for" in cli("submission", "--recipe", recipe, "--device", "cuda:1")


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["demo-data", "--width", "0"], "--width 0: must be at least 32"),
        (["demo-data", "--train-cars", "0"], "--train-cars 0: must be at least 1"),
        (["submission", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
        (["ensemble", "--jobs", "0"], "--jobs 0: use -1 (all cores)"),
        (["ensemble", "--steps", "0"], "--steps 0: the weight grid needs at least 1 step"),
    ],
)
def test_size_options(cli, tmp_path, argv, expected):
    assert expected in cli(*argv, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_folds_k_below_2(cli, tiny_data, tmp_path):
    assert "--k 1: k-fold needs at least 2 folds" in cli(
        "folds", "--data", tiny_data, "--out", tmp_path / "f.csv", "--k", "1"
    )


def test_bad_last_pt_names_the_ways_out(cli):
    run_dir = cli.cfg.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(b"PK\x03\x04 half a checkpoint")
    err = cli("train")
    assert f"{run_dir / 'last.pt'}: unreadable last.pt, truncated or not a torch file" in err
    assert "--fresh" in err and "best.pt" in err
    torch.save({"conv1.weight": torch.zeros(1)}, run_dir / "last.pt")  # a foreign (weights-only) file
    assert "last.pt: not a checkpoint of this pipeline" in cli("train")


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


def test_malformed_oof_json_is_named(cli, tiny_data, tmp_path):
    fold = tmp_path / "runs" / "m" / "fold0"
    fold.mkdir(parents=True)
    (fold / "oof.json").write_text('{"fold": 0, "tta": [')
    assert f"{fold / 'oof.json'}: not valid JSON" in cli("ensemble", "--runs", tmp_path / "runs", "--data", tiny_data)
    (fold / "oof.json").write_text('{"fold": "zero"}')
    err = cli("ensemble", "--runs", tmp_path / "runs", "--data", tiny_data)
    assert f"{fold / 'oof.json'}: malformed oof.json" in err


def test_validate_errors(cli, tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    names = read_sample_names(data / "sample_submission.csv")
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"img,rle_mask\n\xff\xfe\x00\x00binary\x00junk\n")
    assert f"{junk}: unreadable as a CSV" in cli("validate", junk, "--data", data)
    huge = tmp_path / "huge.csv"
    huge.write_text("img,rle_mask\n" + "".join(f"{n},{'9' * 30} 1\n" for n in names))
    assert f"{huge}: row 2 ({names[0]}): RLE value 9999" in cli("validate", huge, "--data", data)
    beyond = tmp_path / "beyond.csv"
    beyond.write_text("img,rle_mask\n" + "".join(f"{n},1 999999\n" for n in names))
    assert "row 2" in cli("validate", beyond, "--data", data)
    (data / "sample_submission.csv").write_text("img,rle_mask\n")
    assert "sample_submission.csv: no rows after the header" in cli("validate", huge, "--data", data)


def test_dataloader_worker_error_is_one_line(cli, tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    folds = load_folds(tmp_path / "folds.csv")
    victim = data / "train" / sorted(folds[folds.fold == 0].img)[5]  # read by validation, in a worker
    _truncate(victim)
    err = cli("train", "--data", data, "--folds-csv", tmp_path / "folds.csv", "--set", "train.num_workers=1")
    assert (
        err == f"error: {victim}: truncated JPEG (no end-of-image marker FF D9 at the end); re-copy or re-download it"
    )


def test_debug_shows_the_traceback(cli, tiny_data, tmp_path, monkeypatch):
    argv = ["folds", "--data", str(tiny_data), "--out", str(tmp_path / "f.csv"), "--k", "1"]
    with pytest.raises(DataError, match="--k 1"):
        main([*argv, "--debug"])
    monkeypatch.setenv("PIPELINE_DEBUG", "1")
    with pytest.raises(DataError, match="--k 1"):
        main(argv)
