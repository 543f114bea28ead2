"""The chain behind a file, shown to the user: ``python -m pipeline lineage FILE``.

From a submission, recipe, checkpoint, model folder or folds CSV down to the data it was made
from, each link with whether it still holds (the hashes that pipeline/lineage/provenance.py
records, compared again) and the command that rebuilds what does not.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.config import FULL
from ..core.errors import LineageError, PipelineError
from ..core.identity import file_sha256
from ..core.io_utils import RELATIVE_TO_FILE, resolve_stored
from ..data.folds import load_folds
from ..inference.model_folder import check_folder, fetch, folder_sha256, int8_sizes
from ..inference.recipe import Recipe
from ..models.unet import read_checkpoint
from .provenance import folds_fingerprint, lineage_folds_csv, recipe_hash, summary_recipe, verify_recipe_checkpoints
from .runs import oof_disagreement


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
    files = "config.json and model.safetensors"
    sizes = int8_sizes(spec) if spec else None
    if sizes:
        nets = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
        files = f"config.json, model.safetensors and INT8 networks ({nets})"
    links.append(
        Link(
            depth + 1,
            not err,
            f"its {files} are the files its pipeline.json names" + (f" ({err})" if err else ""),
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
    measured = isinstance(figures, dict) and isinstance(figures.get("mean_dice"), float)
    # A folder whose settings were changed after export (e.g. a post-processing step added) is not what
    # its figures measured: say so rather than let them stand for it.
    changed = [
        f"{key} {figures.get(key)} when measured, {spec.get(key)} now"
        for key in ("threshold", "postprocess")
        if measured and key in figures and figures.get(key) != spec.get(key)
    ]
    links.append(
        Link(
            depth + 1,
            None,
            f"out-of-fold Dice {figures['mean_dice']:.5f} on {figures['n_images']} images (folds {figures['folds']} of "
            f"member {figures['member']}, recipe hash {figures['recipe_hash']}) "
            + (f"measured it with other settings ({'; '.join(changed)})" if changed else "stands for it")
            if measured
            else "no out-of-fold figures stand for it (exported without a recipe)",
        )
    )
    return links


def _trace_recipe(path: Path, depth: int, seen: set, want_hash: str | None = None) -> list[Link]:
    recipe, err = _safe(Recipe.load, path)
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
                f"recipe {path}: threshold {recipe.threshold}/255, postprocess {list(recipe.postprocess)}",
            )
        ]
    for m in recipe.members:
        links.append(
            Link(depth + 1, None, f"member {m.name}: weight {m.weight}, {m.height}x{m.width}, TTA {list(m.tta)}")
        )
        if m.model is not None:  # an exported model folder
            links += _trace_pretrained(m.model, depth + 2, m.model_sha256)
            continue
        oofs = m.oof_sha256 or [None] * len(m.checkpoints)
        for ckpt, sha, oof_sha in zip(m.checkpoints, m.checkpoint_sha256, oofs):
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
    recipe, err = _safe(Recipe.load, recipe_path)
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
