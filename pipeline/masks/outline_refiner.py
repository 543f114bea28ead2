"""``refine_outline``: a small learned network that redraws the outline at full resolution.

A 320x480 U-Net's outline is about a pixel off almost everywhere once upsampled to 1918x1280: most of
the error left on good photos sits on the outline (docs/accuracy.md). After boundary patch refinement
(Tang et al., CVPR 2021) and CascadePSP (Cheng et al., CVPR 2020), a network of a few thousand weights
(five 3x3 convolutions, dilated 1-8, 16 channels) looks at the photo and the coarse probability in
48x48 tiles along the outline (8 pixels of context each side) and corrects the coarse logit there;
everywhere else the mask stays as it was.

It is trained from the true masks alone (``docs/scripts/outline_refiner.py train``): the coarse input is
imitated from the truth (area-downsampled to 320x480, shifted, blurred, upsampled), so one refiner
serves any coarse model. Its weights travel inside the parameters of the step (``postprocess_params``,
base64 of a safetensors blob): the model folder's ``pipeline.json`` and every recipe made from it hold
and hash them like any other setting, and nothing else has to be found on disk.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import threading

import cv2
import numpy as np
import torch
import torch.nn as nn

DEFAULTS = {"core": 48, "margin": 8, "band": 3, "width": 16, "dilations": [1, 2, 4, 8], "batch": 64}
KEYS = (*DEFAULTS, "weights", "sha256")
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


class OutlineRefiner(nn.Module):
    """Coarse logit + a correction from the photo and the coarse probability (zero at initialisation)."""

    def __init__(self, width: int = DEFAULTS["width"], dilations=tuple(DEFAULTS["dilations"])):
        super().__init__()
        layers = [nn.Conv2d(4, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        for d in dilations:
            layers += [nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, rgb: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """``rgb``: (N,3,H,W) on the 0..255 scale; ``prob``: (N,1,H,W) in [0, 1]; returns refined logits."""
        p = prob.clamp(1e-4, 1 - 1e-4)
        logit = torch.log(p / (1 - p))
        x = torch.cat([(rgb - _MEAN) / _STD, (p - 0.5) * 4], 1)
        return logit + self.head(self.body(x))


def to_tensors(rgb: np.ndarray, prob_u8: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,h,w,3) uint8 photos and (N,h,w) uint8 probabilities -> the network's two inputs."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()
    p = torch.from_numpy(np.ascontiguousarray(prob_u8)).float().unsqueeze(1) / 255
    return x, p


# -- weights in the parameters ------------------------------------------------------------------------
def encode_weights(net: OutlineRefiner) -> tuple[str, str]:
    """(base64 text, its sha256) of the network's state as a safetensors blob (fp32, exact)."""
    from safetensors.torch import save

    blob = save({k: v.detach().float().contiguous() for k, v in net.state_dict().items()})
    text = base64.b64encode(blob).decode("ascii")
    return text, hashlib.sha256(text.encode("ascii")).hexdigest()


def params_for(net: OutlineRefiner, **geometry) -> dict:
    """The step's parameters for ``net``: its weights, their hash, and the tiling (``DEFAULTS`` otherwise)."""
    text, sha = encode_weights(net)
    body = [m for m in net.body if isinstance(m, nn.Conv2d)]
    params = dict(DEFAULTS, width=body[0].out_channels, dilations=[int(m.dilation[0]) for m in body[1:]])
    params.update(geometry)
    return dict(params, weights=text, sha256=sha)


def _whole(v, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def params_problem(params) -> str | None:
    """What in the step's parameters cannot be applied as it is, or None."""
    if not isinstance(params, dict):
        return "an object with the refiner's weights and tiling"
    extra = sorted(set(params) - set(KEYS))
    if extra:
        return f"unknown key(s) {extra}; known: {', '.join(KEYS)}"
    for key in ("core", "margin", "band", "width", "batch"):
        v = params.get(key, DEFAULTS[key])
        low = 0 if key == "margin" else 1
        if not _whole(v, low, 4096):
            return f"{key} {v!r}: a whole number {low}..4096"
    dil = params.get("dilations", DEFAULTS["dilations"])
    if not (isinstance(dil, list) and dil and all(_whole(d, 1, 4096) for d in dil)):
        return f"dilations {dil!r}: a list of whole numbers >= 1"
    text, sha = params.get("weights"), params.get("sha256")
    if not isinstance(text, str) or not text:
        return "weights: missing (base64 of the refiner's safetensors, written by `make export ... --refiner`)"
    if hashlib.sha256(text.encode("ascii", "replace")).hexdigest() != sha:
        return "weights: not the ones its sha256 names (changed or cut short)"
    try:
        _network(text, int(params.get("width", DEFAULTS["width"])), tuple(dil))
    except Exception as e:  # bad base64, not safetensors, other shapes: one line saying so
        return f"weights: cannot be loaded into the refiner ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    return None


@functools.lru_cache(maxsize=4)
def _network(text: str, width: int, dilations: tuple[int, ...]) -> OutlineRefiner:
    from safetensors.torch import load

    net = OutlineRefiner(width, dilations)
    net.load_state_dict(load(base64.b64decode(text.encode("ascii"), validate=True)))
    return net.eval()


def network(params: dict) -> OutlineRefiner:
    problem = params_problem(params)
    if problem:
        raise ValueError(f"refine_outline: {problem}")
    dilations = tuple(params.get("dilations", DEFAULTS["dilations"]))
    return _network(params["weights"], int(params.get("width", DEFAULTS["width"])), dilations)


# -- apply -------------------------------------------------------------------------------------------
def outline_tiles(mask: np.ndarray, core: int, band: int) -> np.ndarray:
    """(row, col) of the core x core tiles that hold the mask's outline (``band`` pixels each side)."""
    h, w = mask.shape
    edge = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((2 * band + 1, 2 * band + 1), np.uint8))
    gh, gw = -(-h // core), -(-w // core)
    padded = np.zeros((gh * core, gw * core), np.uint8)
    padded[:h, :w] = edge
    return np.argwhere(padded.reshape(gh, core, gw, core).any(axis=(1, 3)))


def openvino_runner(params: dict, precision: str, threads: int):
    """The refiner of ``params`` compiled by OpenVINO (``precision``: ``f32`` or ``bf16``) for its tile size:
    ``run(rgb (N,k,k,3) uint8, prob (N,k,k) uint8) -> logits (N,1,k,k)``, from any thread. Built once per
    weights, precision and thread count (compiling takes about a second)."""
    network(params)  # checked as every use of the step checks it
    k = int(params.get("core", DEFAULTS["core"])) + 2 * int(params.get("margin", DEFAULTS["margin"]))
    dilations = tuple(params.get("dilations", DEFAULTS["dilations"]))
    with _COMPILING:  # photo threads meeting it first build it once
        return _openvino_runner(
            params["weights"], int(params.get("width", DEFAULTS["width"])), dilations, k, precision, threads
        )


_COMPILING = threading.Lock()


@functools.lru_cache(maxsize=4)
def _openvino_runner(text: str, width: int, dilations: tuple[int, ...], k: int, precision: str, threads: int):
    import io

    from ..core.cpu_runtime import openvino_callable

    net = _network(text, width, dilations)
    buf = io.BytesIO()
    example = (torch.zeros(1, 3, k, k), torch.zeros(1, 1, k, k))
    axes = {"rgb": {0: "n"}, "prob": {0: "n"}, "logit": {0: "n"}}
    with torch.no_grad():
        torch.onnx.export(
            net, example, buf, input_names=["rgb", "prob"], output_names=["logit"], dynamic_axes=axes,
            opset_version=17, dynamo=False,
        )  # fmt: skip
    run = openvino_callable(buf.getvalue(), precision, threads, streams=threads)

    def logits(rgb: np.ndarray, prob: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=np.float32)
        p = prob[:, None].astype(np.float32) / 255  # as to_tensors: the same inputs as the PyTorch network's
        return run(x, p)

    return logits


def refine_probabilities(
    net: OutlineRefiner,
    image: np.ndarray,
    blended: np.ndarray,
    mask: np.ndarray,
    *,
    core: int,
    margin: int,
    band: int,
    batch: int,
    run=None,
) -> tuple[np.ndarray, np.ndarray]:
    """(tiles, refined uint8 probabilities (T, core, core)) along the outline of ``mask``.

    ``run``: the network compiled by another runtime (``openvino_runner``), else ``net`` in PyTorch."""
    h, w = mask.shape
    cells = outline_tiles(mask, core, band)
    if not len(cells):
        return cells, np.zeros((0, core, core), np.uint8)
    gh, gw = -(-h // core), -(-w // core)
    H, W = gh * core + 2 * margin, gw * core + 2 * margin
    rgb_p = cv2.copyMakeBorder(image, margin, H - h - margin, margin, W - w - margin, cv2.BORDER_REFLECT)
    q_p = cv2.copyMakeBorder(blended, margin, H - h - margin, margin, W - w - margin, cv2.BORDER_REFLECT)
    k = core + 2 * margin
    out = []
    with torch.inference_mode():
        for i in range(0, len(cells), batch):
            cs = cells[i : i + batch]
            x = np.stack([rgb_p[r * core : r * core + k, c * core : c * core + k] for r, c in cs])
            p = np.stack([q_p[r * core : r * core + k, c * core : c * core + k] for r, c in cs])
            logit = net(*to_tensors(x, p)) if run is None else torch.from_numpy(run(x, p))
            prob = torch.sigmoid(logit)[:, 0, margin : margin + core, margin : margin + core]
            out.append((prob * 255 + 0.5).clamp(0, 255).byte().numpy())
    return cells, np.concatenate(out)


def refine_outline(
    mask: np.ndarray,
    blended: np.ndarray,
    image: np.ndarray,
    params: dict,
    openvino: tuple[str, int] | None = None,
) -> np.ndarray:
    """The mask with every tile along its outline redrawn where the refined probability is >= 1/2.

    The refiner was trained to put the outline at probability 1/2 (its logit correction is learnt with
    binary cross-entropy), so inside the tiles that is the threshold; outside them nothing changes.
    ``openvino``: (precision, threads) to run the network in OpenVINO (``openvino_runner``), else PyTorch."""
    if blended.shape != mask.shape or image.shape[:2] != mask.shape:
        raise ValueError(
            f"refine_outline: the mask {mask.shape}, probabilities {blended.shape} and photo {image.shape[:2]} "
            "differ in size"
        )
    net = network(params)
    geo = {k: int(params.get(k, DEFAULTS[k])) for k in ("core", "margin", "band", "batch")}
    run = openvino_runner(params, *openvino) if openvino else None
    cells, tiles = refine_probabilities(net, image, blended, mask, **geo, run=run)
    out = mask.astype(np.uint8, copy=True)
    core, (h, w) = geo["core"], mask.shape
    for (r, c), t in zip(cells, tiles):
        y0, x0 = r * core, c * core
        hh, ww = min(core, h - y0), min(core, w - x0)
        out[y0 : y0 + hh, x0 : x0 + ww] = t[:hh, :ww] >= 128
    return out
