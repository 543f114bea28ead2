"""Typed training configuration: YAML file, then ``--set key.sub=value`` overrides.

The resolved config is saved beside the run's outputs (``config.yaml``) and inside every
checkpoint, so a model can always be rebuilt and predicted with exactly as it was trained.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import PipelineError


class ConfigError(PipelineError, ValueError):
    """A config file, ``--set`` override or option with a value that is not allowed; names it."""


# A run name becomes a folder (<runs_dir>/<name>/), a file name in reports and an ensemble member's
# label beside the fixed labels below: a plain, short name, checked wherever one is read.
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED_NAMES = ("blend", "recipe", "img")  # the labels of the ensemble's and evaluate's other columns


def run_name_problem(name) -> str | None:
    """Why ``name`` cannot be a run (member) name, or None."""
    if not isinstance(name, str) or not RUN_NAME_RE.fullmatch(name):
        return (
            f"{name!r} is not a plain run name: letters, digits, '_', '.' and '-', starting with a letter or digit, "
            "at most 64 characters (it becomes a folder name)"
        )
    if name.lower() in RESERVED_NAMES:
        return f"{name!r} is reserved for the ensemble's own columns ({', '.join(RESERVED_NAMES)}); pick another name"
    return None


# ``fold: full``: train the config on every car of the folds CSV (the final model of a recipe, after
# cross-validation): no held-out cars, so no validation and no out-of-fold maps.
FULL = "full"


@dataclass
class ModelConfig:
    arch: str = "Unet"  # any segmentation_models_pytorch architecture class name
    encoder: str = "vgg11"  # any smp encoder name, or "tu-<timm name>"
    # "imagenet" (downloaded by smp/timm from the hub), "none", or a path to a state-dict file
    encoder_weights: str = "imagenet"
    # null: the architecture's own default, filled in when the model is built (models.resolve_model_config);
    # an error for an architecture that has no such argument (it would be silently ignored).
    decoder_channels: list[int] | None = None
    # A ResNet-style refinement block after the decoder (Heitzinger & Kampel): sees the logits and
    # the image at input resolution and adds a residual to the logits. 0 disables; else its width.
    # The GPU configs use 16 (docs/record/accuracy-levers.md); the default stays 0 so that checkpoints saved
    # before the option existed (no `refine` key) rebuild exactly.
    refine: int = 0


@dataclass
class ImageConfig:
    # Network input size. Images are resized to it (a no-op at the full 1280x1918), then padded
    # to a multiple of 32 inside the model; predictions are cropped and resized back.
    height: int = 1024
    width: int = 1536


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    affine: float = 0.5  # probability of the shift/scale/rotate
    shift: float = 0.0625  # fraction of the image size
    scale: float = 0.1
    rotate: float = 5.0  # degrees
    color: float = 0.5  # probability of brightness/contrast/hue-saturation jitter
    brightness: float = 0.2
    contrast: float = 0.2
    hue: int = 10
    saturation: int = 20


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 4
    steps_per_epoch: int = 0  # 0: one pass over the training images
    optimizer: str = "adamw"  # adam | adamw
    lr: float = 3e-4
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine | constant (both after a linear warmup)
    warmup_epochs: float = 1.0
    loss: str = "bce_ratio"  # terms of pipeline.models.losses joined by "+", e.g. "dice+mse+gradient"
    # Mixed precision (autocast): auto = bf16 on a CUDA GPU that has it (fp16 on older ones, with a
    # GradScaler), fp32 on CPU; bf16 | fp16 | off are honoured on every device. Losses stay fp32.
    # Configs written before this setting said `amp: true|false` plus `amp_dtype`: read as auto/fp16/off.
    amp: str = "auto"
    channels_last: bool | str = "auto"  # auto: on CUDA only; true | false on every device
    compile: bool | str = False  # torch.compile the training forward: true (inductor) or a backend name
    early_stopping: int = 8  # epochs without validation improvement; 0 disables
    # Exponential moving average of the weights (timm's ModelEmaV3, decay warmed up from 0): its
    # decay, 0 disables. Validation, best.pt and the out-of-fold maps then use the average; the final
    # epoch's validation also scores the raw weights (history.csv: val_dice_raw), so the gain is on record.
    ema: float = 0.0
    # Progressive resizing: the first `progressive_epochs` epochs train at `progressive_size`
    # ([height, width], smaller than image.*: cheaper steps), the rest at image.height x image.width.
    progressive_epochs: int = 0
    progressive_size: list[int] = field(default_factory=lambda: [224, 336])
    num_workers: int = 4
    cache_images: bool = False  # keep resized images in RAM: small datasets with num_workers=0 only
    val_every: int = 1
    tensorboard: bool = False  # also log history.csv's curves to <run_dir>/tb/ (tensorboard --logdir runs)


@dataclass
class PredictConfig:
    tta: list[str] = field(default_factory=lambda: ["hflip"])  # names from pipeline.inference.tta.TTAS
    batch_size: int = 4
    num_workers: int = 4
    # Inference precision (auto | bf16 | fp16 | off, as train.amp) of the out-of-fold maps: recorded in
    # oof.json and the recipe, so the submission and predict apply each member in the precision its
    # threshold was tuned on. Independent of train.amp (checkpoints are fp32 either way).
    amp: str = "auto"


@dataclass
class Config:
    name: str = "vgg11"  # run name: outputs go to <runs_dir>/<name>/fold<fold>/
    data_dir: str = "data"
    folds_csv: str = "folds/folds.csv"
    # A CSV of car ids (folds/test_split.csv) kept out of training, validation and every choice made
    # on out-of-fold maps, so that a score on them stands for the model; null: every car of the folds.
    test_split: str | None = None
    runs_dir: str = "runs"
    fold: int | str = 0  # the held-out fold, or "full" (FULL): train on every car
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    model: ModelConfig = field(default_factory=ModelConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    @property
    def full(self) -> bool:
        """Trained on every car of the split (``fold: full``): no held-out cars."""
        return self.fold == FULL

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name / (FULL if self.full else f"fold{self.fold}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _coerce(value, typ, where: str):
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(typ, value, where)
    if origin is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        for arg in args[:-1]:  # the first type that takes the value (bool | str: true, or "auto")
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        return _coerce(value, args[-1], where)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if typ is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if typ is str and not isinstance(value, (dict, list)):
        return "none" if value is None else str(value)
    raise ConfigError(f"{where}: expected {getattr(typ, '__name__', typ)}, got {value!r}")


def _build(cls, data: dict, where: str = "config"):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["train.lr=1e-3", "fold=2"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            detail = str(getattr(e, "problem", None) or e).splitlines()[0]
            raise ConfigError(
                f"--set {item!r}: the value is not valid YAML ({detail}); quote it or fix the brackets"
            ) from None
        if not key.strip() or any(not p for p in key.strip().split(".")):
            raise ConfigError(f"--set {item!r}: empty key; use the form section.key=value, e.g. train.lr=1e-4")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            detail = str(getattr(e, "problem", None) or e).splitlines()[0]
            raise ConfigError(f"{path}:{where} not valid YAML ({detail})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text (YAML) file") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded
    if overrides:
        data = _merge(data, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    cfg = config_from_dict(data)
    # Checked where a config is read for a new run (not when a saved checkpoint's config is rebuilt).
    problem = run_name_problem(cfg.name)
    if problem:
        raise ConfigError(f"{path or 'config'}: name: {problem}")
    return cfg


AMP_SETTINGS = ("auto", "bf16", "fp16", "off")
# Settings that change how fast a run goes, never what it computes: a resumed run and the comparison of
# two runs' recipes both leave them out (pipeline/stages/train.py, pipeline/lineage/runs.py).
SPEED_SETTINGS = frozenset(
    {"train.num_workers", "train.cache_images", "train.compile", "train.tensorboard", "predict.batch_size",
     "predict.num_workers"}
)  # fmt: skip
_LEGACY_AMP_DTYPES = {"bfloat16": "auto", "float16": "fp16"}  # what `amp: true` meant with each amp_dtype


def _upgrade(data: dict) -> dict:
    """Configs written before ``train.amp: auto|bf16|fp16|off`` (YAML files and the dicts in checkpoints),
    and YAML's booleans for ``off``/``on``/``false``/``true``.

    They said ``amp: true|false`` (CUDA only) plus ``amp_dtype: bfloat16|float16``: true with bfloat16
    is ``auto`` (bf16 on CUDA, fp32 on CPU, as before), true with float16 is ``fp16``, false is ``off``.
    """
    predict = data.get("predict")
    if isinstance(predict, dict) and isinstance(predict.get("amp"), bool):  # YAML reads `amp: off` as false
        data = {**data, "predict": {**predict, "amp": "auto" if predict["amp"] else "off"}}
    train = data.get("train")
    if not isinstance(train, dict) or not ("amp_dtype" in train or isinstance(train.get("amp"), bool)):
        return data
    train = dict(train)
    amp = train.get("amp", True)
    if "amp_dtype" in train and not isinstance(amp, bool):
        raise ConfigError(
            f"config.train.amp_dtype: replaced by train.amp ({'|'.join(AMP_SETTINGS)}), which is {amp!r} here; "
            "remove amp_dtype"
        )
    dtype = train.pop("amp_dtype", "bfloat16")
    if dtype not in _LEGACY_AMP_DTYPES:
        raise ConfigError(
            f"config.train.amp_dtype={dtype!r}: not one of bfloat16, float16 "
            f"(or use train.amp: {'|'.join(AMP_SETTINGS)})"
        )
    train["amp"] = _LEGACY_AMP_DTYPES[dtype] if amp else "off"
    return {**data, "train": train}


def config_from_dict(data: dict) -> Config:
    cfg = _build(Config, _upgrade(data))
    _check_ranges(cfg)
    _check_choices(cfg)
    return cfg


def _check_choices(cfg: Config) -> None:
    choices = {
        "train.amp": (cfg.train.amp, AMP_SETTINGS),
        "predict.amp": (cfg.predict.amp, AMP_SETTINGS),
        "train.channels_last": (cfg.train.channels_last, (True, False, "auto")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:  # values are str or bool here (_coerce), so 1 never passes as True
            shown = ", ".join(str(a).lower() for a in allowed)
            raise ConfigError(f"{key}={value!r}: not one of {shown}")


# (path, smallest allowed value): sizes and counts that would fail deep inside torch otherwise.
_MINIMUM = {
    "image.height": 1,
    "image.width": 1,
    "train.epochs": 1,
    "train.batch_size": 1,
    "train.steps_per_epoch": 0,
    "train.num_workers": 0,
    "train.val_every": 1,
    "train.early_stopping": 0,
    "train.warmup_epochs": 0,
    "train.weight_decay": 0,
    "predict.batch_size": 1,
    "predict.num_workers": 0,
}


def _check_ranges(cfg: Config) -> None:
    if cfg.fold != FULL and not (isinstance(cfg.fold, int) and cfg.fold >= 0):
        raise ConfigError(f"fold={cfg.fold!r}: a fold number (0, 1, ...) or {FULL!r} (train on every car)")
    for key, low in _MINIMUM.items():
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name)
        if value < low:
            raise ConfigError(f"{key}={value}: must be at least {low}")
    if not cfg.train.lr > 0 or not math.isfinite(cfg.train.lr):
        raise ConfigError(f"train.lr={cfg.train.lr}: must be a positive number")
    if cfg.model.decoder_channels is not None and any(c < 1 for c in cfg.model.decoder_channels):
        raise ConfigError(f"model.decoder_channels={cfg.model.decoder_channels}: channel counts must be positive")
