"""Lineage: every artifact records what it was made from, and every stage that reads one checks it.

The chain, and what binds each link (all content hashes, so a copy to another host still holds):

    folds CSV   --split fingerprint: hash of every (img, fold) pair-->        last.pt, best.pt
    best.pt     --sha256 of best.pt, TTA, precision (oof/source.json)-->      out-of-fold maps, oof.json
    oof.json    --sha256 of each fold's best.pt and oof.json-->               recipe.json
    recipe.json --recipe hash + sha256 of every checkpoint + precision-->     submission rows, shards, predict outputs

Producers record the hashes; consumers verify them here and refuse a changed input with a
``LineageError`` naming the artifact, what changed and the command that rebuilds it. Each file is
hashed at most once per process (cached on its path, size and mtime), so a submission hashes its
checkpoints once, not once per image. ``python -m pipeline lineage FILE`` prints the chain behind
a submission, recipe, checkpoint or folds CSV and says which links still hold (pipeline/lineage/trace.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from ..core.config import FULL
from ..core.errors import LineageError, ModelFolderError, ResumeError
from ..core.identity import code_version, file_sha256, text_sha
from ..core.io_utils import RELATIVE_TO_FILE, resolve_stored, stored_path
from ..inference.model_folder import PIPELINE_JSON, fetch, folder_sha256
from ..inference.recipe import Recipe, RecipeMember


# -- link 1: folds CSV -> checkpoints --------------------------------------------------------------
def folds_fingerprint(folds: pd.DataFrame, fold: int | str, test_cars: frozenset[str] = frozenset()) -> dict:
    """Identity of the split: all (img, fold) pairs, and this fold's held-out set and cars.

    ``fold="full"`` (trained on every car): nothing is held out. ``test_cars``: the test split's cars,
    in neither set; its hash is part of the identity (a run resumed with another test split is
    another split) and the cars are listed, so the record says which cars a model never saw.
    """

    def sha(lines) -> str:
        return text_sha("\n".join(sorted(lines)))

    held = folds.fold == fold if fold != FULL else pd.Series(False, index=folds.index)
    return {
        "folds_sha": sha(f"{i},{f}" for i, f in zip(folds.img, folds.fold)),
        "fold_sha": sha(f"{i},{int(h)}" for i, h in zip(folds.img, held)),
        "k": int(folds.fold.nunique()),
        "held_out_cars": sorted(set(folds.car_id[held]) - test_cars),
        "n_train_images": int((~held & ~folds.car_id.isin(test_cars)).sum()),
        # The cars its weights see: what an exported model records, so that it is never scored on them.
        "train_cars": sorted(set(folds.car_id[~held]) - test_cars),
    } | ({"test_split_sha": sha(test_cars), "test_split_cars": sorted(test_cars)} if test_cars else {})


def trained_cars(ckpt: dict, checkpoint: str | Path) -> list[str] | None:
    """The cars a checkpoint's weights were trained on: its split's record (``train_cars``), or, for a
    checkpoint written before that record, the folds CSV it names, once it is shown to be the split it was
    trained on (the same fingerprint). None where neither can tell."""
    from ..data.folds import load_folds

    recorded = ckpt.get("folds") or {}
    if isinstance(recorded.get("train_cars"), list):
        return list(recorded["train_cars"])
    csv = lineage_folds_csv(ckpt, checkpoint)
    fold = (ckpt.get("config") or {}).get("fold")
    if csv is None or not csv.is_file() or fold is None or not recorded.get("fold_sha"):
        return None
    try:
        current = folds_fingerprint(load_folds(csv), fold, frozenset(recorded.get("test_split_cars", [])))
    except Exception:  # an unreadable or changed CSV tells nothing about this checkpoint
        return None
    if (current["folds_sha"], current["fold_sha"]) != (recorded.get("folds_sha"), recorded.get("fold_sha")):
        return None
    return current["train_cars"]


def check_same_folds(recorded: dict | None, current: dict, path: Path, folds_csv: str, doing: str) -> None:
    """Refuse to ``doing`` when ``path`` was trained on another split of the data."""
    same_test = recorded is None or recorded.get("test_split_sha") == current.get("test_split_sha")
    if same_test and (recorded is None or recorded.get("fold_sha") == current["fold_sha"]):
        return  # checkpoints written before fingerprints existed are trusted as before
    if not same_test:
        raise ResumeError(
            f"{path}: trained with another test split than this config's ({len(recorded.get('test_split_cars', []))} "
            f"cars then, {len(current.get('test_split_cars', []))} now); refusing to {doing}: its test cars would "
            "leak. Use the config it was trained with, another run name, or --fresh to start this fold over."
        )
    old, new = set(recorded.get("held_out_cars", [])), set(current["held_out_cars"])
    raise ResumeError(
        f"{path}: trained on a different split than {folds_csv} (held-out cars: {len(old - new)} left, "
        f"{len(new - old)} new); refusing to {doing}, the held-out cars would leak. "
        "Restore the folds CSV it was trained on, use another run name, or --fresh to start this fold over."
    )


def checkpoint_lineage(folds_csv: str | Path, checkpoint: str | Path) -> dict:
    """What a checkpoint records of its making beside its config and split fingerprint: the folds file
    (relative to the checkpoint's folder) and the code."""

    return {
        "folds_csv": stored_path(folds_csv, checkpoint),
        "paths": RELATIVE_TO_FILE,
        # where it was when the checkpoint was written: found there if the runs moved and the CSV did not
        "folds_csv_absolute": str(Path(folds_csv).absolute()),
        "code": code_version(),
    }


def lineage_folds_csv(ckpt: dict, checkpoint: str | Path) -> Path | None:
    """The folds CSV a checkpoint records, as a usable path (as written, for checkpoints of earlier versions)."""

    lineage = ckpt.get("lineage") or {}
    stored = lineage.get("folds_csv") or (ckpt.get("config") or {}).get("folds_csv")
    if not stored:
        return None
    path = resolve_stored(stored, checkpoint, lineage.get("paths") == RELATIVE_TO_FILE)
    fallback = lineage.get("folds_csv_absolute")
    if not path.is_file() and fallback and Path(fallback).is_file():  # the runs moved, the folds CSV did not
        return Path(fallback)
    return path


# -- link 2: best.pt -> out-of-fold maps -------------------------------------------------------------
def oof_source(checkpoint_sha: str, tta: list[str], fold_sha: str, precision: str) -> dict:
    """What a fold's out-of-fold maps are made from; ``oof/source.json`` holds it beside the maps."""
    return {"checkpoint_sha256": checkpoint_sha, "tta": list(tta), "fold_sha": fold_sha, "precision": precision}


# -- link 3: out-of-fold maps -> recipe --------------------------------------------------------------
def recipe_fold(run_dir: Path, info: dict) -> dict:
    """A member fold as the recipe records it: its checkpoint and out-of-fold summary, by content."""
    run_dir = Path(run_dir)
    return {
        "fold": info["fold"],
        "checkpoint": str(run_dir / info["checkpoint"]),
        "checkpoint_sha256": info["checkpoint_sha256"],
        "oof_sha256": file_sha256(run_dir / "oof.json"),
    }


def _rebuild_hint(ckpt: Path) -> str:
    return (
        f"re-run `make ensemble` to tune a recipe for the checkpoints there now (or restore {ckpt.name} "
        "from the run the recipe was tuned on)"
    )


def verify_recipe_checkpoints(recipe: Recipe, recipe_path: str | Path) -> list[str]:
    """The content hashes of the recipe's checkpoints, each checked against what the recipe recorded.

    Every member's checkpoints are hashed (once per process); a missing, replaced or retrained
    checkpoint is a LineageError naming it, since the recipe's input sizes, weights and threshold
    were tuned for the ones it recorded (a zero weight too was chosen against the old model).
    """
    shas = []
    for m in recipe.members:
        if m.model is not None:  # an exported model folder: the hash of its pipeline.json (which holds its files')
            shas.append(_verify_model_member(m, recipe_path))
            continue
        for ckpt, want in zip(m.checkpoints, m.checkpoint_sha256):
            ckpt = Path(ckpt)
            if not ckpt.is_file():
                raise LineageError(
                    f"{recipe_path}: member {m.name!r} checkpoint {ckpt} not found; {_rebuild_hint(ckpt)}"
                )
            got = file_sha256(ckpt)
            if got != want:
                raise LineageError(
                    f"{recipe_path}: member {m.name!r} checkpoint {ckpt} changed since the recipe was tuned "
                    f"(sha256 {want} then, {got} now: retrained, replaced or copied over); {_rebuild_hint(ckpt)}"
                )
            shas.append(got)
    return shas


def _verify_model_member(m: RecipeMember, recipe_path: str | Path) -> str:
    try:
        folder = fetch(m.model)
    except ModelFolderError as e:
        raise LineageError(f"{recipe_path}: member {m.name!r}: {e}") from None
    got = folder_sha256(folder) if (folder / PIPELINE_JSON).is_file() else None
    if got != m.model_sha256:
        raise LineageError(
            f"{recipe_path}: member {m.name!r}: model folder {m.model} is not the one the recipe was made for "
            f"(hash {m.model_sha256} then, {got} now); re-run `make submission PRETRAINED={m.model}`"
        )
    return got


def verify_recipe_oof(recipe: Recipe, recipe_path: str | Path) -> None:
    """The out-of-fold summaries (and so the maps) the recipe was tuned on are still the ones in the runs.
    (An exported model's figures are part of its folder, bound by the folder's hash.)"""
    for m in recipe.members:
        if m.model is not None:
            continue
        for ckpt, want in zip(m.checkpoints, m.oof_sha256 or [None] * len(m.checkpoints)):
            oof = Path(ckpt).parent / "oof.json"
            if want is None or not oof.is_file() or file_sha256(oof) != want:
                what = "not found" if not oof.is_file() else "changed since the recipe was tuned"
                raise LineageError(
                    f"{recipe_path}: member {m.name!r}: {oof} {what} (the fold was retrained or re-predicted); "
                    "re-run `make ensemble` to tune on the out-of-fold maps there now"
                )


# -- link 4: recipe -> submission rows, shards, predict outputs ----------------------------------------
def recipe_hash(recipe: Recipe) -> str:
    """What the rows depend on, of the recipe file as read (``Recipe.record``): its timestamps and code
    record are left out so that a re-tuned identical recipe matches, and so are its paths (the checkpoints
    are bound by their content hashes, which are part of the rows' key): a moved or copied project keeps
    its keys."""
    record = recipe.record
    stable = {k: v for k, v in record.items() if k not in ("created", "seconds", "code", "runs_dir", "format")}
    stable["members"] = [
        {k: v for k, v in m.items() if k not in ("checkpoints", "model") or m.get("model_hub")}
        for m in record["members"]
    ]
    return text_sha(json.dumps(stable, sort_keys=True))


def rows_source(recipe: Recipe, checkpoint_shas: list[str], precision: str, backend: str = "torch") -> dict:
    """What every predicted row depends on: the recipe, the checkpoints' contents, the precision and the
    runtime (another runtime's masks agree to about 1e-4 of pixels, not exactly)."""
    source = {"recipe": recipe_hash(recipe), "checkpoints": list(checkpoint_shas), "precision": precision}
    return {**source, "backend": backend}


def files_fingerprint(paths: list[Path]) -> str:
    """Names, sizes and mtimes of the test files: resume keys on the data, not on how its path is spelled."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def submission_key(
    source: dict, names: list[str], paths: list[Path], shard: str | None = None, limit: int | None = None
) -> dict:
    """A submission's (or shard's) identity: what its rows were computed from, and which rows."""
    return {
        **source,
        "sample": text_sha("\n".join(names)),
        "test_files": files_fingerprint(paths),
        "shard": shard,
        "limit": limit,
    }


def summary_recipe(summary: dict, summary_path: str | Path) -> Path | None:
    """The recipe a submission's (or shard's) summary names, as a usable path (stored relative to the
    summary's folder; as written, relative to the working directory, by earlier versions)."""

    stored = summary.get("recipe")
    if not isinstance(stored, str) or not stored:
        return None
    return resolve_stored(stored, summary_path, summary.get("paths") == RELATIVE_TO_FILE)


def load_recipe(path: str | Path) -> tuple[Recipe, list[str]]:
    """A recipe checked completely (``Recipe.load``), and its checkpoints' verified content hashes.

    What the submission, its shards, ``merge`` and ``predict`` all read a recipe through. It checks
    the links ``lineage`` prints: each checkpoint, and the out-of-fold summary (so the maps) its
    weights and threshold were tuned on.
    """
    recipe = Recipe.load(path)
    shas = verify_recipe_checkpoints(recipe, path)
    verify_recipe_oof(recipe, path)
    return recipe, shas
