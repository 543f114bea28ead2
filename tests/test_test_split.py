"""The test split (folds/test_split.csv): drawn by its written rule, and never seen by training,
validation, out-of-fold maps or the choices made on them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import REAL, tiny_config, tiny_test_split

from pipeline.__main__ import main
from pipeline.core.errors import DataError, ResumeError
from pipeline.data.folds import load_folds, load_test_split, split_fold
from pipeline.stages.train import Trainer, run

FOLDS = Path(__file__).resolve().parents[1] / "folds"


def test_committed_test_split_is_27_cars_outside_the_earlier_60():
    test = load_test_split(FOLDS / "test_split.csv")
    published = load_folds(FOLDS / "folds.csv")
    assert len(test) == 27 and test <= set(published.car_id)
    per_fold = published[published.car_id.isin(test)].groupby("fold").car_id.nunique()
    assert per_fold.min() >= 5 and per_fold.max() <= 6  # spread over the published folds
    if REAL.is_dir():  # no earlier model or choice of this project saw a test car
        earlier = {p.name.split("_")[0] for p in (REAL / "train").glob("*.jpg")}
        assert len(earlier) == 60 and not test & earlier


def test_committed_test_split_is_what_its_rule_draws(tmp_path):
    index, cars = REAL.parent / "kaggle_train_index.csv", REAL.parent / "train_cars.txt"
    if not (index.is_file() and cars.is_file() and REAL.is_dir()):
        pytest.skip(f"the Kaggle train index, train_cars.txt or carvana_real not found under {REAL.parent} (../shared)")
    out = tmp_path / "test_split.csv"
    main(["test-split", "--index", str(index), "--cars", str(cars), "--exclude", str(REAL), "--out", str(out)])
    assert out.read_bytes() == (FOLDS / "test_split.csv").read_bytes()


def test_folds_270_are_the_published_folds_of_the_usable_cars():
    published = pd.read_csv(FOLDS / "folds.csv", dtype=str)
    sub = pd.read_csv(FOLDS / "folds_270.csv", dtype=str)
    assert sub.car_id.nunique() == 270 and len(sub) == 4320
    merged = sub.merge(published, how="left", indicator=True)
    assert (merged["_merge"] == "both").all()  # every row exactly as published
    cars = REAL.parent / "train_cars.txt"
    if cars.is_file():
        usable = {c.strip() for c in cars.read_text().splitlines() if c.strip() and not c.startswith("#")}
        assert set(sub.car_id) == usable
    assert load_test_split(FOLDS / "test_split.csv") <= set(sub.car_id)


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


def test_split_fold_keeps_test_cars_out_of_both_sides():
    folds = pd.DataFrame({"img": list("abcd"), "car_id": ["c1", "c1", "c2", "c3"], "fold": [0, 0, 1, 0]})
    train, held = split_fold(folds, 0, frozenset({"c3"}))
    assert list(train.car_id) == ["c2"] and list(held.car_id) == ["c1", "c1"]
    train, held = split_fold(folds, "full", frozenset({"c1"}))
    assert list(train.car_id) == ["c2", "c3"] and held.empty


@pytest.mark.parametrize(
    "text, problem",
    [("img\n0495dcf27283_01.jpg\n", "'car_id' column"), ("car_id\nnot-a-car\n", "not a Carvana car id"),
     ("car_id\n0495dcf27283\n0495dcf27283\n", "listed twice")],
)  # fmt: skip
def test_a_bad_test_split_file_is_named(tmp_path, text, problem):
    path = tmp_path / "split.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=problem):
        load_test_split(path)
    with pytest.raises(DataError, match="not found"):
        load_test_split(tmp_path / "missing.csv")


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
