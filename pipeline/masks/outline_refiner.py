"""``refine_outline``: a small learned network that redraws the outline at full resolution.

A 320x480 U-Net's outline is about a pixel off almost everywhere once upsampled to 1918x1280: most of
the error left on good photos sits on the outline (docs/record/accuracy-levers.md). After boundary patch refinement
(Tang et al., CVPR 2021) and CascadePSP (Cheng et al., CVPR 2020), a network of a few thousand weights
(five 3x3 convolutions, dilated 1-8, 16 channels) looks at the photo and the coarse probability in
48x48 tiles along the outline (8 pixels of context each side) and corrects the coarse logit there;
everywhere else the mask stays as it was.

It is trained from the true masks alone (``docs/scripts/outline_refiner.py train``): the coarse input is
imitated from the truth (area-downsampled to 320x480, shifted, blurred, upsampled), so one refiner
serves any coarse model. Its weights travel inside the parameters of the step (``postprocess_params``,
base64 of a safetensors blob): the model folder's ``pipeline.json`` and every recipe made from it hold
and hash them like any other setting, and nothing else has to be found on disk.

Checked like the network's weights, wherever a refiner is read (``params_problem``): the blob must be
the one its sha256 names, every weight finite and every BatchNorm variance non-negative; its
architecture (width, dilations) and the photo size it was trained at are read from the blob itself (the
tensors' shapes and the safetensors metadata, inside the hashed text), and a ``width`` or ``dilations``
in the parameters that disagrees is refused. It runs only at about the scale it was trained at
(``SCALE_BAND``; elsewhere the mask stays as the network made it, with a one-line note), and its tiling
is bounded so that a batch of tiles never needs more than ``MAX_BATCH_BYTES``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import sys
import threading

import cv2
import numpy as np
import torch
import torch.nn as nn

from .probability import HALF

DEFAULTS = {"core": 48, "margin": 8, "band": 3, "width": 16, "dilations": [1, 2, 4, 8], "batch": 64}
KEYS = (*DEFAULTS, "weights", "sha256")
# The tiling and the network, bounded: a batch of tiles holds batch x width x (core + 2 margin)^2 floats
# per layer, which must stay under MAX_BATCH_BYTES (the shipped 64 x 16 x 64^2 x 4 bytes is 17 MB); the
# padded photo and probabilities add at most core + 2 margin rows and columns to the photo.
LIMITS = {"core": (8, 256), "margin": (0, 64), "band": (1, 32), "width": (1, 64), "batch": (1, 256)}
MAX_DILATIONS, MAX_DILATION = 8, 64
MAX_BATCH_BYTES = 256 * 2**20
# The photo size a blob without that record was trained at (docs/scripts/outline_refiner.py trains on the
# 1918x1280 photos, and `export --refiner` wrote no record before the architecture was stored with it).
TRAINED_SIZE = (1280, 1918)
# Scales (the photo's width and height, each over the size it was trained at) at which the refiner is
# applied. It sees pixels: 48x48 tiles, dilations 1-8, edges as sharp as a 1918x1280 photo's. Measured with
# the shipped folder on 16 test-split photos resized to each scale (docs/record/post-processing.md,
# "The outline refiner's scale"; docs/scripts/refiner_scale.py): +0.00117 Dice at 1, +0.00078 at 0.7
# and +0.00056 at 1.4 (at most 1 of 16 photos worse), but +0.00010 at 0.5 (5 worse), -0.00063 at 0.25
# (15 worse) and +0.00017 at 2 (4 worse);
# a portrait photo (1280x1918, squeezed by the network's 320x480 input) loses 0.0048. Both sides must lie
# in the band, so a portrait or squeezed photo is left as the network made it.
SCALE_BAND = (0.7, 1.4)
# safetensors metadata of a refiner blob (strings): what binds the architecture to the weights.
META_FORMAT = "pipeline.outline_refiner/1"
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
def architecture_of(net: OutlineRefiner) -> tuple[int, tuple[int, ...]]:
    """(width, dilations) of a network."""
    body = [m for m in net.body if isinstance(m, nn.Conv2d)]
    return body[0].out_channels, tuple(int(m.dilation[0]) for m in body[1:])


def encode_weights(net: OutlineRefiner, trained_size: tuple[int, int] = TRAINED_SIZE) -> tuple[str, str]:
    """(base64 text, its sha256) of the network's state as a safetensors blob (fp32, exact), with its
    architecture and the (height, width) of the photos it was trained on in the blob's metadata."""
    from safetensors.torch import save

    width, dilations = architecture_of(net)
    meta = {
        "format": META_FORMAT,
        "width": str(width),
        "dilations": ",".join(map(str, dilations)),
        "trained_size": f"{int(trained_size[0])}x{int(trained_size[1])}",
    }
    blob = save({k: v.detach().float().contiguous() for k, v in net.state_dict().items()}, metadata=meta)
    text = base64.b64encode(blob).decode("ascii")
    return text, hashlib.sha256(text.encode("ascii")).hexdigest()


def save_file(net: OutlineRefiner, path, trained_size: tuple[int, int] = TRAINED_SIZE) -> None:
    """The network as a safetensors file with its architecture and training size (what ``export --refiner``
    reads back into the step's parameters)."""
    from pathlib import Path

    Path(path).write_bytes(base64.b64decode(encode_weights(net, trained_size)[0]))


def params_for(net: OutlineRefiner, trained_size: tuple[int, int] = TRAINED_SIZE, **geometry) -> dict:
    """The step's parameters for ``net``: its weights (with its architecture and the (height, width) it was
    trained at), their hash, and the tiling (``DEFAULTS`` otherwise)."""
    text, sha = encode_weights(net, trained_size)
    width, dilations = architecture_of(net)
    params = dict(DEFAULTS, width=width, dilations=list(dilations))
    params.update(geometry)
    return dict(params, weights=text, sha256=sha)


def params_from_state(state: dict, metadata: dict | None = None, **geometry) -> dict:
    """The step's parameters for a refiner's state dict (and the safetensors metadata it came with), checked
    as every reader checks them: ValueError naming the problem (non-finite weights, another network)."""
    width, dilations, trained = _blob_architecture(state, dict(metadata or {}))
    net = OutlineRefiner(width, dilations)
    net.load_state_dict(state)
    params = params_for(net.eval(), trained, **geometry)
    problem = params_problem(params)
    if problem:
        raise ValueError(problem)
    return params


def _whole(v, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def params_problem(params) -> str | None:
    """What in the step's parameters cannot be applied as it is, or None: the tiling within ``LIMITS``, the
    weights those its sha256 names, loadable, finite, and of the width and dilations the parameters say."""
    if not isinstance(params, dict):
        return "an object with the refiner's weights and tiling"
    extra = sorted(set(params) - set(KEYS))
    if extra:
        return f"unknown key(s) {extra}; known: {', '.join(KEYS)}"
    for key, (low, high) in LIMITS.items():
        v = params.get(key, DEFAULTS[key])
        if not _whole(v, low, high):
            return f"{key} {v!r}: a whole number {low}..{high}"
    dil = params.get("dilations", DEFAULTS["dilations"])
    if not (isinstance(dil, list) and 1 <= len(dil) <= MAX_DILATIONS and all(_whole(d, 1, MAX_DILATION) for d in dil)):
        return f"dilations {dil!r}: a list of 1..{MAX_DILATIONS} whole numbers 1..{MAX_DILATION}"
    g = {k: params.get(k, DEFAULTS[k]) for k in LIMITS}
    batch_bytes = g["batch"] * g["width"] * (g["core"] + 2 * g["margin"]) ** 2 * 4
    if batch_bytes > MAX_BATCH_BYTES:
        return (
            f"batch {g['batch']} of {g['core'] + 2 * g['margin']}-pixel tiles at width {g['width']}: "
            f"{batch_bytes / 2**20:.0f} MiB per layer, more than {MAX_BATCH_BYTES // 2**20} MiB; lower batch or core"
        )
    text, sha = params.get("weights"), params.get("sha256")
    if not isinstance(text, str) or not text:
        return "weights: missing (base64 of the refiner's safetensors, written by `make export ... --refiner`)"
    if hashlib.sha256(text.encode("ascii", "replace")).hexdigest() != sha:
        return "weights: not the ones its sha256 names (changed or cut short)"
    try:
        net, trained = _network(text)
    except ValueError as e:
        return f"weights: {e}"
    except Exception as e:  # bad base64, not safetensors, other shapes: one line saying so
        return f"weights: cannot be loaded into the refiner ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
    width, dilations = architecture_of(net)
    if params.get("width", width) != width or list(params.get("dilations", dilations)) != list(dilations):
        return (
            f"width {params.get('width', width)} and dilations {list(params.get('dilations', dilations))} "
            f"disagree with its weights (width {width}, dilations {list(dilations)}): they would run another "
            "network; export the refiner again"
        )
    return None


def _blob_architecture(state: dict, meta: dict) -> tuple[int, tuple[int, ...], tuple[int, int]]:
    """(width, dilations, trained (height, width)) of a blob, from the tensors and the metadata it holds.

    The width is the first convolution's output channels, and the number of dilated layers the number of
    convolutions after it: both are in the tensors' shapes. The dilations are not (a 3x3 kernel has the
    same shape at any dilation): a blob written by this version records them in its metadata. A blob
    without metadata was written before that, by ``export --refiner``, which always built the network
    with the default dilations (1, 2, 4, 8) and always from a refiner trained on 1918x1280 photos: so
    such a blob is that network, and any other dilations would run weights trained for one geometry
    with another. It is read as the defaults, and only as them (the shipped folder's blob is one).
    """
    convs = sorted(
        int(k.split(".")[1])
        for k, v in state.items()
        if k.startswith("body.") and k.endswith(".weight") and v.ndim == 4
    )
    if not convs or "head.weight" not in state:
        raise ValueError("not an outline refiner's weights (no body convolutions or head)")
    width, layers = int(state[f"body.{convs[0]}.weight"].shape[0]), len(convs) - 1
    if meta.get("format") == META_FORMAT:
        try:
            dilations = tuple(int(d) for d in meta["dilations"].split(","))
            th, tw = (int(v) for v in meta["trained_size"].split("x"))
            if int(meta["width"]) != width:
                raise ValueError
        except (KeyError, ValueError):
            raise ValueError(f"its metadata {meta} does not describe its tensors") from None
        if len(dilations) != layers:
            raise ValueError(f"its metadata names {len(dilations)} dilations for {layers} dilated layers")
        return width, dilations, (th, tw)
    if meta:
        raise ValueError(f"its metadata is not an outline refiner's ({sorted(meta)})")
    default = tuple(DEFAULTS["dilations"])
    if layers != len(default):
        raise ValueError(f"{layers} dilated layers and no record of their dilations (the defaults have {len(default)})")
    return width, default, TRAINED_SIZE


@functools.lru_cache(maxsize=4)
def _network(text: str) -> tuple[OutlineRefiner, tuple[int, int]]:
    """The network a blob holds, built with the architecture it records, checked finite; and the
    (height, width) it was trained at. ValueError saying what is wrong with it."""
    from safetensors.torch import load

    blob = base64.b64decode(text.encode("ascii"), validate=True)
    state = load(blob)
    width, dilations, trained = _blob_architecture(state, _metadata(blob))
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(
                f"{key} holds {bad} non-finite value(s) (NaN or infinity); the refiner would erase the outline"
            )
        if key.endswith("running_var") and bool((t < 0).any()):
            raise ValueError(f"{key} holds a negative variance; the refiner would erase the outline")
    net = OutlineRefiner(width, dilations)
    net.load_state_dict(state)
    return net.eval(), trained


def _metadata(blob: bytes) -> dict:
    """The ``__metadata__`` of a safetensors blob's JSON header (the format: an 8-byte length, then the header)."""
    import json
    import struct

    (n,) = struct.unpack("<Q", blob[:8])
    return dict(json.loads(blob[8 : 8 + n]).get("__metadata__") or {})


def network(params: dict) -> OutlineRefiner:
    problem = params_problem(params)
    if problem:
        raise ValueError(f"refine_outline: {problem}")
    return _network(params["weights"])[0]


def trained_size(params: dict) -> tuple[int, int]:
    """The (height, width) of the photos the refiner of ``params`` was trained on (checked parameters)."""
    network(params)
    return _network(params["weights"])[1]


def scale_problem(shape: tuple[int, int], params: dict) -> str | None:
    """Why the refiner is not applied to a photo of ``shape`` (height, width), or None: its width and its
    height, each against the size the refiner was trained at, must lie within SCALE_BAND."""
    th, tw = trained_size(params)
    sy, sx = shape[0] / th, shape[1] / tw
    lo, hi = SCALE_BAND
    if lo <= sx <= hi and lo <= sy <= hi:
        return None
    return (
        f"{shape[1]}x{shape[0]} is {sx:.2f} times the width and {sy:.2f} times the height of the {tw}x{th} photos "
        f"it was trained on (applied from {lo} to {hi} times each)"
    )


@functools.lru_cache(maxsize=64)
def _note_skip(reason: str) -> None:
    """Said once per process and photo size: a submission of 100,000 photos of one size prints one line."""
    from tqdm import tqdm  # its write keeps a progress bar of the stage whole

    tqdm.write(f"note: refine_outline skipped: {reason}; the mask is the network's", file=sys.stderr)


# -- apply -------------------------------------------------------------------------------------------
def outline_tiles(mask: np.ndarray, core: int, band: int) -> np.ndarray:
    """(row, col) of the core x core tiles that hold the mask's outline (``band`` pixels each side).

    The outline is where the morphological gradient with a (2 band + 1)^2 square is non-zero: pixels whose
    window holds two values. A tile holds such a pixel exactly when the tile widened by ``band`` (within
    the image) holds two values (two different neighbours lie in it, and the window of the tile pixel
    nearest to them holds both), so the minimum and maximum of each widened tile decide, without the
    full-size gradient."""
    m = np.asarray(mask).astype(np.uint8, copy=False)
    h, w = m.shape
    gh, gw = -(-h // core), -(-w // core)
    # Per tile row, the columns' max and min over its widened rows; then over each tile's widened columns.
    hi, lo = np.empty((gh, w), np.uint8), np.empty((gh, w), np.uint8)
    for r in range(gh):
        rows = m[max(0, r * core - band) : min(h, (r + 1) * core + band)]
        rows.max(axis=0, out=hi[r])  # NumPy: ten times cv2.reduce's speed on these strips
        rows.min(axis=0, out=lo[r])
    kernel = np.ones((1, 2 * band + 1), np.uint8)
    hi, lo = cv2.dilate(hi, kernel), cv2.erode(lo, kernel)  # the image's edge bounds the window (default border)
    pad = ((0, 0), (0, gw * core - w))
    hi = np.pad(hi, pad).reshape(gh, gw, core).max(axis=2)
    lo = np.pad(lo, pad, constant_values=255).reshape(gh, gw, core).min(axis=2)
    return np.argwhere(hi != lo)


def _reflected(n: int, size: int, margin: int) -> np.ndarray:
    """Source index of each of ``size`` positions of an axis of length ``n`` padded by ``margin`` in front,
    as cv2.copyMakeBorder's BORDER_REFLECT (fedcba|abcdefgh|hgfedcb, repeated when the pad is longer)."""
    i = np.mod(np.arange(size) - margin, 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def _tile_batch(
    src: np.ndarray, cells: np.ndarray, core: int, margin: int, ry: np.ndarray, rx: np.ndarray
) -> np.ndarray:
    """The k x k windows (k = core + 2 margin) of ``src`` reflect-padded (``ry``, ``rx``: ``_reflected``) at
    ``cells``: slices of the photo itself where a window lies inside it, gathered through the reflected
    indices only at the border (the same pixels as a padded copy of the whole photo)."""
    k = core + 2 * margin
    h, w = src.shape[:2]
    out = np.empty((len(cells), k, k, *src.shape[2:]), src.dtype)
    for i, (r, c) in enumerate(cells):
        y, x = r * core - margin, c * core - margin
        if 0 <= y and y + k <= h and 0 <= x and x + k <= w:
            out[i] = src[y : y + k, x : x + k]
        else:
            out[i] = src[np.ix_(ry[y + margin : y + margin + k], rx[x + margin : x + margin + k])]
    return out


def openvino_runner(params: dict, precision: str, threads: int):
    """The refiner of ``params`` compiled by OpenVINO (``precision``: ``f32`` or ``bf16``) for its tile size:
    ``run(rgb (N,k,k,3) uint8, prob (N,k,k) uint8) -> logits (N,1,k,k)``, from any thread. Built once per
    weights, precision and thread count (compiling takes about a second)."""
    network(params)  # checked as every use of the step checks it
    k = int(params.get("core", DEFAULTS["core"])) + 2 * int(params.get("margin", DEFAULTS["margin"]))
    with _COMPILING:  # photo threads meeting it first build it once
        return _openvino_runner(params["weights"], k, precision, threads)


_COMPILING = threading.Lock()


@functools.lru_cache(maxsize=4)
def _openvino_runner(text: str, k: int, precision: str, threads: int):
    import io

    from ..core.cpu_runtime import openvino_callable

    net = _network(text)[0]
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
    # The tiles come from the photo as if it were reflect-padded to the tile grid plus the margin, without
    # padding the whole photo.
    ry, rx = _reflected(h, gh * core + 2 * margin, margin), _reflected(w, gw * core + 2 * margin, margin)
    out = []
    with torch.inference_mode():
        for i in range(0, len(cells), batch):
            cs = cells[i : i + batch]
            x = _tile_batch(image, cs, core, margin, ry, rx)
            p = _tile_batch(blended, cs, core, margin, ry, rx)
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
    binary cross-entropy), so inside the tiles that is the threshold; outside them nothing changes. At a
    scale outside SCALE_BAND the mask is returned as it is (a note says so once per photo size).
    ``openvino``: (precision, threads) to run the network in OpenVINO (``openvino_runner``), else PyTorch."""
    if blended.shape != mask.shape or image.shape[:2] != mask.shape:
        raise ValueError(
            f"refine_outline: the mask {mask.shape}, probabilities {blended.shape} and photo {image.shape[:2]} "
            "differ in size"
        )
    net = network(params)
    skip = scale_problem(mask.shape, params)
    if skip:
        _note_skip(skip)
        return mask.astype(np.uint8, copy=True)
    geo = {k: int(params.get(k, DEFAULTS[k])) for k in ("core", "margin", "band", "batch")}
    run = openvino_runner(params, *openvino) if openvino else None
    cells, tiles = refine_probabilities(net, image, blended, mask, **geo, run=run)
    out = mask.astype(np.uint8, copy=True)
    core, (h, w) = geo["core"], mask.shape
    for (r, c), t in zip(cells, tiles):
        y0, x0 = r * core, c * core
        hh, ww = min(core, h - y0), min(core, w - x0)
        out[y0 : y0 + hh, x0 : x0 + ww] = t[:hh, :ww] >= HALF
    return out
