"""U-Nets from segmentation-models-pytorch, wrapped so that every caller feeds raw pixels.

``SegModel`` takes uint8-range RGB (B,3,H,W), normalizes with the ImageNet statistics, pads to
the encoder's stride and crops the logits back, so training, out-of-fold prediction and
submission cannot disagree on preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from .config import Config, ModelConfig, config_from_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DECODER_CHANNEL_ARCHS = {"Unet", "UnetPlusPlus"}


class WeightsError(RuntimeError):
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
    def __init__(self, net: nn.Module, stride: int = 32, refine: int = 0):
        super().__init__()
        self.net = net
        self.stride = stride
        self.refine = RefineBlock(refine) if refine else None
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

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


def build_model(mcfg: ModelConfig) -> SegModel:
    weights = mcfg.encoder_weights
    kwargs = {"decoder_channels": list(mcfg.decoder_channels)} if mcfg.arch in _DECODER_CHANNEL_ARCHS else {}
    hub = weights.lower() not in ("none", "") and not _looks_like_path(weights)
    try:
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
    if _looks_like_path(weights):
        load_encoder_weights(net, weights)
    return SegModel(net, refine=mcfg.refine)


def _looks_like_path(weights: str) -> bool:
    return any(weights.endswith(ext) for ext in (".pth", ".pt", ".bin", ".ckpt", ".safetensors")) or "/" in weights


def load_checkpoint_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[SegModel, Config]:
    """Rebuild a trained model from a checkpoint (no encoder download: the weights are inside)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = config_from_dict(ckpt["config"])
    cfg.model.encoder_weights = "none"
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg
