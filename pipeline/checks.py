"""Up-front checks of what the user chose, run before a stage touches any of its outputs.

Each raises a ConfigError (or DataError for a file) that names the option or file and what is
allowed, so a typo never costs a deleted run (``--fresh``) or a traceback from deep inside torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .config import Config, ConfigError
from .errors import DataError

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


def check_train_config(cfg: Config) -> Config:
    """Every name in a training config; returns it with the model section resolved (see models)."""
    from .losses import get_loss
    from .models import resolve_model_config
    from .tta import TTAS

    t = cfg.train
    choices = {
        "train.optimizer": (t.optimizer, ("adam", "adamw")),
        "train.scheduler": (t.scheduler, ("cosine", "constant")),
        "train.amp_dtype": (t.amp_dtype, ("bfloat16", "float16")),
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
    check_device(cfg.device)
    cfg.model = resolve_model_config(cfg.model)
    return cfg


def check_fold(cfg: Config, folds: list[int]) -> None:
    if cfg.fold not in folds:
        raise ConfigError(f"fold {cfg.fold}: not in {cfg.folds_csv}, which has folds {folds}")


def check_recipe(path: str | Path) -> dict:
    """A recipe.json that the submission can follow; DataError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: recipe not found; run `make ensemble` first")
    try:
        recipe = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); re-run `make ensemble` to rewrite it") from None
    problem = None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("members"), list) or not recipe["members"]:
        problem = "no 'members' list"
    elif not isinstance(recipe.get("threshold"), int) or not 1 <= recipe["threshold"] <= 255:
        problem = f"'threshold' {recipe.get('threshold')!r} is not an integer in 1..255"
    else:
        need = {"name": str, "weight": int, "checkpoints": list, "tta": list, "height": int, "width": int}
        for i, m in enumerate(recipe["members"]):
            bad = [k for k, typ in need.items() if not isinstance(m, dict) or not isinstance(m.get(k), typ)]
            if bad:
                problem = f"member {i} lacks or has a wrong type for {bad}"
                break
            if m["weight"] < 0:
                problem = f"member {m['name']!r} has a negative weight"
                break
        else:
            if sum(m["weight"] for m in recipe["members"]) <= 0:
                problem = "no member has a positive weight"
    if problem:
        raise DataError(f"{path}: malformed recipe: {problem}; re-run `make ensemble` to rewrite it")
    return recipe
