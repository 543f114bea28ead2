"""Up-front checks of what the user chose, run before a stage touches any of its outputs.

Each raises a ConfigError that names the option and what is allowed, so a typo never costs a deleted
run (``--fresh``) or a traceback from deep inside torch. (A recipe is checked as it is read:
pipeline/inference/recipe.py.)
"""

from __future__ import annotations

import re

import torch

from ..core.config import Config, ConfigError, run_name_problem

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
