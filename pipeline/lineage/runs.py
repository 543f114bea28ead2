"""Run folders: which folders are completed runs, and their out-of-fold maps.

A run is ``<runs_dir>/<name>/fold<k>/`` as training wrote it: its ``oof.json`` (written last, the
"fold complete" mark) names the same member and fold as the folder, and is bound to the
``best.pt`` beside it by content hash. Only such folders count. A copy kept as a backup
(``fold0_old``, ``fold0.bak``, ``vgg11_v1/fold0`` copied from ``vgg11``) is skipped with a warning
naming it, so it is never taken for another fold or another member.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ..core.config import SPEED_SETTINGS, run_name_problem
from ..core.identity import file_sha256
from ..core.io_utils import check_csv_name, plain_name, read_json, stored_path
from ..data.layout import DataError, Layout, decode_file, read_mask
from ..masks.probability import HALF

FOLD_DIR_RE = re.compile(r"fold(\d+)")
_OOF_KEYS = {"fold": int, "tta": list, "height": int, "width": int, "checkpoint": str}


# A full run (``fold: full``, every car trained on) writes final.pt (the last epoch's model) and
# full.json last, its "complete" mark and record; it has no out-of-fold maps, so it is never a fold.
FINAL = "final.pt"
FULL_SUMMARY = "full.json"


def clear_fold_outputs(run_dir: Path) -> None:
    """``--fresh``: remove everything a previous run of this fold wrote (the maps included)."""
    for name in ("last.pt", "best.pt", "oof.json", "oof_dice.csv", "history.csv", FINAL, FULL_SUMMARY):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "oof", ignore_errors=True)


def oof_disagreement(path: Path, info: dict) -> str | None:
    """How a fold's ``oof.json`` disagrees with what made its maps, or None.

    ``oof/source.json`` (written before the maps) is the record of what they were predicted with;
    oof.json repeats its TTA, precision and checkpoint for readers, and its input size is the
    checkpoint's. A hand-edited oof.json would be tuned on, submitted and scored with settings the
    maps were not made with: every reader (and ``lineage``) checks both agree.
    """
    marker = path.parent / "oof" / "source.json"
    if not marker.is_file():
        return f"{marker} not found, so nothing says what its maps were predicted with"
    try:
        source = read_json(marker)
    except DataError as e:
        return str(e)
    if not isinstance(source, dict):
        return f"{marker}: not a record of the maps"
    differ = [
        k
        for k, theirs in (
            ("checkpoint_sha256", source.get("checkpoint_sha256")),
            ("tta", source.get("tta")),
            ("precision", source.get("precision", info.get("precision"))),
        )
        if info.get(k) != theirs
    ]
    recorded_fold = (info.get("folds") or {}).get("fold_sha")
    if recorded_fold is not None and recorded_fold != source.get("fold_sha"):
        differ.append("folds")
    if info.get("threshold", HALF) != HALF:  # the maps are scored at probability 0.5
        differ.append("threshold")
    if differ:
        return f"its {', '.join(differ)} disagree(s) with {marker}, which its maps were made with (edited?)"
    from ..models.unet import read_checkpoint

    ckpt = path.parent / info["checkpoint"]
    image = read_checkpoint(ckpt, mmap=True)["config"].get("image", {})
    if (image.get("height"), image.get("width")) != (info["height"], info["width"]):
        return (
            f"its input size {info['height']}x{info['width']} is not its checkpoint's "
            f"{image.get('height')}x{image.get('width')} (edited?)"
        )
    return None


def read_oof_summary(path: Path) -> dict:
    """One fold's oof.json, checked: it must exist as written by training, for the best.pt beside it."""
    info = read_json(path)  # DataError naming the file if it is not JSON
    bad = [k for k, t in _OOF_KEYS.items() if not isinstance(info, dict) or not isinstance(info.get(k), t)]
    if bad:
        raise DataError(f"{path}: malformed oof.json (missing or wrong {bad}); re-run that fold's training")
    plain_name(info["checkpoint"], f"{path}: 'checkpoint'")
    sha = info.get("checkpoint_sha256")
    ckpt = path.parent / info["checkpoint"]
    if sha is None:
        raise DataError(
            f"{path}: no checkpoint hash (written by an older version); re-run that fold's training command "
            "to re-predict its out-of-fold maps"
        )
    if not ckpt.is_file() or file_sha256(ckpt) != sha:
        raise DataError(
            f"{path}: written for another {info['checkpoint']} than the one beside it (retrained or copied); "
            "re-run that fold's training command to re-predict its out-of-fold maps"
        )
    problem = oof_disagreement(path, info)
    if problem:
        raise DataError(f"{path}: {problem}; re-run that fold's training command to re-predict and rewrite it")
    return info


def _not_a_run(summary: Path) -> str | None:
    """Why the folder of ``summary`` is not a run the pipeline wrote there (a copy, a backup), or None.

    Decided from the folder names and what oof.json says of itself, before anything else is checked,
    so a stale backup never blocks the runs beside it.
    """
    fold_dir, member_dir = summary.parent, summary.parent.parent
    m = FOLD_DIR_RE.fullmatch(fold_dir.name)
    if m is None:
        return "its folder is not named fold<k> (a copy or backup?)"
    problem = run_name_problem(member_dir.name)
    if problem:
        return f"its member folder's name {problem.split(' ', 1)[1]}"
    try:
        info = read_json(summary)
    except DataError:
        return None  # a damaged oof.json in a real run folder: read_oof_summary names it
    if not isinstance(info, dict):
        return None  # malformed: read_oof_summary names it
    fold, name = info.get("fold"), info.get("name")
    if isinstance(fold, int) and fold != int(m[1]):
        return f"it holds fold {fold}, not fold {m[1]} (a copy or backup?)"
    if isinstance(name, str) and name != member_dir.name:
        return f"it holds a run of {name!r}, not of {member_dir.name!r} (a copy or backup?)"
    return None


def _check_complete(runs_dir: Path, found: dict[str, list[dict]], allow_incomplete: bool, quiet: bool = False) -> None:
    """Every member must have every fold: of its folds CSV (recorded ``k``) and of the other members."""
    union = {f["fold"] for folds in found.values() for f in folds}
    problems = []
    for name, folds in found.items():
        have = {f["fold"] for f in folds}
        ks = {f["folds"]["k"] for f in folds if isinstance(f.get("folds"), dict) and "k" in f["folds"]}
        expected = union | set(range(max(ks))) if ks else union
        if expected - have:
            missing = sorted(expected - have)
            where = ", ".join(str(runs_dir / name / f"fold{k}" / "oof.json") for k in missing[:3])
            problems.append(f"{name} lacks fold(s) {missing} ({where} not found)")
        splits = {f["folds"]["folds_sha"] for f in folds if isinstance(f.get("folds"), dict)}
        if len(splits) > 1:  # one member's folds must partition one split, or images repeat or go missing
            problems.append(f"{name}: its folds were trained on {len(splits)} different folds CSVs")
    if not problems:
        return
    if not allow_incomplete:
        raise DataError(
            f"{runs_dir}: incomplete member(s): {'; '.join(problems)}. Train the missing folds, or pass "
            "--allow-incomplete to tune on the images all members cover"
        )
    for p in problems if not quiet else ():
        tqdm.write(f"warning: {p} (--allow-incomplete)", file=sys.stderr)


def discover(
    runs_dir: str | Path, names: list[str] | None = None, allow_incomplete: bool = False, quiet: bool = False
) -> dict[str, list[dict]]:
    """{member name: [oof.json of each completed fold, with its run dir]} sorted by name and fold."""
    runs_dir = Path(runs_dir)
    found: dict[str, list[dict]] = {}
    for summary in sorted(runs_dir.glob("*/fold*/oof.json")):
        if names and summary.parent.parent.name not in names:
            continue
        why_not = _not_a_run(summary)
        if why_not:
            if not quiet:
                tqdm.write(
                    f"warning: {summary.parent}: skipped, {why_not}; only run folders training wrote count",
                    file=sys.stderr,
                )
            continue
        info = read_oof_summary(summary)
        info["run_dir"] = str(summary.parent)
        found.setdefault(summary.parent.parent.name, []).append(info)
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise DataError(f"{runs_dir}: no completed fold for member(s) {missing}; found {sorted(found)}")
        found = {n: found[n] for n in names}
    if not found:
        raise DataError(no_runs_message(runs_dir))
    for name, folds in found.items():
        folds.sort(key=lambda f: f["fold"])
        ttas = {tuple(f["tta"]) for f in folds}
        sizes = {(f["height"], f["width"]) for f in folds}
        if len(ttas) > 1 or len(sizes) > 1:
            raise DataError(
                f"{runs_dir / name}: folds disagree on TTA {ttas} or input size {sizes}; retrain them with one config"
            )
        precisions = {f"fold{f['fold']}": f.get("precision") for f in folds}
        if len(set(precisions.values())) > 1:  # the recipe applies one precision per member
            shown = ", ".join(f"{k} {v}" for k, v in precisions.items())
            raise DataError(
                f"{runs_dir / name}: folds' out-of-fold maps were predicted in different precisions ({shown}); "
                "re-run the odd folds' training command with the same predict.amp (and device) to re-predict them"
            )
    _check_complete(runs_dir, found, allow_incomplete, quiet)
    return found


# The config sections that make two runs "the same recipe" (paths, device and fold may differ).
RECIPE_SECTIONS = ("seed", "model", "image", "augment", "train", "predict")


# Settings of those sections that never change the training itself: how fast it goes, and how often a
# fold run is scored on its held-out cars (which epochs best.pt may be taken from; a full run, which
# has none, still records a val_every).
NOT_THE_RECIPE = SPEED_SETTINGS | {"train.val_every"}


def _section(config: dict, key: str):
    value = config.get(key)
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if f"{key}.{k}" not in NOT_THE_RECIPE}
    return value


def same_recipe(a: dict, b: dict) -> list[str]:
    """The config sections in which two runs' configs (dicts) differ: [] when one recipe made both."""
    return [k for k in RECIPE_SECTIONS if _section(a, k) != _section(b, k)]


def cross_validation(runs_dir: str | Path, name: str, config: dict, folds_sha: str, holder: Path) -> dict | None:
    """The completed folds of ``name`` beside a full run, trained with its config on its split: what
    their out-of-fold figures say the full run is worth (None when there are none). Paths are stored
    relative to ``holder``, the file the record goes into."""
    from ..models.unet import read_checkpoint

    try:
        found = discover(runs_dir, [name], allow_incomplete=True, quiet=True)[name]
    except DataError:
        return None
    folds, shas, per_fold, n, total = [], [], {}, 0, 0.0
    for f in found:
        run_dir = Path(f["run_dir"])
        ckpt_config = read_checkpoint(run_dir / f["checkpoint"], mmap=True)["config"]
        if (f.get("folds") or {}).get("folds_sha") != folds_sha or same_recipe(ckpt_config, config):
            continue  # another split or another config under the same name: not this recipe's evidence
        folds.append(f["fold"])
        shas.append(file_sha256(run_dir / "oof.json"))
        per_fold[str(f["fold"])] = f["mean_dice"]
        n += f["n_images"]
        total += f["mean_dice"] * f["n_images"]
    if not folds:
        return None
    return {
        "runs": stored_path(Path(runs_dir) / name, holder),
        "folds": folds,
        "oof_sha256": shas,
        "oof_dice_at_0.5": {"mean": total / n, "per_fold": per_fold, "n_images": n},
    }


def no_runs_message(runs_dir: Path) -> str:
    msg = f"{runs_dir}: no completed training run (*/fold*/oof.json); run `make train` first"
    demo = Path("demo/runs")
    if Path(runs_dir) != demo and any(demo.glob("*/fold*/oof.json")):
        msg += " (the demo's runs are in demo/runs: add RUNS=demo/runs DATA=demo/data)"
    return msg


def oof_path(run_dir: str | Path, img: str) -> Path:
    return Path(run_dir) / "oof" / f"{Path(img).stem}.png"


def _read_q(path: Path) -> np.ndarray:
    q = decode_file(path, cv2.IMREAD_UNCHANGED) if path.is_file() else None
    if q is None:
        raise DataError(f"{path}: out-of-fold map missing or unreadable; re-run that fold's training")
    if q.dtype != np.uint8 or q.ndim != 2:
        raise DataError(f"{path}: not an 8-bit single-channel out-of-fold map; re-run that fold's training")
    return q


def member_images(folds: list[dict]) -> dict[str, str]:
    """{image: run dir of the fold that holds its out-of-fold map} over a member's completed folds."""
    by_image: dict[str, str] = {}
    for f in folds:
        scores_csv = Path(f["run_dir"]) / "oof_dice.csv"
        if not scores_csv.is_file():
            raise DataError(f"{scores_csv}: not found; re-run that fold's training")
        check_csv_name(scores_csv)
        images = pd.read_csv(scores_csv).img
        for img in images:
            plain_name(img, str(scores_csv))
            if img in by_image:
                raise DataError(
                    f"{scores_csv}: {img} is also an out-of-fold image of {by_image[img]}; "
                    "the member's folds overlap (trained on different folds CSVs?)"
                )
            by_image[img] = f["run_dir"]
    return by_image


def load_maps(layout: Layout, img: str, maps_of: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """(the members' uint8 maps (M, H, W), the GIF mask) of one image; ``maps_of`` from member_images."""
    mask = read_mask(layout.mask(img))
    maps = np.stack([_read_q(oof_path(by_image[img], img)) for by_image in maps_of])
    if maps.shape[1:] != mask.shape:
        raise DataError(f"{layout.mask(img)}: mask {mask.shape} vs out-of-fold map {maps.shape[1:]}")
    return maps, mask
