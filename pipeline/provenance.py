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


def checkpoint_lineage(folds_csv: str | Path, checkpoint: str | Path) -> dict:
    """What a checkpoint records of its making beside its config and split fingerprint: the folds file
    (relative to the checkpoint's folder) and the code."""
    from .io_utils import RELATIVE_TO_FILE, stored_path

    return {
        "folds_csv": stored_path(folds_csv, checkpoint),
        "paths": RELATIVE_TO_FILE,
        # where it was when the checkpoint was written: found there if the runs moved and the CSV did not
        "folds_csv_absolute": str(Path(folds_csv).absolute()),
        "code": code_version(),
    }


def lineage_folds_csv(ckpt: dict, checkpoint: str | Path) -> Path | None:
    """The folds CSV a checkpoint records, as a usable path (as written, for checkpoints of earlier versions)."""
    from .io_utils import RELATIVE_TO_FILE, resolve_stored

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


def verify_recipe_checkpoints(recipe: dict, recipe_path: str | Path) -> list[str]:
    """The content hashes of the recipe's checkpoints, each checked against what the recipe recorded.

    Every member's checkpoints are hashed (once per process); a missing, replaced or retrained
    checkpoint is a LineageError naming it, since the recipe's input sizes, weights and threshold
    were tuned for the ones it recorded (a zero weight too was chosen against the old model).
    """
    shas = []
    for m in recipe["members"]:
        if "model" in m:  # an exported model folder: the hash of its pipeline.json (which holds its files' hashes)
            shas.append(_verify_model_member(m, recipe_path))
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


def _verify_model_member(m: dict, recipe_path: str | Path) -> str:
    from .export import PIPELINE_JSON, ModelFolderError, fetch, folder_sha256

    try:
        folder = fetch(m["model"])
    except ModelFolderError as e:
        raise LineageError(f"{recipe_path}: member {m['name']!r}: {e}") from None
    got = folder_sha256(folder) if (folder / PIPELINE_JSON).is_file() else None
    if got != m["model_sha256"]:
        raise LineageError(
            f"{recipe_path}: member {m['name']!r}: model folder {m['model']} is not the one the recipe was made for "
            f"(hash {m['model_sha256']} then, {got} now); re-run `make submission PRETRAINED={m['model']}`"
        )
    return got


def verify_recipe_oof(recipe: dict, recipe_path: str | Path) -> None:
    """The out-of-fold summaries (and so the maps) the recipe was tuned on are still the ones in the runs.
    (An exported model's figures are part of its folder, bound by the folder's hash.)"""
    for m in recipe["members"]:
        if "model" in m:
            continue
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
    # identical recipe matches, and so are its paths (the checkpoints are bound by their content
    # hashes, which are part of the rows' key): a moved or copied project keeps its keys.
    stable = {k: v for k, v in recipe.items() if k not in ("created", "seconds", "code", "runs_dir", "format")}
    stable["members"] = [
        {k: v for k, v in m.items() if k not in ("checkpoints", "model") or m.get("model_hub")}
        for m in recipe["members"]
    ]
    return text_sha(json.dumps(stable, sort_keys=True))


def rows_source(recipe: dict, checkpoint_shas: list[str], precision: str, backend: str = "torch") -> dict:
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
    from .io_utils import RELATIVE_TO_FILE, resolve_stored

    stored = summary.get("recipe")
    if not isinstance(stored, str) or not stored:
        return None
    return resolve_stored(stored, summary_path, summary.get("paths") == RELATIVE_TO_FILE)


def load_recipe(path: str | Path) -> tuple[dict, list[str]]:
    """A recipe checked completely (pipeline/checks.py), and its checkpoints' verified content hashes.

    What the submission, its shards, ``merge`` and ``predict`` all read a recipe through. It checks
    the links ``lineage`` prints: each checkpoint, and the out-of-fold summary (so the maps) its
    weights and threshold were tuned on.
    """
    from .checks import check_recipe

    recipe = check_recipe(path)
    shas = verify_recipe_checkpoints(recipe, path)
    verify_recipe_oof(recipe, path)
    return recipe, shas


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
        from .runs import oof_disagreement

        info, err = _safe(lambda p: json.loads(p.read_text()), oof)
        same = not err and isinstance(info, dict) and info.get("checkpoint_sha256") == file_sha256(path)
        links.append(
            Link(
                depth + 1,
                same,
                f"{oof}: its out-of-fold maps were predicted by this checkpoint",
                "re-run the fold's `make train`",
            )
        )
        if same:  # what it says of the maps is what made them (oof/source.json), as every reader checks
            problem, err = _safe(oof_disagreement, oof, info)
            links.append(
                Link(
                    depth + 1,
                    not (problem or err),
                    f"{oof}: its TTA, precision, threshold and size are those of its maps"
                    + (f" ({problem or err})" if problem or err else ""),
                    "re-run the fold's `make train` to rewrite it",
                )
            )
    full = path.parent / "full.json"
    if path.name == "final.pt" and full.is_file():
        links += _trace_full(full, path, depth + 1)
    folds_csv = lineage_folds_csv(ckpt, path)
    if ckpt.get("folds") is None:
        links.append(Link(depth + 1, None, "no split fingerprint (written by an older version)"))
    elif folds_csv:
        links += _trace_folds(folds_csv, cfg.get("fold"), ckpt["folds"], depth + 1, seen)
    return links


def _trace_full(full: Path, checkpoint: Path, depth: int) -> list[Link]:
    """A full run's record (full.json): that it names this final.pt, and the folds that stand for it."""
    from .io_utils import RELATIVE_TO_FILE, resolve_stored

    info, err = _safe(lambda p: json.loads(p.read_text()), full)
    if err or not isinstance(info, dict):
        return [Link(depth, False, f"{full}: unreadable ({err})", "re-run the full run's `make train ... FOLD=full`")]
    links = [
        Link(
            depth,
            info.get("checkpoint_sha256") == file_sha256(checkpoint),
            f"{full}: the full run's record names this checkpoint",
            "re-run the full run's `make train ... FOLD=full`",
        )
    ]
    trained = info.get("trained_on") or {}
    cv = info.get("cross_validation")
    links.append(
        Link(
            depth,
            None,
            f"trained on all {trained.get('n_images')} images ({trained.get('n_cars')} cars) of its folds CSV; "
            + (
                f"folds {cv['folds']} of the same config stand for it (out-of-fold Dice at 0.5 "
                f"{cv['oof_dice_at_0.5']['mean']:.5f})"
                if isinstance(cv, dict)
                else "no cross-validation of its config was beside it"
            ),
        )
    )
    if isinstance(cv, dict):
        runs = resolve_stored(cv.get("runs", ""), full, info.get("paths") == RELATIVE_TO_FILE)
        for fold, sha in zip(cv.get("folds", []), cv.get("oof_sha256", [])):
            oof = runs / f"fold{fold}" / "oof.json"
            got = file_sha256(oof) if oof.is_file() else None
            links.append(
                Link(
                    depth + 1,
                    got == sha,
                    f"{oof}: the out-of-fold summary that stands for it",
                    "re-run the full run's `make train ... FOLD=full` after the folds it stands on",
                )
            )
    return links


def _trace_pretrained(source: str, depth: int, want_sha: str | None = None) -> list[Link]:
    """An exported model folder: that it is the one recorded, that its files are those its pipeline.json
    names, and its model card's training record."""
    from .export import check_folder, fetch, folder_sha256

    folder, err = _safe(fetch, source)
    if err:
        return [Link(depth, False, f"model {source}: {err}", "restore the folder, or `make export` it again")]
    sha = folder_sha256(folder) if (folder / "pipeline.json").is_file() else None
    links = [
        Link(
            depth,
            None if want_sha is None else sha == want_sha,
            f"model folder {source} (hash {sha}" + ("" if want_sha in (None, sha) else f", recorded {want_sha}") + ")",
            f"re-run `make submission PRETRAINED={source}`",
        )
    ]
    spec, err = _safe(check_folder, folder, str(source))
    links.append(
        Link(
            depth + 1,
            not err,
            "its config.json and model.safetensors are the files its pipeline.json names"
            + (f" ({err})" if err else ""),
            "`make export` it again",
        )
    )
    if err:
        return links
    src = spec.get("source") or {}
    trained, figures = src.get("trained") or {}, src.get("recipe")
    on, code = trained.get("trained_on") or {}, trained.get("code") or spec.get("code") or {}
    what = (
        f"trained on all {on.get('n_images')} images ({on.get('n_cars')} cars) of split "
        f"{(on.get('folds') or {}).get('folds_sha')}"
        if trained
        else f"from checkpoint {src.get('checkpoint')}"
    )
    links.append(
        Link(
            depth + 1,
            None,
            f"{what}, epoch {src.get('epoch')}, checkpoint sha256 {src.get('checkpoint_sha256')}, "
            f"code {code.get('pipeline', '?')} {(code.get('commit') or '')[:10]}",
        )
    )
    links.append(
        Link(
            depth + 1,
            None,
            f"out-of-fold Dice {figures['mean_dice']:.5f} on {figures['n_images']} images (folds {figures['folds']} of "
            f"member {figures['member']}, recipe hash {figures['recipe_hash']}) stands for it"
            if isinstance(figures, dict) and isinstance(figures.get("mean_dice"), float)
            else "no out-of-fold figures stand for it (exported without a recipe)",
        )
    )
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
        if "model" in m:  # an exported model folder
            links += _trace_pretrained(m["model"], depth + 2, m["model_sha256"])
            continue
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
    recipe_path = summary_recipe(summary, summary_path) or Path("")
    links += _trace_recipe(recipe_path, depth + 1, seen, key.get("recipe"))
    from .checks import check_recipe

    recipe, err = _safe(check_recipe, recipe_path)
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


def _csv_header(path: Path) -> list[str]:
    """The first line of a CSV, plain or gzipped (by content), as its column names."""
    import gzip

    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rt", errors="replace") if gz else open(path, errors="replace") as f:
            return f.readline().strip().split(",")
    except (OSError, EOFError):
        return []


def _about(path: Path, what: str) -> list[Link]:
    """A file of the pipeline's that is not itself a link of a chain: one line saying what it is."""
    return [Link(0, None, f"{path}: {what}")]


def trace(path: str | Path) -> list[Link]:
    """The chain behind a submission (or shard), recipe, checkpoint, oof.json, full.json or folds CSV;
    for the pipeline's other files (summaries, progress, .part, locks, logs), one line saying what it is."""
    path = Path(path)
    if not path.exists():
        raise LineageError(f"{path}: not found")
    name, seen = path.name, set()
    if path.is_dir() and (path / "pipeline.json").is_file():
        return _trace_pretrained(str(path), 0)
    if path.is_dir():
        raise LineageError(
            f"{path}: a folder; give one of its files: a submission, recipe.json, a checkpoint (best.pt, final.pt), "
            "oof.json, full.json or a folds CSV"
        )
    for suffix in (".csv.gz", ".csv"):
        if name.endswith(suffix + ".json"):
            output = path.with_name(name[: -len(".json")])
            return _about(path, f"the summary of submission {output.name} (its key, hash and recipe)") + (
                _trace_submission(output, 1, seen) if output.is_file() else []
            )
        for aux, what in (
            (".part", "an unfinished submission: re-running its `make submission` resumes it"),
            (".progress.json", "the progress record of an unfinished submission (the rows on disk)"),
            (".review.csv", "the review list of a submission (the masks to look at first)"),
            (".review.part", "the review data of an unfinished submission's rows"),
            (".lock", "the lock a running submission holds on its output"),
        ):
            if name.endswith(suffix + aux):
                return _about(path, f"{what}; `lineage` traces the finished {name[: -len(aux)]}")
    if name.endswith((".csv.gz", ".csv")) and path.with_name(name + ".json").is_file():
        return _trace_submission(path, 0, seen)
    if name.endswith((".csv", ".csv.gz")) and "fold" in _csv_header(path):
        return _trace_folds(path, None, None, 0, seen)
    if name.endswith(".lock"):
        return _about(path, "a lock that a running stage holds (released when it ends, even if killed)")
    if name == "lineage.jsonl":
        return _about(path, "predict's record of the files it wrote in this folder and what made each")
    if name.endswith((".pt", ".pth")):
        return _trace_checkpoint(path, 0, seen)
    if name == "source.json" and path.parent.name == "oof":
        return _about(path, "the record of what made the out-of-fold maps beside it") + _trace_checkpoint(
            path.parent.parent / "best.pt", 1, seen
        )
    if name == "oof.json":
        return _trace_checkpoint(path.parent / "best.pt", 0, seen)
    if name == "full.json":
        return _trace_checkpoint(path.parent / "final.pt", 0, seen)
    if name.endswith(".json"):
        try:
            content = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            content = None
        if isinstance(content, dict) and "members" in content:
            return _trace_recipe(path, 0, seen)
        keys = sorted(content)[:6] if isinstance(content, dict) else type(content).__name__
        raise LineageError(f"{path}: a JSON file that is not a recipe or a record of this pipeline (holds {keys})")
    raise LineageError(
        f"{path}: not a submission, recipe, checkpoint, oof.json, full.json or folds CSV of this pipeline"
    )
