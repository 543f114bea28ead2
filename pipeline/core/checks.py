"""Up-front checks of what the user chose on the command line or in a config (pipeline/core/config.py),
run before a stage touches any of its outputs.

Each raises a ConfigError that names the option and what is allowed, so a typo never costs a deleted
run (``--fresh``) or a traceback from deep inside torch. (A training config's names of losses, TTA
views and models are checked by the training stage, ``check_train_config`` in pipeline/stages/train.py,
which knows them; a recipe is checked as it is read: pipeline/inference/recipe.py.)
"""

from __future__ import annotations

import re

import torch

from .config import Config, ConfigError

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


def check_fold(cfg: Config, folds: list[int]) -> None:
    if not cfg.full and cfg.fold not in folds:
        raise ConfigError(f"fold {cfg.fold}: not in {cfg.folds_csv}, which has folds {folds} (or 'full': every car)")
