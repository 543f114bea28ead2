"""The CPU levers of the submission, each held against the masks of the same model in PyTorch fp32.

    PYTHONPATH=. python docs/scripts/cpu_levers.py DATA [--model DIR] [--every K] [--cars CSV]
        [--variants a,b,...] [--csv OUT] [--jobs N]

DATA is a Kaggle-layout root with train/ and train_masks/; every K-th photo of it (in name order, of the
cars in --cars when given, e.g. folds/test_split.csv) is cut out by the model folder's full recipe (TTA,
threshold, post-processing) once per variant. Per variant and photo: the Dice with the true mask, and
the pixels that differ from the reference (PyTorch fp32, today's path). Printed per variant: the mean
Dice, its change against the reference, the largest loss of one photo, and the mean pixels changed.
The rule a lever must pass (docs/record/cpu-speed.md): mean change within 1e-4, no photo losing more than 2e-3.

Variants (name: runtime, precision, TTA, refiner): ref (torch fp32, the folder's TTA, PyTorch refiner),
ov_fp32, ov_bf16 (network and refiner in OpenVINO bf16), ov_bf16_torch_refiner, ov_bf16_no_hflip,
ov_bf16_no_scale; int8 (the folder's INT8 networks, `make quantize`, the rest as ov_bf16; photos they were
calibrated on are left out of every variant's comparison); ov_int8 and ov_int8_float_ends (quantized here,
the rest as ov_bf16).

ov_int8 and ov_int8_float_ends quantize the network as `make quantize` does (pipeline/stages/quantize.py:
NNCF, preset MIXED, per input size), calibrated on the photos of DATA half-way between the evaluated ones
(every K-th from K/2 on; never a car of folds/test_split.csv nor an evaluated photo), fed as the engine
feeds the network. Kept in float: the first convolution and the segmentation head (ov_int8, as `make
quantize`), and also the layers at half and full resolution (ov_int8_float_ends: encoder stages 0-1,
decoder blocks 3-4); the nearest-neighbour upsampling is never quantized.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.core.cpu_runtime import scratch_home
from pipeline.data.layout import read_image, read_mask
from pipeline.inference import backends
from pipeline.inference.engine import Engine, Member
from pipeline.inference.model_folder import load_pretrained
from pipeline.masks.metrics import score_image
from pipeline.masks.postprocess import apply as postprocess
from pipeline.stages.quantize import network_inputs, quantize_network

VARIANTS = {
    # name: (backend, precision, views to drop, refiner in OpenVINO, network layers kept in float if INT8)
    "ref": ("torch", None, (), False, None),
    "ov_fp32": ("openvino", "fp32", (), True, None),
    "ov_bf16": ("openvino", "bf16", (), True, None),
    "ov_bf16_torch_refiner": ("openvino", "bf16", (), False, None),
    "ov_bf16_no_hflip": ("openvino", "bf16", ("hflip",), True, None),
    "ov_bf16_no_scale": ("openvino", "bf16", ("scale1.25",), True, None),
    "int8": ("openvino", "int8", (), True, None),
    "ov_int8": ("openvino", "bf16", (), True, "ends"),
    "ov_int8_float_ends": ("openvino", "bf16", (), True, "wide_ends"),
}
TEST_SPLIT = Path(__file__).resolve().parents[2] / "folds" / "test_split.csv"
# Regular expressions on OpenVINO's node names (NNCF's ignored_scope patterns): layers left in float.
FIRST_AND_LAST = [r".*/encoder/features\.0/.*", r".*/segmentation_head/.*"]
FLOAT_LAYERS = {
    "ends": FIRST_AND_LAST,
    # ...and every layer at half or full resolution: encoder stages 0-1, decoder blocks 3-4 (160x240, 320x480).
    "wide_ends": FIRST_AND_LAST + [r".*/encoder/features\.1/.*", r".*/decoder/blocks\.[34]/.*"],
}


@contextlib.contextmanager
def int8_network(calibration: dict[tuple[int, int], list], float_layers: list[str]):
    """The network's OpenVINO runtime (``backends.openvino_callable``) compiling an NNCF INT8 model of its ONNX,
    quantized as ``make quantize`` does (``quantize_network``) but keeping ``float_layers`` in float."""
    import openvino as ov

    real_callable = backends.openvino_callable

    def quantized_callable(onnx: bytes, precision: str, threads: int, streams: int = 1):
        with scratch_home():
            size = tuple(ov.Core().read_model(onnx).input(0).get_partial_shape().get_min_shape()[2:])
        xml, weights, _ = quantize_network(onnx, calibration[size], float_layers)
        print(f"  INT8 network at {size[0]}x{size[1]}: calibrated on {len(calibration[size])} inputs", flush=True)
        return real_callable((xml, weights), precision, threads, streams)

    backends.openvino_callable = quantized_callable
    try:
        yield
    finally:
        backends.openvino_callable = real_callable


def masks_of(variant: str, pre, paths: list[Path], jobs: int, calibration_paths: list[Path]):
    backend, precision, drop, ov_refiner, int8 = VARIANTS[variant]
    if int8 is None:
        yield from _masks_of(pre, paths, jobs, backend, precision, drop, ov_refiner)
        return
    with int8_network(network_inputs(pre.spec, calibration_paths), FLOAT_LAYERS[int8]):
        yield from _masks_of(pre, paths, jobs, backend, precision, drop, ov_refiner)


def _masks_of(pre, paths, jobs, backend, precision, drop, ov_refiner):
    spec = pre.spec
    inp = spec["input"]
    tta = [t for t in spec["tta"] if t not in drop]
    member = Member(pre.name, [pre.model], inp["height"], inp["width"], tta, "fp32", pre.int8_networks)
    engine = Engine([member], torch.device("cpu"), precision, False, batch_size=4, num_workers=0, backend=backend,
                    jobs=jobs if backend != "torch" else 1)  # fmt: skip
    steps, params, threshold = spec.get("postprocess", []), spec.get("postprocess_params", {}), int(spec["threshold"])
    openvino = engine.openvino if ov_refiner else None

    def finish(name, blended, features=None):  # the engine hands each photo's review features too (none here)
        path = next(p for p in paths if p.name == name)
        return postprocess(blended >= threshold, steps, blended, read_image(path), params, openvino=openvino)

    if engine.jobs > 1:
        for names, masks, _ in engine.masks(paths, [1], threshold, blends=True, finish=finish):
            yield from zip(names, masks)
    else:
        for name, q in engine.predict(paths):
            yield name, finish(name, q[0].numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--model", default="models/carvana-unet-mobilenetv2")
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--cars", help="a CSV with a car_id column: only these cars (e.g. folds/test_split.csv)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--csv", help="per photo and variant: Dice and pixels changed")
    a = ap.parse_args()
    data = Path(a.data)
    paths = sorted((data / "train").glob("*.jpg"))
    if a.cars:
        cars = set(pd.read_csv(a.cars)["car_id"].astype(str))
        paths = [p for p in paths if p.name.split("_")[0] in cars]
    # INT8's calibration: the photos half-way between the evaluated ones, never a test-split car's.
    test_cars = set(pd.read_csv(TEST_SPLIT)["car_id"].astype(str))
    calibration_paths = [p for p in paths[a.every // 2 :: a.every] if p.name.split("_")[0] not in test_cars]
    paths = paths[:: a.every]
    calibration_paths = sorted(set(calibration_paths) - set(paths))
    pre = load_pretrained(a.model, torch.device("cpu"))
    calibrated = set(((pre.spec.get("int8") or {}).get("calibration") or {}).get("photos", []))
    if "int8" in a.variants.split(",") and calibrated & {p.name for p in paths}:
        # The folder's INT8 networks were calibrated on some of these photos: compared on the others only.
        left = [p for p in paths if p.name not in calibrated]
        print(f"{len(paths) - len(left)} of the {len(paths)} photos calibrated the INT8 networks: left out", flush=True)
        paths = left
    truth = {p.name: read_mask(data / "train_masks" / p.name.replace(".jpg", "_mask.gif")) for p in paths}
    names = ["ref"] + [v for v in a.variants.split(",") if v != "ref"]
    if any(VARIANTS[v][4] for v in names):
        if not calibration_paths:
            raise SystemExit("error: no photos to calibrate INT8 on (--every 2 or more, cars outside the test split)")
        print(f"INT8 calibration: {len(calibration_paths)} photos of "
              f"{len({p.name.split('_')[0] for p in calibration_paths})} cars", flush=True)  # fmt: skip
    ref: dict[str, np.ndarray] = {}
    rows = []
    for v in names:
        start = time.perf_counter()
        for name, mask in masks_of(v, pre, paths, a.jobs, calibration_paths):
            mask = mask.astype(bool)
            if v == "ref":
                ref[name] = np.packbits(mask)
            changed = int(np.bitwise_count(np.packbits(mask) ^ ref[name]).sum()) if v != "ref" else 0
            rows.append({"variant": v, "img": name, "dice": score_image(mask, truth[name])["dice"], "changed": changed})
        print(f"{v}: {len(paths)} photos in {time.perf_counter() - start:.0f} s", flush=True)
    t = pd.DataFrame(rows)
    if a.csv:
        t.to_csv(a.csv, index=False)
    base = t[t.variant == "ref"].set_index("img")["dice"]
    print(f"{len(paths)} photos of {len({p.name.split('_')[0] for p in paths})} cars, {a.model}")
    for v in names:
        d = t[t.variant == v].set_index("img")["dice"]
        delta = d - base.loc[d.index]
        print(
            f"{v:24s} mean Dice {d.mean():.6f}  change {delta.mean():+.2e}  worst photo {delta.min():+.2e}  "
            f"pixels changed per photo {t[t.variant == v].changed.mean():.0f} (max {t[t.variant == v].changed.max()})"
        )


if __name__ == "__main__":
    main()
