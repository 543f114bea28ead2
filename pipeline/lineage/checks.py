"""Up-front checks of what the user chose, run before a stage touches any of its outputs.

Each raises a ConfigError (or DataError for a file) that names the option or file and what is
allowed, so a typo never costs a deleted run (``--fresh``) or a traceback from deep inside torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..core.config import Config, ConfigError, run_name_problem
from ..core.errors import DataError

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(name: str, option: str = "device") -> None:
    """auto | cpu | cuda | cuda:N, and CUDA only where a GPU is visible."""
    if not _DEVICE_RE.match(name):
        raise ConfigError(f"{option}={name!r}: unknown device; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{option}={name}: CUDA asked for, but torch sees no GPU (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda}); use {option}=cpu or auto"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{option}={name}: only {torch.cuda.device_count()} CUDA device(s) visible")


def check_compile(value, option: str) -> None:
    """true/false, or the name of a torch.compile backend (``eager`` and ``aot_eager`` for debugging)."""
    if isinstance(value, bool):
        return
    import torch._dynamo

    if value not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(f"{option}={value!r}: not true, false or a torch.compile backend: inductor, aot_eager, eager")


def check_train_config(cfg: Config) -> Config:
    """Every name in a training config; returns it with the model section resolved (see models)."""
    from ..inference.tta import TTAS
    from ..models.losses import get_loss
    from ..models.unet import resolve_model_config

    problem = run_name_problem(cfg.name)
    if problem:  # the name becomes <runs_dir>/<name>/: never a path of its own
        raise ConfigError(f"name: {problem}")
    t = cfg.train
    choices = {
        "train.optimizer": (t.optimizer, ("adam", "adamw")),
        "train.scheduler": (t.scheduler, ("cosine", "constant")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: not one of {', '.join(allowed)}")
    try:
        get_loss(t.loss)
    except ValueError as e:
        raise ConfigError(f"train.loss={t.loss!r}: {e}") from None
    unknown = [n for n in cfg.predict.tta if n not in TTAS and n != "none"]
    if unknown:
        raise ConfigError(f"predict.tta={cfg.predict.tta}: unknown {unknown}; available: {sorted(TTAS)} (or [])")
    if not 0 <= t.ema < 1:
        raise ConfigError(f"train.ema={t.ema!r}: the decay of the weights' moving average is in [0, 1) (0: off)")
    if t.progressive_epochs and (len(t.progressive_size) != 2 or min(t.progressive_size) < 32):
        raise ConfigError(f"train.progressive_size={t.progressive_size!r}: [height, width], each at least 32")
    check_compile(t.compile, "train.compile")
    check_device(cfg.device)
    cfg.model = resolve_model_config(cfg.model)
    return cfg


def check_fold(cfg: Config, folds: list[int]) -> None:
    if not cfg.full and cfg.fold not in folds:
        raise ConfigError(f"fold {cfg.fold}: not in {cfg.folds_csv}, which has folds {folds} (or 'full': every car)")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Recipe formats this code reads: 2, paths relative to the working directory `make ensemble` ran in;
# 3, paths relative to the recipe's own folder (a copied or read-only project keeps its links).
RECIPE_FORMATS = (2, 3)
RECIPE_FORMAT = 3  # what `make ensemble` writes
RECIPE_KEYS = {
    "format",
    "created",
    "runs_dir",
    "threshold",
    "threshold_probability",
    "postprocess",
    "postprocess_gain",
    "postprocess_guard",
    "postprocess_params",
    "weight_total",
    "members",
    "oof",
    "code",
    "seconds",
}
MEMBER_KEYS = {
    "name",
    "weight",
    "folds",
    "checkpoints",
    "checkpoint_sha256",
    "oof_sha256",
    "tta",
    "height",
    "width",
    "precision",
    "oof_dice_at_0.5",
    "oof_dice_best_threshold",
    # a member that is an exported model folder (pipeline/stages/export.py) instead of fold checkpoints
    "model",
    "model_sha256",
    "model_hub",
}


def _recipe_problem(recipe) -> str | None:
    """The first thing that makes ``recipe`` unusable, checked before any checkpoint is read."""
    from ..inference.tta import TTAS
    from ..masks.postprocess import chain_problem

    if not isinstance(recipe, dict) or not isinstance(recipe.get("members"), list) or not recipe["members"]:
        return "no 'members' list"
    fmt = recipe.get("format", 2)
    if fmt not in RECIPE_FORMATS:
        return (
            f"format {fmt!r}, which this version of the pipeline does not know (it reads formats "
            f"{', '.join(map(str, RECIPE_FORMATS))}): written by a newer version? Update the code, or tune a recipe "
            "with this one"
        )
    unknown = sorted(set(recipe) - RECIPE_KEYS)
    if unknown:
        return f"unknown key(s) {unknown} (a newer or hand-edited recipe): this version would ignore them"
    for i, m in enumerate(recipe["members"]):
        extra = sorted(set(m) - MEMBER_KEYS) if isinstance(m, dict) else []
        if extra:
            return f"member {i} has unknown key(s) {extra} (a newer or hand-edited recipe)"
    t = recipe.get("threshold")
    if not _int(t) or not 1 <= t <= 255:
        return f"'threshold' {t!r} is not an integer in 1..255 (probability t/255 in (0, 1])"
    p = recipe.get("threshold_probability", t / 255)
    if not isinstance(p, (int, float)) or not 0 <= p <= 1 or abs(p - t / 255) > 1e-6:
        return f"'threshold_probability' {p!r} is not in [0, 1] or disagrees with 'threshold' {t}/255"
    problem = chain_problem(recipe.get("postprocess", []), recipe.get("postprocess_params", {}))
    if problem:  # the same check as a model folder's pipeline.json
        return problem
    need = {"name": str, "weight": int, "tta": list, "height": int, "width": int}
    names = set()
    for i, m in enumerate(recipe["members"]):
        bad = [k for k, typ in need.items() if not isinstance(m, dict) or not isinstance(m.get(k), typ)]
        if bad or isinstance(m.get("weight"), bool):
            return f"member {i} lacks or has a wrong type for {bad or ['weight']}"
        name = m["name"]
        if name in names:
            return f"member {i} has a repeated name {name!r}"
        if run_name_problem(name):
            return f"member {i}: name {run_name_problem(name)}"
        names.add(name)
        if m["weight"] < 0:
            return f"member {name!r} has a negative weight {m['weight']}"
        if m["height"] < 1 or m["width"] < 1:
            return f"member {name!r} has input size {m['height']}x{m['width']}; both must be at least 1"
        if m.get("precision", "fp32") not in ("fp32", "bf16", "fp16"):
            return f"member {name!r}: 'precision' {m['precision']!r} is not one of fp32, bf16, fp16"
        unknown = [v for v in m["tta"] if not isinstance(v, str) or (v not in TTAS and v != "none")]
        if unknown:
            return f"member {name!r}: unknown TTA {unknown}; available: {sorted(TTAS)}"
        if "model" in m:  # an exported model folder (or hub id), bound by the hash of its pipeline.json
            if "checkpoints" in m or not isinstance(m["model"], str) or not isinstance(m.get("model_sha256"), str):
                return f"member {name!r}: an exported model needs 'model' (its folder) and 'model_sha256', alone"
            continue
        ckpts = m.get("checkpoints")
        if not isinstance(ckpts, list) or not ckpts or any(not isinstance(c, str) or not c for c in ckpts):
            return f"member {name!r}: 'checkpoints' must be a non-empty list of paths"
        shas = m.get("checkpoint_sha256")
        if not isinstance(shas, list) or len(shas) != len(ckpts) or any(not isinstance(h, str) for h in shas):
            return (
                f"member {name!r}: no content hash for each checkpoint ('checkpoint_sha256'): written by an "
                "older version or by hand, so nothing binds it to the checkpoints it was tuned for"
            )
        folds = m.get("folds", list(range(len(ckpts))))
        if not isinstance(folds, list) or len(folds) != len(ckpts) or not all(_int(f) for f in folds):
            return f"member {name!r}: 'folds' must list one fold number per checkpoint"
    if sum(m["weight"] for m in recipe["members"]) <= 0:
        return "no member has a positive weight"
    return None


def check_recipe(path: str | Path) -> dict:
    """A recipe.json that the submission can follow, checked completely before any model loads.

    DataError naming the file and the first problem. The paths it records (``runs_dir``, each
    member's ``checkpoints``) come back usable from here: a format-3 recipe stores them relative
    to its own folder. (That its checkpoints are still the ones it was tuned for is
    pipeline/lineage/provenance.py's check, and that their configs match the recorded input sizes is
    checked as they load.)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: recipe not found; run `make ensemble` first")
    try:
        recipe = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); re-run `make ensemble` to rewrite it") from None
    problem = _recipe_problem(recipe)
    if problem:
        raise DataError(f"{path}: malformed recipe: {problem}; re-run `make ensemble` to rewrite it")
    return resolve_recipe_paths(recipe, path)


def resolve_recipe_paths(recipe: dict, path: Path) -> dict:
    """A copy of ``recipe`` whose recorded paths are usable from the working directory."""
    from ..core.io_utils import resolve_stored

    relative = recipe.get("format", 2) >= 3
    out = dict(recipe)
    if isinstance(recipe.get("runs_dir"), str):
        out["runs_dir"] = str(resolve_stored(recipe["runs_dir"], path, relative))
    out["members"] = [
        {**m, "model": m["model"] if m.get("model_hub") else str(resolve_stored(m["model"], path, relative))}
        if "model" in m
        else {**m, "checkpoints": [str(resolve_stored(c, path, relative)) for c in m["checkpoints"]]}
        for m in recipe["members"]
    ]
    return out
