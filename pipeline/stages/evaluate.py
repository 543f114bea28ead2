"""Score predictions against the ground-truth masks at full resolution (``python -m pipeline evaluate``).

Sources, each scored per image (metrics.score_image) and summarised over images (metrics.summarize):
- ``--runs DIR``: the out-of-fold maps of every completed run (member) under DIR, at the run's
  threshold (0.5), over all its trained folds;
- ``--recipe FILE``: the ensemble recipe's blend of those maps, its threshold and post-processing;
- ``--submission FILE --masks DIR``: any Kaggle submission (.csv or .csv.gz) against a mask folder;
- ``--pred-dir DIR --masks DIR``: a folder of predicted mask images (nonzero = car).
A mask folder holds ``<image stem>_mask.gif`` (the Kaggle ``train_masks/``) or ``_mask.png`` files.
Runs and recipes have probabilities: their per-image table also holds the review score
(pipeline/inference/review.py), and ``review_lines`` says how much of the error the top 5 % by score hold.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from joblib import delayed
from tqdm import tqdm

from ..core.errors import LineageError
from ..core.io_utils import plain_name
from ..core.parallel import parallel
from ..data.folds import load_test_split
from ..data.layout import DataError, Layout, decode_file, list_images, parse_name, read_image, read_mask
from ..inference import review
from ..inference.engine import blend
from ..inference.recipe import Recipe
from ..lineage.provenance import verify_recipe_oof
from ..lineage.runs import discover, load_maps, member_images
from ..masks import rle
from ..masks.metrics import PER_IMAGE_COLUMNS, SUMMARY_KEYS, score_image, summarize
from ..masks.submission_csv import SubmissionError, submission_rows


def _table(images: list[str], rows: list, with_review: bool = False) -> pd.DataFrame:
    """Per-image metrics; with_review: ``rows`` are (metrics, review features) pairs and the table gets
    each image's review score (pipeline/inference/review.py), computed from the probabilities as the submission does."""
    metrics = [r[0] for r in rows] if with_review else rows
    df = pd.DataFrame(metrics, columns=list(PER_IMAGE_COLUMNS))
    df.insert(0, "img", images)
    if with_review:
        df["review_score"] = review.scores_of(images, [r[1] for r in rows])
    return df


def _parallel(fn, items: list, n_jobs: int, desc: str, quiet: bool) -> list:
    bar = tqdm(items, desc=desc, unit="img", disable=quiet)
    return parallel(n_jobs, batch_size=8)(delayed(fn)(i) for i in bar)


def score_runs(
    runs_dir: str | Path, data_dir: str | Path, names: list[str] | None = None, n_jobs: int = -1, quiet: bool = True
) -> dict[str, pd.DataFrame]:
    """{member name: per-image table over its out-of-fold images} at the runs' threshold (probability 0.5,
    as their out-of-fold Dice), without post-processing.

    A member still missing folds is scored on the folds it has (``n_images`` says how many)."""
    layout = Layout(data_dir)
    layout.require(layout.masks_dir)
    out = {}
    plain = Recipe()
    for name, folds in discover(runs_dir, names, allow_incomplete=True).items():
        by_image = member_images(folds)
        images = sorted(by_image)

        def one(img: str, by_image=by_image) -> tuple[dict, dict]:
            (q,), mask = load_maps(layout, img, [by_image])
            _, car = plain.mask(q)
            return score_image(car, mask), review.features_of(q[None], [1], plain.threshold)

        out[name] = _table(images, _parallel(one, images, n_jobs, f"evaluate {name}", quiet), with_review=True)
    return out


def score_recipe(recipe_path: str | Path, data_dir: str | Path, n_jobs: int = -1, quiet: bool = True) -> pd.DataFrame:
    """Per-image table of the recipe's blend (weights, threshold, post-processing) on out-of-fold maps."""
    recipe_path = Path(recipe_path)
    recipe = Recipe.load(recipe_path)
    verify_recipe_oof(recipe, recipe_path)  # the maps it was tuned on, not a retrained fold's
    layout = Layout(data_dir)
    maps_of = recipe_maps(recipe)
    images = sorted(set.intersection(*(set(b) for b in maps_of)))

    def one(img: str) -> tuple[dict, dict]:
        maps, mask = load_maps(layout, img, maps_of)
        car = recipe_prediction(layout, img, maps, recipe)
        # The review features of the mask scored (after post-processing), as the submission's list has them.
        return score_image(car, mask), review.features_of(maps, recipe.weights, recipe.threshold, final=car)

    return _table(images, _parallel(one, images, n_jobs, "evaluate recipe", quiet), with_review=True)


def pretrained_predictions(pretrained, images: list[Path], device: str = "auto", batch_size: int = 4):
    """Yield (name, uint8 map (1, H, W) as NumPy, 0/1 mask after the model's threshold and
    post-processing, the photo's path) for ``images`` with an exported model (pipeline/stages/export.py)."""
    from ..core.device import pick_device
    from ..inference.engine import Engine

    dev = pick_device(device)
    recipe = pretrained.recipe
    engine = Engine([pretrained.member()], dev, batch_size=batch_size, num_workers=0)
    by_name = {p.name: p for p in images}
    for name, q in engine.predict(images):
        maps = q.cpu().numpy()
        _, car = recipe.mask(maps[0], lambda name=name: read_image(by_name[name]))
        yield name, maps, car, by_name[name]


def _unrecorded(pretrained, what: str, test_split=None) -> str:
    if test_split is not None:
        return (
            f"{pretrained.source} does not record which cars it was {what}; that the test split {test_split} is "
            "unseen rests on how both were made (folds/README.md)"
        )
    return (
        f"{pretrained.source} does not record the cars it was {what}: its scores may include them (not out-of-fold; "
        "export it again with this version to have them recorded)"
    )


def seen_note(pretrained, test_split=None) -> str | None:
    """What every output of a score says when the folder cannot show the cars scored are unseen: None where
    its record lists the cars it was trained and tuned on (those are left out, or refused)."""
    from ..inference.model_folder import cars_seen

    missing = [what for what, cars in cars_seen(pretrained.spec).items() if cars is None]
    return "; ".join(_unrecorded(pretrained, what, test_split) for what in missing) or None


def unseen_test_cars(pretrained, test_split: str | Path) -> frozenset[str]:
    """The test split's cars, once the model folder's record shows it never trained on them and never
    tuned its threshold or post-processing on them (a LineageError naming the cars otherwise; a note
    where the folder does not record which cars it saw)."""
    from ..inference.model_folder import cars_seen

    test = load_test_split(test_split)
    for what, cars in cars_seen(pretrained.spec).items():
        if cars is None:
            print(f"note: {_unrecorded(pretrained, what, test_split)}", file=sys.stderr)
        elif cars & test:
            raise LineageError(
                f"{pretrained.source}: {what} {len(cars & test)} cars of the test split {test_split} "
                f"(e.g. {sorted(cars & test)[0]}); its score there would not stand for it"
            )
    return test


def score_pretrained(
    source: str | Path,
    data_dir: str | Path,
    *,
    device: str = "auto",
    quiet: bool = True,
    pretrained=None,
    test_split: str | Path | None = None,
) -> pd.DataFrame:
    """Per-image table of an exported model (folder or hub id) on the train images of ``data_dir``
    that have a mask, at full resolution, with its threshold, TTA and post-processing; and the review score.
    Images of the cars its record says it was trained or tuned on are left out. ``test_split``: only the
    images of its cars, checked to be cars the model never saw."""
    from ..inference.model_folder import load_pretrained

    layout = Layout(data_dir)
    layout.require(layout.train_dir, layout.masks_dir)
    pretrained = pretrained or load_pretrained(source, "cpu")
    images = [layout.train_image(i) for i in list_images(layout.train_dir) if layout.mask(i).is_file()]
    seen = pretrained.seen_cars
    if test_split is None and seen:  # a model's score on its own training or tuning cars stands for nothing
        unseen = [p for p in images if parse_name(p.name)[0] not in seen]
        if images and not unseen:
            raise DataError(
                f"{layout.train_dir}: {pretrained.source} was trained or tuned on every car here; a score on them "
                "would not stand for it (point --data at cars it never saw, or --test-split)"
            )
        images = unseen
    elif test_split is None and not quiet:
        print(f"note: {seen_note(pretrained)}", file=sys.stderr)
    if test_split is not None:
        test = unseen_test_cars(pretrained, test_split)
        images = [p for p in images if parse_name(p.name)[0] in test]
        found = {parse_name(p.name)[0] for p in images}
        if found != test:
            raise DataError(
                f"{layout.train_dir}: {len(test - found)} cars of the test split {test_split} have no photo with a "
                f"mask here (e.g. {sorted(test - found)[0]}); a test-split score needs every one of them"
            )
    if not images:
        raise DataError(f"{layout.train_dir}: no image with a mask in {layout.masks_dir} to score")
    rows, names = [], []
    threshold = pretrained.recipe.threshold
    predictions = pretrained_predictions(pretrained, images, device)
    for name, maps, car, _ in tqdm(predictions, total=len(images), desc="evaluate model", unit="img", disable=quiet):
        mask = read_mask(layout.mask(name))
        if mask.shape != car.shape:
            raise DataError(f"{layout.mask(name)}: mask {mask.shape} vs photo {car.shape}")
        rows.append((score_image(car, mask), review.features_of(maps, [1], threshold, final=car)))
        names.append(name)
    table = _table(names, rows, with_review=True)
    table.attrs["note"] = seen_note(pretrained, test_split)  # marked in every output (the summary, --json)
    return table


def recipe_maps(recipe: Recipe) -> list[dict]:
    """Per member of the recipe, in its order, {image: out-of-fold map} of the runs it was tuned on."""
    found = discover(recipe.runs_dir, [m.name for m in recipe.members], allow_incomplete=True)
    return [member_images(found[m.name]) for m in recipe.members]


def recipe_prediction(layout: Layout, img: str, maps: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The recipe's 0/1 mask of one train image from its members' (M, H, W) maps, as the submission makes
    it: the weighted blend, then ``Recipe.mask`` (the threshold, then the post-processing, with the photo
    where a step needs it)."""
    _, car = recipe.mask(blend(maps, recipe.weights), lambda: read_image(layout.train_image(img)))
    return car


def mask_path(masks_dir: Path, img: str) -> Path | None:
    stem = Path(img).stem
    for suffix in ("_mask.gif", "_mask.png"):
        if (masks_dir / f"{stem}{suffix}").is_file():
            return masks_dir / f"{stem}{suffix}"
    return None


def _mask_stems(masks_dir: Path) -> set[str]:
    if not masks_dir.is_dir():
        raise DataError(f"{masks_dir}: mask folder not found")
    return {p.name.rsplit("_mask.", 1)[0] for p in masks_dir.iterdir() if p.name.endswith(("_mask.gif", "_mask.png"))}


def _check_pairs(listed: list[str], masks_dir: Path, what: str, where: Path) -> None:
    """Every listed image has a mask and every mask is listed; the error names the first stray."""
    stems = [Path(i).stem for i in listed]
    have = _mask_stems(masks_dir)
    no_mask = [i for i, s in zip(listed, stems) if s not in have]
    if no_mask:
        raise DataError(f"{where}: {no_mask[0]} has no mask in {masks_dir} ({len(no_mask)} such {what})")
    no_pred = sorted(have - set(stems))
    if no_pred:
        raise DataError(
            f"{masks_dir / (no_pred[0] + '_mask.*')}: mask has no {what[:-1]} in {where} ({len(no_pred)} such)"
        )


def _read_rows(path: Path) -> list[tuple[str, str]]:
    """(img, rle) rows, as strictly as validate reads a submission: two fields, a plain image name, once each."""
    rows, seen = [], {}
    try:
        with submission_rows(path) as reader:  # as validate reads it: gzip or plain by name and content
            for n, r in enumerate(reader, 2):
                if not r:
                    continue
                where = f"{path}: row {n}"
                if len(r) != 2:
                    raise DataError(f"{where}: {len(r)} field(s), expected 2 (img,rle_mask); an empty mask is 'img,'")
                plain_name(r[0], where)
                if r[0] in seen:
                    raise DataError(f"{where}: {r[0]} again (first in row {seen[r[0]]}); every image once")
                seen[r[0]] = n
                rows.append((r[0], r[1]))
    except SubmissionError as e:
        raise DataError(str(e)) from None
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: unreadable as a CSV ({str(e)[:120]})") from None
    return rows


def score_submission(path: str | Path, masks_dir: str | Path, n_jobs: int = -1, quiet: bool = True) -> pd.DataFrame:
    path, masks_dir = Path(path), Path(masks_dir)
    if not path.is_file():
        raise DataError(f"{path}: submission not found")
    rows = _read_rows(path)
    _check_pairs([r[0] for r in rows], masks_dir, "rows", path)

    def one(row: tuple[str, str]) -> dict:
        mask = read_mask(mask_path(masks_dir, row[0]))
        try:
            pred = rle.decode(row[1], *mask.shape)
        except rle.RLEError as e:
            raise DataError(f"{path}: {row[0]}: {e}") from None
        return score_image(pred, mask)

    return _table([r[0] for r in rows], _parallel(one, rows, n_jobs, "evaluate submission", quiet))


def _pred_files(pred_dir: Path) -> dict[str, Path]:
    """{image stem: predicted mask file}; ``<stem>_mask.png`` (as `predict` writes) or ``<stem>.png``."""
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found")
    out = {}
    for p in sorted(pred_dir.glob("*.png")):
        stem = p.stem[: -len("_mask")] if p.stem.endswith("_mask") else p.stem
        if not p.stem.endswith(("_cutout", "_composite")):
            out[stem] = p
    return out


def read_prediction(path: Path) -> np.ndarray:
    """A predicted mask image as what it shows: car where nonzero, at any bit depth.

    8- or 16-bit, grey, grey+alpha, RGB or RGBA: a 16-bit 0/1 PNG is a 0/1 mask (not black). Colour
    channels must agree (a grey picture); an alpha channel must be opaque, or be the mask itself
    with black colour channels (a cut-out's alpha). Anything else is refused, naming the file.
    """
    im = decode_file(path, cv2.IMREAD_UNCHANGED)
    if im is None:
        raise DataError(f"{path}: cannot decode predicted mask")
    if im.dtype not in (np.uint8, np.uint16) or im.ndim not in (2, 3):
        raise DataError(f"{path}: {im.dtype} image with shape {im.shape}; expected an 8- or 16-bit mask")
    if im.ndim == 3:
        channels = im.shape[2]
        if channels not in (2, 3, 4):
            raise DataError(f"{path}: {channels} channels; expected a greyscale mask")
        colour = im[..., :1] if channels == 2 else im[..., :3]
        alpha = im[..., channels - 1] if channels in (2, 4) else None
        if colour.shape[2] == 3 and not (
            np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 1], colour[..., 2])
        ):
            raise DataError(f"{path}: a colour picture, not a mask; save the mask as greyscale (car nonzero)")
        grey = colour[..., 0]
        if alpha is not None and alpha.min() < alpha.max():
            if grey.any():
                raise DataError(f"{path}: has transparency and pixels; save the mask without an alpha channel")
            grey = alpha  # only the alpha carries the mask
        im = grey
    return im > 0


def score_pred_dir(pred_dir: str | Path, masks_dir: str | Path, n_jobs: int = -1, quiet: bool = True) -> pd.DataFrame:
    pred_dir, masks_dir = Path(pred_dir), Path(masks_dir)
    preds = _pred_files(pred_dir)
    stems = sorted(preds)
    _check_pairs([f"{s}.jpg" for s in stems], masks_dir, "predictions", pred_dir)

    def one(stem: str) -> dict:
        mask = read_mask(mask_path(masks_dir, stem + ".jpg"))
        pred = read_prediction(preds[stem])
        if pred.shape != mask.shape:
            raise DataError(
                f"{preds[stem]}: {pred.shape[1]}x{pred.shape[0]}, its mask is {mask.shape[1]}x{mask.shape[0]}"
            )
        return score_image(pred, mask)

    return _table([f"{s}.jpg" for s in stems], _parallel(one, stems, n_jobs, "evaluate predictions", quiet))


def format_table(summaries: dict[str, dict]) -> str:
    cols = [k for k in SUMMARY_KEYS if k != "worst"]
    df = pd.DataFrame({name: {c: s[c] for c in cols} for name, s in summaries.items()}).T
    df["n_images"] = df["n_images"].astype(int)
    marks = [f"note on {name}: {s['note']}" for name, s in summaries.items() if s.get("note")]
    return "\n".join([df.to_string(float_format=lambda v: f"{v:.5f}"), *marks])


# What an output file of `evaluate` holds, to recognise one before replacing it.
def _is_summary_json(path: Path) -> bool:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    if not isinstance(data, dict):
        return False
    parts = [data] if set(SUMMARY_KEYS) <= set(data) else list(data.values())
    return bool(parts) and all(isinstance(p, dict) and set(SUMMARY_KEYS) <= set(p) for p in parts)


def _is_per_image_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith("source,img,")
    except (OSError, UnicodeDecodeError):
        return False


def check_outputs(json_path: str | None, per_image: str | None, force: bool) -> None:
    """Before any scoring: ``--json`` and ``--per-image`` replace only a file of their own kind (an earlier
    summary, an earlier per-image table), never a folds CSV or a recipe typed there, unless ``force``."""
    for path, own, what in ((json_path, _is_summary_json, "an evaluate summary"), (per_image, _is_per_image_csv,
                            "a per-image table of evaluate")):  # fmt: skip
        if path is None or force:
            continue
        p = Path(path)
        if p.is_dir():
            raise DataError(f"{p}: a folder; name a file to write")
        if (p.exists() or p.is_symlink()) and not own(p):
            raise DataError(f"{p}: exists and is not {what}; refusing to replace it. Name another file, or add --force")


def evaluate(
    *,
    runs: str | None = None,
    recipe: str | None = None,
    data: str = "data",
    members: list[str] | None = None,
    submission: str | None = None,
    pred_dir: str | None = None,
    masks: str | None = None,
    n_jobs: int = -1,
    quiet: bool = False,
    pretrained: str | None = None,
    device: str = "auto",
    test_split: str | None = None,
) -> tuple[dict[str, dict], pd.DataFrame]:
    """Score every requested source; return ({source: summary}, per-image table with a source column)."""
    if (submission or pred_dir) and not masks:
        raise DataError("--submission and --pred-dir need --masks DIR (e.g. data/train_masks)")
    tables: dict[str, pd.DataFrame] = {}
    if runs:
        tables.update(score_runs(runs, data, members, n_jobs, quiet))
    if recipe:
        tables["recipe"] = score_recipe(recipe, data, n_jobs, quiet)
    if submission:
        tables[Path(submission).name] = score_submission(submission, masks, n_jobs, quiet)
    if pred_dir:
        tables[Path(pred_dir).name] = score_pred_dir(pred_dir, masks, n_jobs, quiet)
    if pretrained:
        from ..inference.model_folder import load_pretrained

        model = load_pretrained(pretrained, "cpu")
        tables[model.label] = score_pretrained(
            pretrained, data, device=device, quiet=quiet, pretrained=model, test_split=test_split
        )
    if not tables:
        raise DataError("nothing to evaluate: give --runs, --recipe, --submission, --pred-dir or --pretrained")
    summaries = {name: summarize(t) for name, t in tables.items()}
    for name, t in tables.items():
        if t.attrs.get("note"):  # a score that may include cars the model saw says so wherever it goes
            summaries[name]["note"] = t.attrs["note"]
    per_image = pd.concat([t.assign(source=name) for name, t in tables.items()], ignore_index=True)
    if "review_score" not in per_image:  # no source with probabilities (submissions, mask folders)
        per_image["review_score"] = np.nan
    return summaries, per_image[["source", "img", *PER_IMAGE_COLUMNS, "review_score"]]


def review_lines(per_image: pd.DataFrame) -> list[str]:
    """What the review score catches, per source that has one (``review.review_figures``)."""
    return [
        review.format_figures(name, review.review_figures(t))
        for name, t in per_image.groupby("source", sort=False)
        if t["review_score"].notna().all()
    ]


def json_payload(summaries: dict[str, dict]) -> dict:
    """One source: its summary object (exactly metrics.SUMMARY_KEYS, and ``note`` where its figures may
    include cars the model saw); several: {source: summary}."""
    for s in summaries.values():
        assert tuple(k for k in s if k != "note") == SUMMARY_KEYS
    return next(iter(summaries.values())) if len(summaries) == 1 else summaries
