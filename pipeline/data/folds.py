"""Group k-fold by car, stratified by the car's mean mask area; and the test split.

All 16 views of a car land in one fold (views of one car are near-duplicates, so splitting
them would leak). Cars are binned by mean mask area (quantiles) and the bins are spread evenly
over the folds with scikit-learn's StratifiedKFold at car level, which is group k-fold by
construction. Deterministic for a given seed.

The test split (``folds/test_split.csv``) is a fixed set of cars that a config naming it
(``test_split:``) keeps out of training, validation and out-of-fold tuning: what stands for a
model that ships. It is drawn by the same rule as the folds (``make_test_split``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import delayed
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from ..core.config import FULL
from ..core.io_utils import atomic_path, check_csv_name, plain_name
from ..core.parallel import parallel
from .layout import DataError, Layout, check_jpeg_complete, image_size, list_images, parse_name, read_mask

COLUMNS = ["img", "car_id", "view", "fold", "mask_area", "width", "height"]
N_VIEWS = 16  # Carvana photographs every car from 16 angles, views 01..16


def _inspect(layout: Layout, img: str) -> tuple[float, int, int]:
    """Check one image/mask pair; return (mask area fraction, width, height)."""
    w, h = image_size(layout.train_image(img))
    check_jpeg_complete(layout.train_image(img))  # the header alone reads fine from a truncated file
    mask_path = layout.mask(img)
    mw, mh = image_size(mask_path)
    if (mw, mh) != (w, h):
        raise DataError(f"{mask_path}: mask is {mw}x{mh} but its image {img} is {w}x{h}")
    mask = read_mask(mask_path)
    return float(mask.mean()), w, h


def scan_train(layout: Layout, n_jobs: int = -1) -> pd.DataFrame:
    """List train images with their masks; raise DataError naming any inconsistent file."""
    layout.require(layout.train_dir, layout.masks_dir)
    images = list_images(layout.train_dir)
    if not images:
        raise DataError(f"{layout.train_dir}: no .jpg images found")
    masks = sorted(p.name for p in layout.masks_dir.iterdir() if p.name.endswith("_mask.gif"))
    expected = {layout.mask(i).name for i in images}
    missing = sorted(expected - set(masks))
    if missing:
        raise DataError(
            f"{layout.masks_dir / missing[0]}: mask missing for a train image ({len(missing)} missing in all)"
        )
    orphans = sorted(set(masks) - expected)
    if orphans:
        raise DataError(f"{layout.masks_dir / orphans[0]}: mask without a train image ({len(orphans)} such masks)")
    rows = [(img, *parse_name(img)) for img in images]
    stats = parallel(n_jobs)(delayed(_inspect)(layout, img) for img in tqdm(images, desc="check masks", unit="img"))
    df = pd.DataFrame(rows, columns=["img", "car_id", "view"])
    df[["mask_area", "width", "height"]] = pd.DataFrame(stats, columns=["mask_area", "width", "height"])
    # Rounded as folds.csv and the published index store it, so both give the same folds.
    df["mask_area"] = df["mask_area"].round(6)
    dup = df[df.duplicated(["car_id", "view"], keep=False)]
    if len(dup):
        raise DataError(f"{layout.train_dir / dup.img.iloc[0]}: duplicate car/view")
    empty = df[df.mask_area == 0]
    if len(empty):
        raise DataError(f"{layout.mask(empty.img.iloc[0])}: mask is empty (no car pixels)")
    return df


def check_views(df: pd.DataFrame, strict: bool = False) -> list[str]:
    """Cars without exactly the views 01..16: returned (and printed as warnings), or a DataError if strict."""
    problems = []
    for car, views in df.groupby("car_id", sort=True).view:
        bad = sorted(v for v in views if not 1 <= v <= N_VIEWS)
        if bad:
            problems.append(f"car {car}: view number(s) {bad} outside 01..{N_VIEWS}")
        elif len(views) != N_VIEWS:
            missing = sorted(set(range(1, N_VIEWS + 1)) - set(views))
            problems.append(f"car {car}: {len(views)} views, expected {N_VIEWS} (missing {missing})")
    if problems and strict:
        raise DataError(f"{len(problems)} car(s) with unexpected views (--strict): " + "; ".join(problems[:5]))
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    return problems


def assign_folds(df: pd.DataFrame, k: int = 5, seed: int = 42, n_bins: int = 5) -> pd.DataFrame:
    """Add a ``fold`` column: group k-fold by car id, stratified by the car's mean mask area."""
    if k < 2:
        raise DataError(f"--k {k}: k-fold needs at least 2 folds")
    cars = df.groupby("car_id", sort=True)["mask_area"].mean().reset_index()
    if len(cars) < k:
        raise DataError(f"{len(cars)} cars found; {k} folds need at least {k} cars")
    # Quantile bins with at least k cars each, so every bin can be spread over all folds.
    n_bins = max(1, min(n_bins, len(cars) // k))
    ranks = cars.mask_area.rank(method="first").to_numpy() - 1
    cars["bin"] = (ranks * n_bins // len(cars)).astype(int)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    cars["fold"] = -1
    for fold, (_, idx) in enumerate(skf.split(np.zeros(len(cars)), cars.bin)):
        cars.loc[cars.index[idx], "fold"] = fold
    out = df.drop(columns=["fold"], errors="ignore").merge(cars[["car_id", "fold"]], on="car_id")
    return out.sort_values("img").reset_index(drop=True)[COLUMNS]


INDEX_COLUMNS = ["img", "car_id", "view", "mask_area", "width", "height"]


def read_index(path: str | Path) -> pd.DataFrame:
    """A train-set index (``img, car_id, view, mask_area, width, height``, one row per image, as in
    ``kaggle_train_index.csv``) in place of the images: the same folds without the data."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: index file not found")
    df = pd.read_csv(path, dtype=_TEXT_COLUMNS)
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; an index has {INDEX_COLUMNS}")
    if df.empty:
        raise DataError(f"{path}: no rows")
    for img, car, view in zip(df.img, df.car_id, df.view):
        if parse_name(img) != (car, view):
            raise DataError(f"{path}: row {img!r} says car {car!r} view {view!r}; the name says otherwise")
    dup = df[df.img.duplicated()]
    if len(dup):
        raise DataError(f"{path}: image {dup.img.iloc[0]} listed twice")
    return df[INDEX_COLUMNS].assign(mask_area=df.mask_area.round(6)).sort_values("img").reset_index(drop=True)


def make_folds(
    data_dir: str | Path | None,
    out_csv: str | Path,
    k: int = 5,
    seed: int = 42,
    n_jobs: int = -1,
    index: str | Path | None = None,
    strict: bool = False,
) -> pd.DataFrame:
    """Folds from the train images and masks under ``data_dir``, or from an ``index`` CSV of them."""
    if k < 2:
        raise DataError(f"--k {k}: k-fold needs at least 2 folds")
    table = read_index(index) if index else scan_train(Layout(data_dir), n_jobs=n_jobs)
    check_views(table, strict=strict)
    df = assign_folds(table, k=k, seed=seed)
    check_split(df, out_csv)  # what every reader checks, so the writer never writes what they refuse
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6f")
    return df


# Car ids are 12 hex digits: some (02159e548029) read as numbers unless pandas is told they are text.
_TEXT_COLUMNS = {"img": str, "car_id": str}


def check_split(df: pd.DataFrame, path: str | Path) -> None:
    """Group k-fold integrity: DataError naming the file and the first problem.

    Every image once, named as Carvana names it and with its own car id; every car in exactly one
    fold; folds numbered 0..k-1 with none empty (k >= 2). Out-of-fold scores leak otherwise: a car
    in two folds is trained on and scored on, a repeated row is scored twice.
    """
    dup = df[df.img.duplicated()]
    if len(dup):
        raise DataError(f"{path}: image {dup.img.iloc[0]} is listed {int((df.img == dup.img.iloc[0]).sum())} times")
    for img, car in zip(df.img, df.car_id):
        try:
            named = parse_name(plain_name(img, str(path)))[0]
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
        if named != car:
            raise DataError(f"{path}: row {img} says car {car!r}, the name says {named!r}")
    split = df.groupby("car_id").fold.unique()
    split = split[split.map(len) > 1]
    if len(split):
        raise DataError(
            f"{path}: car {split.index[0]} is in folds {sorted(int(f) for f in split.iloc[0])}; all views of a car "
            f"must be in one fold, or its held-out images leak into training ({len(split)} such car(s)). "
            "Re-run `make folds`"
        )
    folds = sorted(int(f) for f in df.fold.unique())
    k = len(folds)
    if k < 2 or folds != list(range(k)):
        raise DataError(
            f"{path}: fold numbers {folds}; expected 0..k-1 with every fold present (k >= 2). Re-run `make folds`"
        )


# -- the test split ----------------------------------------------------------------------------------
TEST_SPLIT_COLUMNS = ["car_id", "mask_area"]
_CAR_ID_RE = r"[0-9a-f]{12}"


def make_test_split(index: pd.DataFrame, cars: list[str], exclude: set[str], k: int = 8, seed: int = 42):
    """The test split: fold 0 of ``assign_folds(k, seed)`` over ``cars`` minus ``exclude``, so it is
    stratified by mean mask area as the folds are. With the 270 usable cars minus the 60 that earlier
    models and choices were made on, k=8 draws 27 cars. Returns ``car_id, mask_area`` (car means)."""
    pool = sorted(set(cars) - set(exclude))
    missing = sorted(set(pool) - set(index.car_id))
    if missing:
        raise DataError(f"car {missing[0]} is not in the index ({len(missing)} such cars)")
    drawn = assign_folds(index[index.car_id.isin(pool)], k=k, seed=seed)
    test = drawn[drawn.fold == 0].groupby("car_id", sort=True).mask_area.mean().round(6)
    return test.reset_index()[TEST_SPLIT_COLUMNS]


def read_car_list(path: str | Path) -> list[str]:
    """Car ids from a text file (one per line, # comments) or a Kaggle data root's train/ photos."""
    p = Path(path)
    if p.is_dir():
        return sorted({parse_name(i)[0] for i in list_images(Layout(p).train_dir)})
    if not p.is_file():
        raise DataError(f"{p}: no such car list (a text file of car ids, or a data root with train/)")
    return sorted({line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")})


def write_test_split(
    out: str | Path, index: str | Path, cars: str | Path, exclude=(), k: int = 8, seed: int = 42
) -> tuple[pd.DataFrame, int]:
    """``make_test_split`` over the cars of ``cars`` (``read_car_list``) minus those of every ``exclude``
    list, from the train-set ``index``, written to ``out`` at once or not at all. Returns (the test split,
    the number of cars it was drawn from)."""
    excluded: set[str] = set()
    for source in exclude:
        excluded |= set(read_car_list(source))
    usable = read_car_list(cars)
    test = make_test_split(read_index(index), usable, excluded, k=k, seed=seed)
    with atomic_path(out) as tmp:
        test.to_csv(tmp, index=False, float_format="%.6f")
    return test, len(set(usable) - excluded)


def load_test_split(path: str | Path) -> frozenset[str]:
    """The car ids of a test split CSV (a ``car_id`` column); DataError naming the file and problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: test split file not found (test_split: in the config; null for none)")
    check_csv_name(path)
    try:
        df = pd.read_csv(path, dtype={"car_id": str})
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable as a CSV ({str(e).splitlines()[0][:120]})") from None
    if "car_id" not in df.columns or df.empty:
        raise DataError(f"{path}: a test split lists car ids in a 'car_id' column, one row per car")
    bad = df.car_id[~df.car_id.fillna("").str.fullmatch(_CAR_ID_RE)]
    if len(bad):
        raise DataError(f"{path}: {bad.iloc[0]!r} is not a Carvana car id (12 hex digits)")
    if df.car_id.duplicated().any():
        raise DataError(f"{path}: car {df.car_id[df.car_id.duplicated()].iloc[0]} listed twice")
    return frozenset(df.car_id)


def split_fold(folds: pd.DataFrame, fold: int | str, test_cars: frozenset[str] = frozenset()):
    """(training rows, held-out rows) of ``fold`` ("full": every car trains, none is held out), with
    the test split's cars in neither."""
    held = folds.fold == fold if fold != FULL else pd.Series(False, index=folds.index)
    kept = ~folds.car_id.isin(test_cars)
    return folds[~held & kept].reset_index(drop=True), folds[held & kept].reset_index(drop=True)


def load_folds(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: folds file not found; run `make folds` first")
    check_csv_name(path)
    try:
        df = pd.read_csv(path, dtype=_TEXT_COLUMNS)
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as e:  # pandas' parser errors are ValueErrors
        raise DataError(f"{path}: unreadable as a CSV ({str(e).splitlines()[0][:120]}); re-run `make folds`") from None
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}; re-run `make folds`")
    if df.empty or not pd.api.types.is_integer_dtype(df.fold) or (df.fold < 0).any():
        raise DataError(f"{path}: no rows, or a 'fold' that is not a whole number >= 0; re-run `make folds`")
    if df[["img", "car_id"]].isna().any().any():
        raise DataError(f"{path}: an empty 'img' or 'car_id'; re-run `make folds`")
    check_split(df, path)
    return df


def summary(df: pd.DataFrame) -> str:
    g = df.groupby("fold").agg(cars=("car_id", "nunique"), images=("img", "size"), mask_area=("mask_area", "mean"))
    return g.to_string(float_format=lambda v: f"{v:.4f}")
