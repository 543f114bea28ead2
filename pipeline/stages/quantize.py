"""``make quantize``: an exported model folder's network quantized to INT8 for OpenVINO on CPUs.

NNCF's post-training quantization (``nncf.quantize``, preset MIXED: symmetric weights, asymmetric
activations) of the same ONNX graph the OpenVINO backend compiles, once per input size the model's TTA
views meet, calibrated on photos of cars the model was trained on (never a car it was not trained on, so
never a car of a test split), fed exactly as the engine feeds the network: decoded at the model's size,
then each TTA view. Kept in float: the first convolution and the segmentation head, then, by NNCF's
accuracy control, the layers whose quantization costs the masks most, one by one, until the masks of
validation photos (others of the same cars) are within ``MAX_DROP`` of PyTorch fp32's. The quantized
models are written into the folder (``network-int8-<h>x<w>.xml``/``.weights``, OpenVINO's format) and
bound by hash in its ``pipeline.json``, with the calibration's record; ``predict``, ``submission`` and
``serve`` run them by default on a CPU that runs INT8 (``--precision bf16``: without them;
docs/record/cpu-speed.md has what they cost the masks and what they save).

Why by hand: NNCF does the quantization; what it cannot know is which photos this pipeline may calibrate
on and how the engine feeds the network, so those are chosen here.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..core.cpu_runtime import scratch_home
from ..core.errors import ModelFolderError
from ..core.identity import file_sha256
from ..core.io_utils import OutputLock, check_writable, stored_path, write_bytes, write_json, write_text
from ..data.datasets import InferenceDataset
from ..data.layout import NAME_RE, Layout
from ..inference.backends import _onnx_bytes, openvino_hint
from ..inference.model_card import render_card
from ..inference.model_folder import CARD, PIPELINE_JSON, cars_seen, check_folder, int8_files, load_pretrained
from ..inference.tta import resolve

PHOTOS = 120  # calibration photos: enough for NNCF's statistics (its default subset is 300 inputs)
# Accuracy control: layers go back to float until the worst tenth of the validation views' masks (each view
# at the network's resolution, against PyTorch fp32's) lose at most this much Dice on average. bf16 alone
# loses about 0.0006 by this measure on the shipped model; fully INT8, 0.0016.
MAX_DROP = 0.0008
PRESET = "mixed"
HEAD = r".*/segmentation_head/.*"


def _car(path: Path) -> str | None:
    m = NAME_RE.match(path.name)
    return m["car"] if m else None


def calibration_photos(train_dir: Path, trained_on: set[str], photos: int) -> tuple[list[Path], list[Path]]:
    """(calibration, validation): ``photos`` photos of the trained-on cars spread evenly over them in name order
    (every k-th from k/2), and half as many others (every 2k-th from k/4) that check the quantized masks."""
    pool = sorted(p for p in train_dir.glob("*.jpg") if _car(p) in trained_on)
    if not pool:
        return [], []
    step = max(1, len(pool) // photos)
    calibration = pool[step // 2 :: step][:photos]
    taken = set(calibration)
    validation = [p for p in pool[step // 4 :: 2 * step] if p not in taken][: max(1, photos // 2)]
    return calibration, validation


def network_inputs(spec: dict, paths: list[Path]) -> dict[tuple[int, int], list[torch.Tensor]]:
    """Per input size (h, w): the network's inputs for ``paths``, one (1, 3, h, w) uint8 tensor per photo and
    view, as ``Engine.member_probs`` makes them (``InferenceDataset``, then each TTA view)."""
    inp = spec["input"]
    data = InferenceDataset(paths, [(inp["height"], inp["width"])])
    views = resolve(spec["tta"])
    out: dict[tuple[int, int], list[torch.Tensor]] = {}
    for i in range(len(data)):
        x = data[i]["x0"][None]
        for forward, _ in views:
            v = forward(x)
            out.setdefault(tuple(v.shape[-2:]), []).append(v)
    return out


def float_layers(model) -> list[str]:
    """NNCF ignored-scope patterns: the module of the graph's first convolution, and the segmentation head."""
    first = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution")
    name = first.get_friendly_name().removesuffix("/WithoutBiases")
    module = name.rsplit("/", 1)[0] + "/"  # "/net/encoder/features.0/features.0.0/"
    return [re.escape(module) + ".*", HEAD]


def tail_dice(compiled, data) -> tuple[float, list[float]]:
    """NNCF's validation function: per (input, reference mask) the Dice of the network's mask (logit above the
    reference's threshold, ``data``'s third item) with the reference; the mean of the worst tenth, and all."""
    per = []
    for x, ref, logit in data:
        mask = compiled(np.ascontiguousarray(x.numpy(), dtype=np.float32))[0] > logit
        total = int(mask.sum()) + int(ref.sum())
        per.append(2 * int((mask & ref).sum()) / total if total else 1.0)
    worst = np.sort(per)[: max(1, len(per) // 10)]
    return float(worst.mean()), per


def quantize_network(
    onnx: bytes,
    samples: list[torch.Tensor],
    keep: list[str] | None = None,
    validation: list | None = None,
    max_drop: float = MAX_DROP,
) -> tuple[bytes, bytes, list[str]]:
    """The ONNX graph as an INT8 OpenVINO model (xml, weights), calibrated on ``samples``, and the patterns of
    the layers kept in float (``keep``; default ``float_layers``). ``validation``: (input, PyTorch fp32 mask,
    threshold logit) triples; when given, NNCF's accuracy control puts layers back in float until
    ``tail_dice`` loses at most ``max_drop``."""
    # All of it in the runtime's scratch home: NNCF compiles the model to collect its statistics (OpenVINO's
    # CPU plugin, with its usage files and its signal stack; core/cpu_runtime.py).
    # NNCF imports torch's C++ extension helpers, which warn that there is no CUDA: not this stage's business.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with scratch_home():
        import nncf
        import openvino as ov
        from nncf.common.logging import nncf_logger

        nncf_logger.setLevel(logging.WARNING)  # its INFO lists every layer it leaves in float: noise for a user
        model = ov.Core().read_model(onnx)
        keep = float_layers(model) if keep is None else keep
        calibration = nncf.Dataset(samples, lambda x: np.ascontiguousarray(x.numpy(), dtype=np.float32))
        settings = dict(
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(samples),
            ignored_scope=nncf.IgnoredScope(patterns=keep),
        )
        if validation:
            quantized = nncf.quantize_with_accuracy_control(
                model,
                calibration,
                nncf.Dataset(validation),
                validation_fn=tail_dice,
                max_drop=max_drop,
                drop_type=nncf.DropType.ABSOLUTE,
                **settings,
            )
        else:
            quantized = nncf.quantize(model, calibration, **settings)
        with tempfile.TemporaryDirectory(prefix="pipeline-quantize-") as tmp:
            xml = Path(tmp) / "network.xml"
            ov.save_model(quantized, xml, compress_to_fp16=False)
            return xml.read_bytes(), xml.with_suffix(".bin").read_bytes(), keep


# Run in a child process on every network before it is written: OpenVINO's CPU plugin may crash on an INT8
# graph it compiled without complaint (2026.4.1 does on timm's mobilenetv3, with squeeze-excitation and
# hard-swish), and a crash in `submission` after hours would lose the run.
_CHECK = """
import sys, numpy as np, openvino as ov
folder, hint = sys.argv[1:3]
core = ov.Core()
config = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": hint}
compiled = core.compile_model(core.read_model(folder + "/n.xml", folder + "/n.bin"), "CPU", config)
out = compiled.create_infer_request().infer({0: np.load(folder + "/x.npy")})[0]
np.save(folder + "/y.npy", out)
"""


def check_network(xml: bytes, weights: bytes, sample: torch.Tensor, size: str) -> None:
    """Run the INT8 network on ``sample`` in a child process; ModelFolderError if it crashes or gives no
    finite logits of the input's size."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="pipeline-quantize-check-") as tmp:
        (Path(tmp) / "n.xml").write_bytes(xml)
        (Path(tmp) / "n.bin").write_bytes(weights)
        np.save(Path(tmp) / "x.npy", sample.numpy().astype(np.float32))
        env = {**os.environ, "HOME": tmp, "TMPDIR": tmp}  # OpenVINO's usage files go with the folder
        argv = [sys.executable, "-c", _CHECK, tmp, openvino_hint("int8")]
        run = subprocess.run(argv, env=env, capture_output=True, text=True)
        y = np.load(Path(tmp) / "y.npy") if run.returncode == 0 else None
    if y is None:
        why = f"killed by signal {-run.returncode}" if run.returncode < 0 else f"exit {run.returncode}"
        last = (run.stderr.strip().splitlines() or [""])[-1][:200]
        raise ModelFolderError(
            f"OpenVINO could not run this model's INT8 network at {size} ({why}{': ' + last if last else ''}); "
            "nothing was written: the model runs in bf16 or fp32 as before"
        )
    if y.shape[0] != sample.shape[0] or y.shape[-2:] != sample.shape[-2:] or not np.isfinite(y).all():
        raise ModelFolderError(f"the INT8 network at {size} gave no finite logits of its input's size; nothing written")


def quantize_folder(
    folder: str | Path,
    data: str | Path,
    *,
    photos: int = PHOTOS,
    max_drop: float = MAX_DROP,
    force: bool = False,
    quiet: bool = False,
) -> dict:
    """Write the INT8 networks of the model folder ``folder``, calibrated on ``photos`` photos of ``data``'s
    train/ of the cars the model was trained on; return its new ``pipeline.json``."""
    start = time.time()
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        raise ModelFolderError(f"{folder}: not a model folder here (quantize writes into a local folder)")
    if photos < 1:
        raise ModelFolderError(f"--photos {photos}: at least 1")
    check_writable(folder, "model folder")
    # The lock `make export` takes on the folder: an export and a quantization never write it at once.
    here = folder.resolve()
    with OutputLock(here.parent / f".{here.name}.export", "exporting or quantizing a model there", remove=True):
        pre = load_pretrained(folder)
        spec = pre.spec
        if "int8" in spec and not force:
            sizes = ", ".join(spec["int8"]["networks"])
            raise ModelFolderError(f"{folder}: already has INT8 networks ({sizes}); --force to quantize again")
        trained_on = cars_seen(spec)["trained on"]
        if not trained_on:
            raise ModelFolderError(
                f"{folder}: its {PIPELINE_JSON} does not record the cars it was trained on; INT8 is calibrated "
                "on those only (never on a car it has not seen), so it cannot be quantized here"
            )
        layout = Layout(data)
        paths, checks = calibration_photos(layout.train_dir, trained_on, photos)
        if not paths:
            raise ModelFolderError(
                f"{layout.train_dir}: no photo of the {len(trained_on)} cars {folder} was trained on; give the data "
                "root it was trained from"
            )
        inputs, check_inputs = network_inputs(spec, paths), network_inputs(spec, checks)
        logit = float(np.log(spec["threshold"] / (255 - spec["threshold"])))  # the folder's threshold
        networks, files, keep = {}, {}, []
        for (h, w), samples in sorted(inputs.items()):
            if not quiet:
                print(
                    f"INT8 network at {h}x{w}: calibrating on {len(samples)} inputs of {len(paths)} photos", flush=True
                )
            with torch.no_grad():
                onnx = _onnx_bytes(pre.model.float().eval(), (3, h, w))
                validation = [(x, pre.model(x.float()).numpy() > logit, logit) for x in check_inputs[(h, w)]]
            size = f"{h}x{w}"
            # First without accuracy control, run in a child process: accuracy control runs the INT8 network in
            # this one, where a crash of OpenVINO's would end the stage without a word.
            xml, weights, keep = quantize_network(onnx, samples)
            check_network(xml, weights, samples[0], size)
            xml, weights, keep = quantize_network(onnx, samples, validation=validation, max_drop=max_drop)
            check_network(xml, weights, samples[0], size)
            networks[size] = {"xml": f"network-int8-{size}.xml", "weights": f"network-int8-{size}.weights"}
            files[networks[size]["xml"]], files[networks[size]["weights"]] = xml, weights
        old_card = render_card(spec)
        for name in int8_files(spec):  # a former quantization's files: replaced below, or gone
            if name not in files:
                (folder / name).unlink(missing_ok=True)
        for name, raw in files.items():
            write_bytes(folder / name, raw)
        new = {k: v for k, v in spec.items() if k != "int8"}
        new["files"] = {
            **{k: v for k, v in spec["files"].items() if k not in int8_files(spec)},
            **{name: file_sha256(folder / name, 64) for name in files},
        }
        new["int8"] = {
            "networks": networks,
            "calibration": {
                "data": stored_path(layout.train_dir, folder / PIPELINE_JSON),
                "photos": [p.name for p in paths],
                "cars": sorted({_car(p) for p in paths}),
                "rule": "photos of cars the model was trained on, every k-th in name order",
            },
            "accuracy_control": {
                "validation_photos": [p.name for p in checks],
                "metric": "mean Dice of the worst tenth of the validation views' masks against PyTorch fp32's",
                "max_drop": max_drop,
            },
            "quantization": {
                "tool": f"nncf {importlib.metadata.version('nncf')}",
                "openvino": importlib.metadata.version("openvino"),
                "preset": PRESET,
                "kept_in_float": keep,
            },
            "quantized": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(folder / PIPELINE_JSON, new)
        card = folder / CARD
        if not card.is_file() or card.read_text() == old_card:
            write_text(card, render_card(new))
        elif not quiet:
            print(f"note: {card} was written by hand since export; left as it is (say it has INT8 networks)")
        check_folder(folder)  # what a load will check: the new files against the new hashes
    if not quiet:
        mb = sum(len(b) for b in files.values()) / 1e6
        print(
            f"{folder}: INT8 networks at {', '.join(networks)} ({mb:.1f} MB), calibrated on {len(paths)} photos of "
            f"{len({_car(p) for p in paths})} training cars ({time.time() - start:.0f} s)"
        )
    return new
