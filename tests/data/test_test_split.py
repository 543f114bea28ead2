"""The test split (folds/test_split.csv, pipeline/data/folds.py): drawn by its written rule, read strictly,
and kept out of both sides of every fold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.core.errors import DataError
from pipeline.data.folds import (
    load_folds,
    load_test_split,
    make_test_split,
    read_index,
    scan_train,
    split_fold,
)
from pipeline.data.layout import Layout
from tests.conftest import REAL, run_cli

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


def test_test_split_stage_draws_from_the_listed_cars_minus_the_excluded(tiny_data, tmp_path, capsys):
    """`python -m pipeline test-split`: fold 0 of k stratified folds over the usable cars (a data root or a
    list) minus every excluded list, written as car_id, mask_area."""
    index = tmp_path / "index.csv"
    scan_train(Layout(tiny_data), n_jobs=1).to_csv(index, index=False)
    cars = sorted({p.name[:12] for p in (tiny_data / "train").glob("*.jpg")})
    (tmp_path / "excluded.txt").write_text(f"# kept for another purpose\n{cars[0]}\n")
    out = tmp_path / "split.csv"
    args = ["--index", index, "--cars", tiny_data, "--exclude", tmp_path / "excluded.txt", "--k", "2", "--seed", "3"]
    code, printed, _ = run_cli(capsys, "test-split", *args, "--out", out)
    drawn = pd.read_csv(out, dtype={"car_id": str})
    assert code == 0 and list(drawn.columns) == ["car_id", "mask_area"] and f"over the {len(cars) - 1} cars" in printed
    rule = make_test_split(read_index(index), cars, {cars[0]}, k=2, seed=3)  # the written rule
    assert drawn.equals(rule) and 0 < len(drawn) < len(cars) - 1 and cars[0] not in set(drawn.car_id)
    assert load_test_split(out) == frozenset(drawn.car_id)
    code, _, err = run_cli(capsys, "test-split", *args, "--out", tmp_path / "x.csv", "--exclude", tmp_path / "none.txt")
    assert code == 2 and "none.txt: no such car list" in err and not (tmp_path / "x.csv").exists()
