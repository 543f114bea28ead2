"""The outline refiner's network alone in OpenVINO: fp32, bf16 and INT8 (NNCF), ms per photo and pixels flipped.

    PYTHONPATH=. python docs/scripts/refiner_int8_speed.py DATA [--model DIR] [--photos N] [--threads T]

The tiles ``refine_outline`` feeds its network for N photos of DATA/train (every 60th from the 4th), with the
coarse probability imitated from the true mask as the refiner was trained (area-downsampled to 320x480, then
bilinear back), so the figure is the network's, not the U-Net's. INT8: NNCF's post-training quantization
(preset MIXED) calibrated on every other batch of tiles. Each runtime is compiled by the backend's own
``openvino_callable`` (``--threads`` threads, as many streams), run over all tiles 5 times; the fastest pass
per photo is printed, with the pixels of the tiles' cores whose refined value lands on the other side of
1/2 from PyTorch fp32's.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from pipeline.core.cpu_runtime import openvino_callable, scratch_home
from pipeline.inference.model_folder import load_pretrained
from pipeline.masks import outline_refiner as orf


def tiles(params: dict, photos: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rgb, prob) batches as ``refine_probabilities`` hands them to its runner."""
    net, caught = orf.network(params), []
    k = int(params.get("core", 48)) + 2 * int(params.get("margin", 8))

    def catch(x, p):
        caught.append((x.copy(), p.copy()))
        return np.zeros((len(x), 1, k, k), np.float32)

    geo = {key: int(params.get(key, orf.DEFAULTS[key])) for key in ("core", "margin", "band", "batch")}
    for f in photos:
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        truth = (np.array(Image.open(f.parent.parent / "train_masks" / f"{f.stem}_mask.gif")) > 0).astype(np.float32)
        h, w = truth.shape
        coarse = cv2.resize(cv2.resize(truth, (480, 320), interpolation=cv2.INTER_AREA), (w, h))
        prob = (coarse * 255 + 0.5).astype(np.uint8)
        orf.refine_probabilities(net, rgb, prob, (prob >= orf.HALF).astype(np.uint8), **geo, run=catch)
    return caught


def inputs(x: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32), p[:, None].astype(np.float32) / 255


def refined(logits: np.ndarray, margin: int) -> np.ndarray:
    core = logits[:, 0, margin:-margin, margin:-margin] if margin else logits[:, 0]
    return (torch.sigmoid(torch.from_numpy(core)) * 255 + 0.5).clamp(0, 255).byte().numpy() >= orf.HALF


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", default="models/carvana-unet-mobilenetv2")
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    params = load_pretrained(a.model).spec["postprocess_params"]["refine_outline"]
    photos = sorted((a.data / "train").glob("*.jpg"))[3::60][: a.photos]
    batches = tiles(params, photos)
    net, margin = orf.network(params), int(params.get("margin", 8))
    k = int(params.get("core", 48)) + 2 * margin
    print(f"{len(photos)} photos, {sum(len(x) for x, _ in batches)} tiles of {k}x{k}")
    buf = io.BytesIO()
    axes = {"rgb": {0: "n"}, "prob": {0: "n"}, "logit": {0: "n"}}
    example = (torch.zeros(1, 3, k, k), torch.zeros(1, 1, k, k))
    torch.onnx.export(
        net, example, buf, input_names=["rgb", "prob"], output_names=["logit"], dynamic_axes=axes,
        opset_version=17, dynamo=False,
    )  # fmt: skip
    onnx = buf.getvalue()
    with scratch_home():
        import nncf
        import openvino as ov

        calibration = [dict(enumerate(inputs(x, p))) for x, p in batches[::2]]
        int8 = nncf.quantize(
            ov.Core().read_model(onnx), nncf.Dataset(calibration), preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(calibration),
        )  # fmt: skip
        xml = Path(os.environ["TMPDIR"]) / "refiner-int8.xml"
        ov.save_model(int8, xml, compress_to_fp16=False)
        int8_bytes = (xml.read_bytes(), xml.with_suffix(".bin").read_bytes())
    runs = {
        "fp32": openvino_callable(onnx, "f32", a.threads, a.threads),
        "bf16": openvino_callable(onnx, "bf16", a.threads, a.threads),
        "int8 (the rest bf16)": openvino_callable(int8_bytes, "bf16", a.threads, a.threads),
    }
    with torch.no_grad():
        reference = [refined(net(*orf.to_tensors(x, p)).numpy(), margin) for x, p in batches]
    for name, run in runs.items():
        flipped = sum(int((refined(run(*inputs(x, p)), margin) != r).sum()) for (x, p), r in zip(batches, reference))
        passes = []
        for _ in range(5):
            start = time.perf_counter()
            for x, p in batches:
                run(*inputs(x, p))
            passes.append(time.perf_counter() - start)
        print(f"{name:<22} {1000 * min(passes) / len(photos):6.1f} ms per photo, {flipped} pixels flipped")


if __name__ == "__main__":
    main()
