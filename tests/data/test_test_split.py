"""The test split (folds/test_split.csv, pipeline/data/folds.py): drawn by its written rule, read strictly,
and kept out of both sides of every fold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.core.errors import DataError
from pipeline.data.folds import load_folds, load_test_split, split_fold
from tests.conftest import REAL

FOLDS = Path(__file__).resolve().parents[2] / "folds"


def test_committed_test_split_is_27_cars_outside_the_earlier_60():
    test = load_test_split(FOLDS / "test_split.csv")
    published = load_folds(FOLDS / "folds.csv")
    assert len(test) == 27 and test <= set(published.car_id)
    per_fold = published[published.car_id.isin(test)].groupby("fold").car_id.nunique()
    assert per_fold.min() >= 5 and per_fold.max() <= 6  # spread over the published folds
    if REAL.is_dir():  # no earlier model or choice of this project saw a test car
        earlier = {p.name.split("_")[0] for p in (REAL / "train").glob("*.jpg")}
        assert len(earlier) == 60 and not test & earlier


@pytest.mark.real_data
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
