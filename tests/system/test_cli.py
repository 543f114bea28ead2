"""The command line (pipeline/__main__.py): help for every option with its default, the stages in the order
of the work, old spellings that still work, one-line errors with exit status 2, --debug."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from pipeline.__main__ import STAGE_GROUPS, build_parser, main
from pipeline.core.config import load_config
from pipeline.data.layout import DataError
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import run_cli, tiny_config
from tests.conftest import run_cli_stderr as _cli


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["folds", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "f.csv")]) == 2
    err = capsys.readouterr().err
    assert "nowhere/train: not found" in err and "Kaggle layout" in err
    assert not (tmp_path / "f.csv").exists()


def test_train_without_folds_says_what_to_run(tmp_path, capsys):
    code = main(["train", "--config", "configs/demo-mobilenetv3.yaml", "--folds-csv", str(tmp_path / "none.csv")])
    assert code == 2 and "run `make folds` first" in capsys.readouterr().err


def test_stage_help_exits_cleanly():
    for stage in ("demo-data", "folds", "train", "ensemble", "submission", "validate"):
        with pytest.raises(SystemExit) as e:
            main([stage, "--help"])
        assert e.value.code == 0


@pytest.mark.parametrize("stage", ["predict", "report", "download", "submit"])
def test_user_stage_help_exits_cleanly(stage):
    with pytest.raises(SystemExit) as e:
        main([stage, "--help"])
    assert e.value.code == 0


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


def test_debug_shows_the_traceback(cli, tiny_data, tmp_path, monkeypatch):
    argv = ["folds", "--data", str(tiny_data), "--out", str(tmp_path / "f.csv"), "--k", "1"]
    with pytest.raises(DataError, match="--k 1"):
        main([*argv, "--debug"])
    monkeypatch.setenv("PIPELINE_DEBUG", "1")
    with pytest.raises(DataError, match="--k 1"):
        main(argv)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["predict", "{test}", "--checkpoint", "{ckpt}", "--batch-size", "0"], "--batch-size 0: must be at least 1"),
        (["report", "--runs", "{runs}", "--data", "{data}", "--worst", "-1"], "--worst -1: must be at least 0"),
        (["report", "--runs", "{runs}", "--data", "{data}", "--jobs", "0"], "--jobs 0: use -1 (all cores)"),
        (["evaluate", "--runs", "{runs}", "--data", "{data}", "--jobs", "-3"], "--jobs -3: use -1 (all cores)"),
        (["report", "--runs", "{runs}", "--data", "{tmp}/nowhere"], "nowhere/train_masks: not found. Expected"),
        (
            ["lineage", "{data}/sample_submission.csv"],
            "not a submission, recipe, checkpoint, oof.json, full.json or folds CSV",
        ),
    ],
)
def test_user_stage_options_are_one_line_errors(lab, tiny_data, tmp_path, capsys, argv, expected):
    runs, _ = lab
    values = {"test": tiny_data / "test", "ckpt": runs / "a/fold0/best.pt", "runs": runs, "data": tiny_data}
    values["tmp"] = tmp_path
    argv = [a.format(**values) for a in argv] + (
        ["--out", str(tmp_path / "out")] if argv[0] in ("predict", "report") else []
    )
    code, err = _cli(capsys, *argv)
    assert code == 2 and expected in _one_error_line(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compile_option_of_train_and_predict(tiny_data, tmp_path):
    """The README's ARGS="--compile" reaches train and predict (a backend name picks other than inductor)."""
    from pipeline.__main__ import main

    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"train.epochs": 1})
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.to_yaml())
    assert main(["train", "--config", str(config), "--compile", "eager"]) == 0
    assert load_config(cfg.run_dir / "config.yaml").train.compile == "eager"
    image = sorted((tiny_data / "test").glob("*.jpg"))[0]
    args = ["predict", str(image), "--out", str(tmp_path / "out"), "--checkpoint", str(cfg.run_dir / "best.pt")]
    assert main(args + ["--device", "cpu", "--compile", "eager"]) == 0
    assert (tmp_path / "out" / f"{image.stem}_mask.png").is_file()
    assert main(args + ["--device", "cpu", "--compile", "nonsense"]) == 2


# -- the command line's shape: help, defaults, the stages' order, old spellings ------------------------------
def _stage_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = build_parser()
    stages = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return parser, dict(stages)


def test_every_option_of_every_stage_has_help_and_shows_its_default():
    parser, stages = _stage_parsers()
    no_help, no_default = [], []
    for name, s in {"python -m pipeline": parser, **stages}.items():
        text = " ".join(s.format_help().split())  # argparse wraps lines
        for action in s._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue  # old spellings (listed as deprecated below), and the stages themselves
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not (action.help or "").strip():
                no_help.append(label)
            worth_showing = action.default not in (None, False, []) and action.default is not argparse.SUPPRESS
            if worth_showing and "default" not in action.help and f"(default: {action.default})" not in text:
                no_default.append(label)
    assert not no_help, f"options without help: {no_help}"
    assert not no_default, f"options whose help does not show the default: {no_default}"
    assert len(stages) >= 17 and all(s.description for s in stages.values())


def test_stages_are_listed_in_groups_in_the_order_of_the_work(capsys):
    _, stages = _stage_parsers()
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    listed = [
        ln.split()[0] for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ") and ln.split()[0] in stages
    ]
    unplaced = sorted(set(stages) - {n for _, names in STAGE_GROUPS for n in names})
    assert e.value.code == 0 and not unplaced, f"add {unplaced} to STAGE_GROUPS in pipeline/__main__.py"
    assert listed == [n for _, names in STAGE_GROUPS for n in names]  # each stage once, grouped
    work = ["download", "folds", "train", "ensemble", "submission", "merge", "submit"]
    assert [s for s in listed if s in work] == work


@pytest.mark.parametrize("stage, default", [("submission", None), ("bench", 2)])
def test_workers_is_the_old_spelling_of_num_workers(stage, default, capsys):
    parser, stages = _stage_parsers()
    assert parser.parse_args([stage, "--workers", "3"]).num_workers == 3
    assert "note: --workers is deprecated; use --num-workers" in capsys.readouterr().err
    assert parser.parse_args([stage, "--num-workers", "3"]).num_workers == 3
    assert parser.parse_args([stage]).num_workers == default and capsys.readouterr().err == ""
    assert "--workers" not in stages[stage].format_help()  # the help shows one spelling


def test_an_old_spelling_still_runs_the_stage_and_says_it_is_deprecated(tiny_data, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--data", tiny_data, "--out", out, "--figures", "2", "--images", "4", "--size", "32x48"]
    code, _, err = run_cli(capsys, *args, "--workers", "0")
    assert code == 0 and "note: --workers is deprecated; use --num-workers" in err
    assert ", 0 workers," in json.loads(out.read_text())["host_setup"]
    code, _, err = run_cli(capsys, *args, "--num-workers", "0")
    assert code == 0 and "deprecated" not in err
