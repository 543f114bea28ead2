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
from .config import FULL
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
    commit, dirty = None, None
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        commit = out.stdout.strip() or None if out.returncode == 0 else None
        if commit:  # uncommitted changes to the package: the commit alone does not say what ran
            out = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--", "."],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            dirty = bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"pipeline": __version__, "commit": commit, "dirty": dirty}


# -- link 1: folds CSV -> checkpoints --------------------------------------------------------------
def folds_fingerprint(folds: pd.DataFrame, fold: int | str) -> dict:
    """Identity of the split: all (img, fold) pairs, and this fold's held-out set and cars.

    ``fold="full"`` (trained on every car): nothing is held out.
    """

    def sha(lines) -> str:
        return text_sha("\n".join(sorted(lines)))

    held = folds.fold == fold if fold != FULL else pd.Series(False, index=folds.index)
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

    Every member's checkpoints are hashed (once per process); a missing, replaced or retrained
    checkpoint is a LineageError naming it, since the recipe's input sizes, weights and threshold
    were tuned for the ones it recorded (a zero weight too was chosen against the old model).
    """
    shas = []
    for m in recipe["members"]:
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


# -- the chain shown to the user: `python -m pipeline lineage FILE` ----------------------------------
class Link:
    """One checked link of a chain: what it binds, whether it still holds, and how to rebuild it."""

    def __init__(self, depth: int, holds: bool | None, text: str, fix: str = ""):
        self.depth, self.holds, self.text, self.fix = depth, holds, text, fix

    def line(self) -> str:
        mark = {True: "ok     ", False: "BROKEN ", None: ""}[self.holds]
        fix = f"  -> {self.fix}" if self.holds is False and self.fix else ""
        return "  " * self.depth + mark + self.text + fix


def _safe(fn, *args):
    """(value, None) or (None, message) for a check that reads a file someone may have damaged."""
    try:
        return fn(*args), None
    except (PipelineError, OSError, ValueError, KeyError, TypeError) as e:
        return None, str(e).splitlines()[0][:200]


def _trace_folds(path: Path, fold: int | None, recorded: dict | None, depth: int, seen: set) -> list[Link]:
    from .folds import load_folds

    folds, err = _safe(load_folds, path)
    if err:
        return [Link(depth, False, f"folds {path}: {err}", "restore it, or `make folds`")]
    links = []
    if str(path) not in seen:  # described once per chain, however many checkpoints it split
        seen.add(str(path))
        links.append(
            Link(
                depth,
                None,
                f"folds {path}: {len(folds)} images, {folds.car_id.nunique()} cars, k={folds.fold.nunique()}",
            )
        )
        links.append(Link(depth + 1, True, "group integrity: every car in one fold, folds 0..k-1, no repeated image"))
    if fold is not None and recorded is not None:
        now = folds_fingerprint(folds, fold) if fold in set(folds.fold) or fold == FULL else {"fold_sha": None}
        links.append(
            Link(
                depth,
                now["fold_sha"] == recorded.get("fold_sha"),
                f"{path.name}: the checkpoint was trained on all its cars (fold full)"
                if fold == FULL
                else f"{path.name} fold {fold} holds out the cars the checkpoint was trained without",
                "restore the folds CSV it was trained on, or retrain the fold (`make train ... ARGS=--fresh`)",
            )
        )
    return links


def _trace_checkpoint(path: Path, depth: int, seen: set, want_sha: str | None = None) -> list[Link]:
    from .models import read_checkpoint

    if want_sha is not None:
        got = file_sha256(path) if path.is_file() else None
        state = "not found" if got is None else f"sha256 {got}" + ("" if got == want_sha else f", recorded {want_sha}")
        link = Link(depth, got == want_sha, f"checkpoint {path} ({state})", "re-run `make ensemble` (or restore it)")
        if got != want_sha:
            return [link]
        links = [link]
    else:
        links = [Link(depth, None, f"checkpoint {path}")]
    ckpt, err = _safe(read_checkpoint, path, "checkpoint", True)
    if err:
        return links + [Link(depth + 1, False, err, "retrain the fold")]
    cfg = ckpt.get("config", {})
    code = (ckpt.get("lineage") or {}).get("code") or {}
    links.append(
        Link(
            depth + 1,
            None,
            f"{cfg.get('name')} fold {cfg.get('fold')}, epoch {ckpt.get('epoch')}, "
            f"{cfg.get('model', {}).get('encoder')} at {cfg.get('image', {}).get('height')}x"
            f"{cfg.get('image', {}).get('width')}, code {code.get('pipeline', '?')} {(code.get('commit') or '')[:10]}",
        )
    )
    oof = path.parent / "oof.json"
    if path.name == "best.pt" and oof.is_file():
        info, err = _safe(lambda p: json.loads(p.read_text()), oof)
        same = not err and info.get("checkpoint_sha256") == file_sha256(path)
        links.append(
            Link(
                depth + 1,
                same,
                f"{oof}: its out-of-fold maps were predicted by this checkpoint",
                "re-run the fold's `make train`",
            )
        )
    folds_csv = (ckpt.get("lineage") or {}).get("folds_csv") or cfg.get("folds_csv")
    if ckpt.get("folds") is None:
        links.append(Link(depth + 1, None, "no split fingerprint (written by an older version)"))
    elif folds_csv:
        links += _trace_folds(Path(folds_csv), cfg.get("fold"), ckpt["folds"], depth + 1, seen)
    return links


def _trace_recipe(path: Path, depth: int, seen: set, want_hash: str | None = None) -> list[Link]:
    from .checks import check_recipe

    recipe, err = _safe(check_recipe, path)
    if err:
        return [Link(depth, False, err, "re-run `make ensemble`")]
    if want_hash is not None:
        now = recipe_hash(recipe)
        links = [
            Link(
                depth,
                now == want_hash,
                f"recipe {path}: the one the rows were computed from (hash {want_hash}"
                + ("" if now == want_hash else f", now {now}: re-tuned since")
                + ")",
                "re-run `make submission` with the current recipe",
            )
        ]
    else:
        links = [
            Link(
                depth,
                None,
                f"recipe {path}: threshold {recipe['threshold']}/255, postprocess {recipe.get('postprocess', [])}",
            )
        ]
    for m in recipe["members"]:
        links.append(
            Link(
                depth + 1, None, f"member {m['name']}: weight {m['weight']}, {m['height']}x{m['width']}, TTA {m['tta']}"
            )
        )
        oofs = m.get("oof_sha256") or [None] * len(m["checkpoints"])
        for ckpt, sha, oof_sha in zip(m["checkpoints"], m["checkpoint_sha256"], oofs):
            links += _trace_checkpoint(Path(ckpt), depth + 2, seen, sha)
            oof = Path(ckpt).parent / "oof.json"
            if oof_sha is not None:
                got = file_sha256(oof) if oof.is_file() else None
                links.append(
                    Link(
                        depth + 3,
                        got == oof_sha,
                        f"{oof}: the out-of-fold summary the recipe was tuned on",
                        "re-run `make ensemble`",
                    )
                )
    return links


def _trace_submission(path: Path, depth: int, seen: set) -> list[Link]:
    summary_path = path.with_name(path.name + ".json")
    if not summary_path.is_file():
        return [
            Link(
                depth,
                False,
                f"submission {path}: no summary {summary_path.name}, so nothing binds it",
                "re-run `make submission`",
            )
        ]
    summary, err = _safe(lambda p: json.loads(p.read_text()), summary_path)
    if err or not isinstance(summary, dict) or not isinstance(summary.get("key"), dict):
        return [Link(depth, False, f"{summary_path}: unreadable ({err})", "re-run `make submission`")]
    key = summary["key"]
    got = file_sha256(path, 64) if path.is_file() else None
    links = [
        Link(depth, None, f"submission {path}: {summary.get('rows')} rows, precision {key.get('precision')}"),
        Link(depth + 1, got == summary.get("sha256"), "its content is what was validated", "re-run `make submission`"),
    ]
    if "checkpoints" not in key:
        return links + [
            Link(depth + 1, False, "no checkpoint hashes in its key (an older version)", "re-run `make submission`")
        ]
    recipe_path = Path(summary.get("recipe") or "")
    links += _trace_recipe(recipe_path, depth + 1, seen, key.get("recipe"))
    recipe, err = _safe(lambda p: json.loads(p.read_text()), recipe_path)
    if not err:
        now, err = _safe(verify_recipe_checkpoints, recipe, recipe_path)
        links.append(
            Link(
                depth + 1,
                now == key["checkpoints"],
                "the checkpoints its rows were computed with are the recipe's now",
                "re-run `make submission`",
            )
        )
    return links


def trace(path: str | Path) -> list[Link]:
    """The chain behind a submission (or shard), recipe, checkpoint, oof.json or folds CSV."""
    path = Path(path)
    if not path.exists():
        raise LineageError(f"{path}: not found")
    name, seen = path.name, set()
    if name.endswith((".csv.gz", ".csv")) and path.with_name(name + ".json").is_file():
        return _trace_submission(path, 0, seen)
    if name.endswith(".csv") and "fold" in path.open(errors="replace").readline().strip().split(","):
        return _trace_folds(path, None, None, 0, seen)
    if name.endswith((".pt", ".pth")):
        return _trace_checkpoint(path, 0, seen)
    if name == "oof.json":
        return _trace_checkpoint(path.parent / "best.pt", 0, seen)
    if name.endswith(".json"):
        return _trace_recipe(path, 0, seen)
    raise LineageError(f"{path}: not a submission, recipe, checkpoint, oof.json or folds CSV of this pipeline")
