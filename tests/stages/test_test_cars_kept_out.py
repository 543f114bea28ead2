"""The test split's cars are never seen by training, validation, out-of-fold maps, the recipe tuned on
them, or a score that claims to be on unseen cars."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.core.errors import ResumeError
from pipeline.data.folds import load_folds, load_test_split
from pipeline.stages.train import Trainer, run
from tests.conftest import tiny_config, tiny_test_split


def test_no_test_car_in_training_validation_or_out_of_fold_maps(tiny_data, tmp_path):
    split = tmp_path / "test_split.csv"
    test = tiny_test_split(tiny_data, split)
    cfg = tiny_config(tiny_data, tmp_path / "runs", fold=0, test_split=str(split))
    trainer = Trainer(cfg, quiet=True)
    assert not set(trainer.train_df.car_id) & test and not set(trainer.val_df.car_id) & test
    folds = load_folds(cfg.folds_csv)
    assert set(trainer.train_df.car_id) | set(trainer.val_df.car_id) == set(folds.car_id) - test
    assert trainer.folds_id["test_split_cars"] == sorted(test)
    run(cfg, quiet=True)
    maps = {p.stem.split("_")[0] for p in (cfg.run_dir / "oof").glob("*.png")}
    assert maps == set(trainer.val_df.car_id) and not maps & test


def test_a_full_run_records_the_cars_it_saw_and_the_test_split(tiny_data, tmp_path):
    split = tmp_path / "test_split.csv"
    test = tiny_test_split(tiny_data, split)
    cfg = tiny_config(tiny_data, tmp_path / "runs", fold="full", test_split=str(split), **{"train.epochs": 1})
    summary = run(cfg, quiet=True)
    trained = summary["trained_on"]
    assert not set(trained["cars"]) & test and trained["test_split_cars"] == sorted(test)
    assert trained["n_cars"] == len(set(load_folds(cfg.folds_csv).car_id) - test)


def test_a_run_resumed_with_another_test_split_is_refused(tiny_data, tmp_path):
    split = tmp_path / "test_split.csv"
    tiny_test_split(tiny_data, split)
    cfg = tiny_config(tiny_data, tmp_path / "runs", fold=0)
    run(cfg, quiet=True)  # trained without a test split
    with pytest.raises(ResumeError, match="another test split"):
        Trainer(tiny_config(tiny_data, tmp_path / "runs", fold=0, test_split=str(split)), quiet=True)


@pytest.mark.slow
def test_the_recipe_of_a_split_run_never_tuned_on_a_test_car(split_model):
    split, apart, saw = split_model
    test = load_test_split(split)
    spec = __import__("json").loads((apart / "pipeline.json").read_text())
    tuned, trained = (
        set(spec["source"]["recipe"]["tuned_on_cars"]),
        set(spec["source"]["trained"]["trained_on"]["cars"]),
    )
    assert tuned and trained and not (tuned | trained) & test
    spec = __import__("json").loads((saw / "pipeline.json").read_text())
    assert set(spec["source"]["recipe"]["tuned_on_cars"]) & test  # without the split, fold 0's test car tuned it


@pytest.mark.slow
def test_test_split_score_only_on_unseen_test_cars(split_model, tiny_data, tmp_path, capsys):
    split, apart, saw = split_model
    per_image = tmp_path / "per_image.csv"
    argv = ["evaluate", "--data", str(tiny_data), "--test-split", str(split), "--per-image", str(per_image)]
    assert main([*argv, "--pretrained", str(apart)]) == 0
    cars = {img.split("_")[0] for img in pd.read_csv(per_image).img}
    assert cars == load_test_split(split)  # every view of every test car, and nothing else
    assert len(pd.read_csv(per_image)) == 16 * len(cars)
    capsys.readouterr()
    assert main([*argv, "--pretrained", str(saw)]) == 2
    assert "trained on" in capsys.readouterr().err  # the model that saw a test car is refused
    assert main(["evaluate", "--data", str(tiny_data), "--test-split", str(split), "--runs", "x"]) == 2
