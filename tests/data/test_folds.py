"""Folds (pipeline/data/folds.py): group k-fold by car, stratified by mask area; bad images, masks, views
and folds CSVs named; the published folds are those of the Kaggle train index."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.__main__ import main
from pipeline.data.folds import assign_folds, load_folds, make_folds, scan_train
from pipeline.data.layout import DataError, Layout, read_mask
from tests.conftest import REAL, needs_real_data, tiny_config
from tests.conftest import copy_data as _copy
from tests.conftest import first_train_image as _first_train_image
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import run_cli_stderr as _cli


def test_group_kfold_invariants(tiny_data, tmp_path):
    df = make_folds(tiny_data, tmp_path / "f.csv", k=3, seed=1, n_jobs=1)
    assert len(df) == 6 * 16 and df.img.is_unique
    assert (df.groupby("car_id").fold.nunique() == 1).all(), "a car's views were split across folds"
    assert (df.groupby("car_id").size() == 16).all()
    cars_per_fold = df.groupby("fold").car_id.nunique()
    assert sorted(cars_per_fold.index) == [0, 1, 2] and cars_per_fold.max() - cars_per_fold.min() <= 1
    row = df[df.img == df.img.iloc[5]].iloc[0]
    assert row.mask_area == pytest.approx(read_mask(Layout(tiny_data).mask(row.img)).mean(), abs=1e-6)
    assert pd.read_csv(tmp_path / "f.csv").equals(pd.read_csv(tmp_path / "f.csv"))


def test_deterministic_and_seeded(tiny_data, tmp_path):
    a = make_folds(tiny_data, tmp_path / "a.csv", k=3, seed=3, n_jobs=1)
    b = make_folds(tiny_data, tmp_path / "b.csv", k=3, seed=3, n_jobs=1)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert a.equals(b)


def test_stratified_by_area():
    # 50 cars: areas 0.01..0.50; each fold should get cars from every area quintile.
    rows = [
        (f"{i:012x}_{v:02d}.jpg", f"{i:012x}", v, 0.01 * (i + 1), 1918, 1280) for i in range(50) for v in range(1, 17)
    ]
    df = pd.DataFrame(rows, columns=["img", "car_id", "view", "mask_area", "width", "height"])
    out = assign_folds(df, k=5, seed=0)
    cars = out.groupby("car_id").agg(fold=("fold", "first"), area=("mask_area", "mean"))
    cars["bin"] = pd.qcut(cars.area, 5, labels=False)
    assert (cars.groupby("fold").size() == 10).all()
    assert (pd.crosstab(cars.fold, cars.bin) == 2).all().all()
    means = cars.groupby("fold").area.mean()
    assert means.max() - means.min() < 0.05


def test_missing_mask_named(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    victim = sorted((data / "train_masks").iterdir())[3]
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        scan_train(Layout(data), n_jobs=1)


def test_mask_size_mismatch_named(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    victim = sorted((data / "train_masks").iterdir())[0]
    small = Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").convert("P")
    small.save(victim)
    with pytest.raises(DataError, match=rf"{victim.name}.*10x10"):
        scan_train(Layout(data), n_jobs=1)


def test_bad_mask_values_named(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    victim = sorted((data / "train_masks").iterdir())[1]
    codes = np.array(Image.open(victim)) * 2  # palette indices 0/2 (black/white) ...
    codes[:2, :2] = 1  # ... and a few grey pixels: three levels, not a binary mask
    bad = Image.fromarray(codes, mode="P")
    bad.putpalette([0, 0, 0, 128, 128, 128, 255, 255, 255])
    bad.save(victim, format="GIF", optimize=False)
    with pytest.raises(DataError, match=rf"{victim.name}.*grey levels \[0, 128, 255\].*expected a binary mask"):
        scan_train(Layout(data), n_jobs=1)


def test_bad_name_named(tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    (data / "train" / "holiday.jpg").write_bytes(
        (data / "train" / sorted(p.name for p in (data / "train").iterdir())[0]).read_bytes()
    )
    (data / "train_masks" / "holiday_mask.gif").write_bytes(next((data / "train_masks").iterdir()).read_bytes())
    with pytest.raises(DataError, match="holiday.jpg"):
        scan_train(Layout(data), n_jobs=1)


def test_too_few_cars():
    df = pd.DataFrame({"img": ["a"], "car_id": ["x"], "view": [1], "mask_area": [0.1], "width": [1], "height": [1]})
    with pytest.raises(DataError, match="at least 5 cars"):
        assign_folds(df, k=5)


@pytest.fixture(scope="module")
def real_folds(tmp_path_factory):
    """The folds of the 60 real cars: every real image and mask read once for the tests below."""
    if not REAL.is_dir():
        pytest.skip(f"real Carvana sample not found at {REAL} (../shared)")
    return make_folds(REAL, tmp_path_factory.mktemp("real") / "folds.csv", k=5, seed=42)


@pytest.mark.slow
@needs_real_data()
def test_real_sample_folds(real_folds):
    df = real_folds
    assert len(df) == 960 and df.car_id.nunique() == 60
    assert (df.groupby("car_id").fold.nunique() == 1).all()
    assert (df.groupby("fold").car_id.nunique() == 12).all()
    assert ((df.width == 1918) & (df.height == 1280)).all()
    assert df.mask_area.between(0.09, 0.42).all()


def test_an_index_gives_the_same_folds_as_the_images(tiny_data, tmp_path):
    from_images = make_folds(tiny_data, tmp_path / "a.csv", k=3, seed=5, n_jobs=1)
    index = tmp_path / "index.csv"
    from_images.drop(columns=["fold"]).sample(frac=1, random_state=0).to_csv(index, index=False)  # any row order
    make_folds(None, tmp_path / "b.csv", k=3, seed=5, index=index)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    bad = pd.read_csv(index)
    bad.loc[0, "view"] = 17 if bad.loc[0, "view"] != 17 else 1
    bad.to_csv(index, index=False)
    with pytest.raises(DataError, match=f"{index}: row '{bad.img[0]}'"):
        make_folds(None, tmp_path / "c.csv", index=index)
    bad.drop(columns=["mask_area"]).to_csv(index, index=False)
    with pytest.raises(DataError, match="missing columns \\['mask_area'\\]"):
        make_folds(None, tmp_path / "c.csv", index=index)


@pytest.mark.real_data
def test_published_folds_are_the_folds_of_the_kaggle_train_index(tmp_path):
    """folds/folds.csv (committed) is a group k-fold of the whole Kaggle train set, and exactly what
    `make folds INDEX=../shared/data/kaggle_train_index.csv` gives."""

    published = Path(__file__).resolve().parents[2] / "folds" / "folds.csv"
    df = pd.read_csv(published)
    assert len(df) == 5088 and df.car_id.nunique() == 318 and df.img.is_unique
    assert (df.groupby("car_id").fold.nunique() == 1).all() and (df.groupby("car_id").size() == 16).all()
    assert sorted(df.fold.unique()) == [0, 1, 2, 3, 4]
    cars = df.groupby("fold").car_id.nunique()
    assert cars.max() - cars.min() <= 1
    area = df.groupby("fold").mask_area.mean()
    assert area.max() - area.min() < 0.01  # stratified: folds alike in car size
    index = REAL.parent / "kaggle_train_index.csv"
    if not index.is_file():
        pytest.skip(f"Kaggle train index not found at {index} (../shared)")
    make_folds(None, tmp_path / "f.csv", index=index)
    assert (tmp_path / "f.csv").read_bytes() == published.read_bytes()


@needs_real_data()
def test_real_masks_match_the_published_index(real_folds):
    """The index's mask areas are those of the real masks (so index folds = image folds)."""
    index = pd.read_csv(REAL.parent / "kaggle_train_index.csv").set_index("img")
    scanned = real_folds.set_index("img")  # make_folds' scan_train, rounded as the index is
    assert len(scanned) == 960
    assert (index.loc[scanned.index, "mask_area"] == scanned.mask_area).all()


@pytest.mark.slow
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


def test_folds_k_below_2(cli, tiny_data, tmp_path):
    assert "--k 1: k-fold needs at least 2 folds" in cli(
        "folds", "--data", tiny_data, "--out", tmp_path / "f.csv", "--k", "1"
    )


@pytest.mark.parametrize("fault", ["split car", "repeated row", "fold numbers 0,1,3", "car id of another"])
def test_folds_csv_that_would_leak_is_refused(tiny_data, tmp_path, capsys, fault):
    df = pd.read_csv(tiny_data.parent / "folds.csv", dtype={"car_id": str})
    car = df.car_id.iloc[0]
    if fault == "split car":
        df.loc[df.index[df.car_id == car][:3], "fold"] = (df.fold[df.car_id == car].iloc[0] + 1) % 3
    elif fault == "repeated row":
        df = pd.concat([df, df.iloc[[5]]])
    elif fault == "fold numbers 0,1,3":
        df.loc[df.fold == 2, "fold"] = 3
    else:
        df.loc[df.index[0], "car_id"] = df.car_id[df.car_id != car].iloc[0]
    bad = tmp_path / "folds.csv"
    df.to_csv(bad, index=False)
    expected = {
        "split car": f"car {car} is in folds",
        "repeated row": "is listed 2 times",
        "fold numbers 0,1,3": r"fold numbers \[0, 1, 3\]",
        "car id of another": "the name says",
    }[fault]
    with pytest.raises(DataError, match=expected):
        load_folds(bad)
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    code, err = _cli(capsys, "train", "--config", config, "--folds-csv", bad)
    assert code == 2 and str(bad) in _one_error_line(err)
    assert not (tmp_path / "runs").exists()
