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
a submission, recipe, checkpoint or folds CSV and says which links still hold (``lineage``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import pandas as pd

from . import __version__
from .errors import PipelineError


class LineageError(PipelineError, RuntimeError):
    """An artifact was made from an input that has changed since (or from another one)."""


class ResumeError(LineageError):
    """A run folder cannot be resumed or re-predicted as asked (another split, model or size)."""


# -- hashes ----------------------------------------------------------------------------------------
_HASHES: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike, n_hex: int = 16) -> str:
    """SHA-256 of a file's bytes (first ``n_hex`` hex digits), cached per process on (path, size, mtime).

    ~1 GB/s: a 150 MB checkpoint costs about 0.15 s once per run, whatever the number of images.
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key][:n_hex]


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def code_version() -> dict:
    """The code that made an artifact: the package version and, in a git checkout, the commit."""
    here = Path(__file__).resolve().parent
    commit = None
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        commit = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"pipeline": __version__, "commit": commit}


# -- link 1: folds CSV -> checkpoints --------------------------------------------------------------
def folds_fingerprint(folds: pd.DataFrame, fold: int) -> dict:
    """Identity of the split: all (img, fold) pairs, and this fold's held-out set and cars."""

    def sha(lines) -> str:
        return text_sha("\n".join(sorted(lines)))

    held = folds.fold == fold
    return {
        "folds_sha": sha(f"{i},{f}" for i, f in zip(folds.img, folds.fold)),
        "fold_sha": sha(f"{i},{int(h)}" for i, h in zip(folds.img, held)),
        "k": int(folds.fold.nunique()),
        "held_out_cars": sorted(set(folds.car_id[held])),
        "n_train_images": int((~held).sum()),
    }


def check_same_folds(recorded: dict | None, current: dict, path: Path, folds_csv: str, doing: str) -> None:
    """Refuse to ``doing`` when ``path`` was trained on another split of the data."""
    if recorded is None or recorded.get("fold_sha") == current["fold_sha"]:
        return  # checkpoints written before fingerprints existed are trusted as before
    old, new = set(recorded.get("held_out_cars", [])), set(current["held_out_cars"])
    raise ResumeError(
        f"{path}: trained on a different split than {folds_csv} (held-out cars: {len(old - new)} left, "
        f"{len(new - old)} new); refusing to {doing}, the held-out cars would leak. "
        "Restore the folds CSV it was trained on, use another run name, or --fresh to start this fold over."
    )


def checkpoint_lineage(folds_csv: str | Path) -> dict:
    """What a checkpoint records of its making beside its config and split fingerprint: the folds file and code."""
    return {"folds_csv": str(folds_csv), "code": code_version()}


# -- link 2: best.pt -> out-of-fold maps -------------------------------------------------------------
def oof_source(best: Path, tta: list[str], fold_sha: str, precision: str) -> dict:
    """What a fold's out-of-fold maps are made from; ``oof/source.json`` holds it beside the maps."""
    return {"checkpoint_sha256": file_sha256(best), "tta": list(tta), "fold_sha": fold_sha, "precision": precision}


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


def verify_recipe_checkpoints(recipe: dict, recipe_path: str | Path) -> list[str]:
    """The content hashes of the recipe's checkpoints, each checked against what the recipe recorded.

    Every positive-weight member's checkpoints are hashed (once per process); a missing, replaced
    or retrained checkpoint is a LineageError naming it, since the recipe's input size, weights and
    threshold were tuned for the one it recorded.
    """
    shas = []
    for m in recipe["members"]:
        if m["weight"] == 0:
            continue
        for ckpt, want in zip(m["checkpoints"], m["checkpoint_sha256"]):
            ckpt = Path(ckpt)
            if not ckpt.is_file():
                raise LineageError(
                    f"{recipe_path}: member {m['name']!r} checkpoint {ckpt} not found; {_rebuild_hint(ckpt)}"
                )
            got = file_sha256(ckpt)
            if got != want:
                raise LineageError(
                    f"{recipe_path}: member {m['name']!r} checkpoint {ckpt} changed since the recipe was tuned "
                    f"(sha256 {want} then, {got} now: retrained, replaced or copied over); {_rebuild_hint(ckpt)}"
                )
            shas.append(got)
    return shas


def verify_recipe_oof(recipe: dict, recipe_path: str | Path) -> None:
    """The out-of-fold summaries (and so the maps) the recipe was tuned on are still the ones in the runs."""
    for m in recipe["members"]:
        for ckpt, want in zip(m["checkpoints"], m.get("oof_sha256") or [None] * len(m["checkpoints"])):
            oof = Path(ckpt).parent / "oof.json"
            if want is None or not oof.is_file() or file_sha256(oof) != want:
                what = "not found" if not oof.is_file() else "changed since the recipe was tuned"
                raise LineageError(
                    f"{recipe_path}: member {m['name']!r}: {oof} {what} (the fold was retrained or re-predicted); "
                    "re-run `make ensemble` to tune on the out-of-fold maps there now"
                )


# -- link 4: recipe -> submission rows, shards, predict outputs ----------------------------------------
def recipe_hash(recipe: dict) -> str:
    # What the rows depend on; the recipe's timestamps and code record are left out so a re-tuned
    # identical recipe matches (the checkpoints' own hashes are part of the rows' key).
    stable = {k: v for k, v in recipe.items() if k not in ("created", "seconds", "code")}
    return text_sha(json.dumps(stable, sort_keys=True))


def rows_source(recipe: dict, checkpoint_shas: list[str], precision: str) -> dict:
    """What every predicted row depends on: the recipe, the checkpoints' contents and the precision."""
    return {"recipe": recipe_hash(recipe), "checkpoints": list(checkpoint_shas), "precision": precision}


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


def load_recipe(path: str | Path) -> tuple[dict, list[str]]:
    """A recipe checked completely (pipeline/checks.py), and its checkpoints' verified content hashes.

    What the submission, its shards, ``merge`` and ``predict`` all read a recipe through.
    """
    from .checks import check_recipe

    recipe = check_recipe(path)
    return recipe, verify_recipe_checkpoints(recipe, path)
