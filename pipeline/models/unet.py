"""U-Nets from segmentation-models-pytorch, wrapped so that every caller feeds raw pixels.

``SegModel`` takes uint8-range RGB (B,3,H,W), normalizes with the ImageNet statistics, pads to
the encoder's stride and crops the logits back, so training, out-of-fold prediction and
submission cannot disagree on preprocessing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import inspect
import io
import pickle
import socket
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import Config, ConfigError, ModelConfig, config_from_dict
from ..core.errors import CheckpointError, LineageError, PipelineError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(PipelineError, RuntimeError):
    pass


class RefineBlock(nn.Module):
    """Residual refinement of the decoder's logits from the logits and the normalised image.

    Two 3x3 conv-BN-ReLU layers and a 3x3 conv to one channel, added to the logits. The last conv
    starts at zero, so a new block is the identity and training only moves it where it helps.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(4, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return logits + self.body(torch.cat([logits, x.to(logits.dtype)], 1))


class SegModel(nn.Module):
    def __init__(self, net: nn.Module, stride: int = 32, refine: int = 0, mean=None, std=None):
        """``mean``/``std``: per RGB channel on the 0..255 scale (an exported folder's pipeline.json);
        ImageNet's by default, as every model here is trained."""
        super().__init__()
        self.net = net
        self.stride = stride
        self.refine = RefineBlock(refine) if refine else None
        mean = torch.tensor(mean, dtype=torch.float32) if mean is not None else torch.tensor(IMAGENET_MEAN) * 255
        std = torch.tensor(std, dtype=torch.float32) if std is not None else torch.tensor(IMAGENET_STD) * 255
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B,3,H,W) RGB in 0..255 (uint8 or float). Returns logits (B,1,H,W)."""
        x = (x.float() - self.mean) / self.std
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        logits = self.net(x)
        if self.refine is not None:
            logits = self.refine(logits, x)
        return logits[..., :h, :w]


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":  # the smp-hub / timm hub format
        from safetensors.torch import load_file

        obj = load_file(path)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "encoder"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: not a state dict (got {type(obj).__name__})")
    if obj and all(k.startswith("encoder.") for k in obj):
        obj = {k[len("encoder.") :]: v for k, v in obj.items()}
    return obj


def load_encoder_weights(net: nn.Module, path: str | Path) -> None:
    """Load an ImageNet state dict file into ``net.encoder`` (strict, with a clear error)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: encoder weights file not found")
    state = _read_state_dict(path)
    try:
        # smp encoders drop their classifier keys (fc.*, classifier.*) in load_state_dict.
        net.encoder.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{path}: does not match the encoder: {str(e)[:600]}") from None


def _arch_class(arch: str):
    archs = smp.MODEL_ARCHITECTURES_MAPPING
    if arch.lower() not in archs:
        names = sorted(c.__name__ for c in archs.values())
        raise ConfigError(f"model.arch={arch!r}: unknown architecture; available: {', '.join(names)}")
    return archs[arch.lower()]


def _check_encoder(encoder: str) -> None:
    if encoder.startswith("tu-"):
        import timm

        if timm.is_model(encoder[3:]):
            return
        close = difflib.get_close_matches(encoder[3:], timm.list_models(), n=3)
        hint = f"; close: {', '.join('tu-' + c for c in close)}" if close else ""
        raise ConfigError(f"model.encoder={encoder!r}: timm has no model {encoder[3:]!r}{hint}")
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        close = difflib.get_close_matches(encoder, names, n=3)
        hint = f"close: {', '.join(close)}; " if close else ""
        raise ConfigError(
            f"model.encoder={encoder!r}: unknown encoder ({hint}any of smp.encoders.get_encoder_names(), "
            "or tu-<timm model name>)"
        )


def resolve_model_config(mcfg: ModelConfig) -> ModelConfig:
    """Check the names and fill in what the architecture actually uses; ConfigError naming the key.

    ``decoder_channels`` is passed only to architectures that take it, so a value for one that
    does not would be silently ignored while the saved config claims it: that is an error. Unset
    (null), it becomes the architecture's default, so the saved config says what was built.
    """
    cls = _arch_class(mcfg.arch)
    _check_encoder(mcfg.encoder)
    param = inspect.signature(cls.__init__).parameters.get("decoder_channels")
    channels = mcfg.decoder_channels
    if param is None:
        if channels is not None:
            raise ConfigError(
                f"model.decoder_channels={channels}: architecture {cls.__name__} has no decoder_channels "
                "argument and would ignore it; remove it (or set it to null)"
            )
    elif isinstance(param.default, int):  # DeepLabV3Plus, PAN, UPerNet: one width for the whole decoder
        if channels is None:
            channels = [param.default]
        elif len(channels) != 1:
            raise ConfigError(
                f"model.decoder_channels={channels}: architecture {cls.__name__} takes one decoder width; "
                f"use a one-element list, e.g. [{param.default}]"
            )
    else:
        channels = list(param.default) if channels is None else channels
        if len(channels) != len(param.default):
            raise ConfigError(
                f"model.decoder_channels={channels}: architecture {cls.__name__} needs {len(param.default)} "
                f"values (one per decoder block), e.g. {list(param.default)}"
            )
    return dataclasses.replace(mcfg, decoder_channels=None if channels is None else list(channels))


HUB_HOST = "huggingface.co"


@contextlib.contextmanager
def _offline_unless_reachable(hub: bool, timeout: float = 3.0):
    """Hub weights without the hub's minute of retries when it cannot be reached: a quick look at the
    host first; unreachable, huggingface_hub runs offline (weights in its cache still load, others fail
    at once with the WeightsError below)."""
    if not hub:
        yield
        return
    import huggingface_hub.constants as hf

    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        reachable = True
    except OSError:
        reachable = False
    was = hf.HF_HUB_OFFLINE
    hf.HF_HUB_OFFLINE = was or not reachable
    try:
        yield
    finally:
        hf.HF_HUB_OFFLINE = was


def build_model(mcfg: ModelConfig) -> SegModel:
    mcfg = resolve_model_config(mcfg)
    weights = mcfg.encoder_weights
    kwargs = {}
    if mcfg.decoder_channels is not None:
        channels = mcfg.decoder_channels
        takes_int = isinstance(
            inspect.signature(_arch_class(mcfg.arch).__init__).parameters["decoder_channels"].default, int
        )
        kwargs["decoder_channels"] = channels[0] if takes_int else list(channels)
    hub = weights.lower() not in ("none", "") and not _looks_like_path(weights)
    try:
        with _offline_unless_reachable(hub):
            net = smp.create_model(
                mcfg.arch, encoder_name=mcfg.encoder, encoder_weights=weights if hub else None, classes=1, **kwargs
            )
    except (OSError, ConnectionError, RuntimeError) as e:
        if not hub:
            raise
        raise WeightsError(
            f"could not get '{weights}' weights for encoder {mcfg.encoder} from the hub ({type(e).__name__}: "
            f"{str(e)[:200]}). Offline? Download them at home and set model.encoder_weights=/path/to/file.pth, "
            "or model.encoder_weights=none to train from scratch."
        ) from None
    except (KeyError, ValueError) as e:  # smp's own checks, e.g. weights it has no entry for
        raise ConfigError(
            f"model {mcfg.arch}/{mcfg.encoder} (weights {weights}): {str(e).strip(chr(39))[:300]}"
        ) from None
    if _looks_like_path(weights):
        load_encoder_weights(net, weights)
    return SegModel(net, refine=mcfg.refine)


def _looks_like_path(weights: str) -> bool:
    return any(weights.endswith(ext) for ext in (".pth", ".pt", ".bin", ".ckpt", ".safetensors")) or "/" in weights


def _numpy_globals() -> list:
    """The numpy types that checkpoints written before numpy RNG states were stored as tensors hold."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_checkpoint(path: str | Path, what: str = "checkpoint", mmap: bool = False, data: bytes | None = None) -> dict:
    """Load a pipeline checkpoint safely; CheckpointError naming the path if it is not one.

    ``weights_only=True``: only tensors, containers and plain values are unpickled (plus the numpy
    array types older checkpoints hold, allowed by name), so a crafted ``.pt`` cannot run code.
    ``mmap=True`` maps the tensors instead of reading them (to look at the config only). ``data``: the
    file's bytes, already read (``load_checkpoint`` hashes the very bytes it loads).
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            source = io.BytesIO(data) if data is not None else path
            ckpt = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap and data is None)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"{path}: unreadable {what}, truncated or not a torch file ({e})") from None
        raise CheckpointError(
            f"{path}: refused: it holds Python objects that a checkpoint of this pipeline never has, and "
            "loading them could run code. Use checkpoints written by `make train`, from sources you trust"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for a broken file
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: unreadable {what}, truncated or not a torch file ({detail})") from None
    if not isinstance(ckpt, dict) or not {"config", "model"} <= set(ckpt):
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not a checkpoint of this pipeline (has {keys}, expected 'config' and 'model'); "
            "for encoder weights use model.encoder_weights=<file>"
        )
    return ckpt


def read_bytes(path: str | Path, what: str = "checkpoint") -> tuple[bytes, str]:
    """A file's bytes and their sha256 (16 hex digits, as provenance.file_sha256): one read for both, so
    what is hashed is what is loaded, even if the file is replaced meanwhile (a retrain finishing)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a folder, not a {what} file") from None
    return data, hashlib.sha256(data).hexdigest()[:16]


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", expect_sha: str | None = None
) -> tuple[SegModel, Config, str, dict]:
    """(model, config, sha256 of the bytes loaded, the checkpoint's other fields) from one read of ``path``.

    ``expect_sha``: the content hash a record holds for it (a recipe, oof.json); other bytes are a
    LineageError naming the file, however recently they were swapped in.
    """
    path = Path(path)
    data, sha = read_bytes(path)
    if expect_sha is not None and sha != expect_sha:
        raise LineageError(
            f"{path}: changed since it was recorded (sha256 {expect_sha} then, {sha} now: retrained, replaced or "
            "copied over); re-run `make ensemble` to tune for the checkpoints there now"
        )
    ckpt = read_checkpoint(path, data=data)
    model, cfg = _build_from(ckpt, path, device)
    meta = {k: v for k, v in ckpt.items() if k != "model"}
    return model, cfg, sha, meta


def load_checkpoint_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[SegModel, Config]:
    """Rebuild a trained model from a checkpoint (no encoder download: the weights are inside)."""
    model, cfg, _, _ = load_checkpoint(path, device)
    return model, cfg


def _build_from(ckpt: dict, path: Path, device) -> tuple[SegModel, Config]:
    cfg = config_from_dict(ckpt["config"])
    cfg.model.encoder_weights = "none"
    if "decoder_channels" not in inspect.signature(_arch_class(cfg.model.arch).__init__).parameters:
        cfg.model.decoder_channels = None  # saved by versions that silently ignored it for this arch
    model = build_model(cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match its config ({str(e).splitlines()[0][:200]})") from None
    return model.to(device).eval(), cfg
