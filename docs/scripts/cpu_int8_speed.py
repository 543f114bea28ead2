"""The network alone in OpenVINO, INT8 (NNCF) against bf16: milliseconds per call at each input size.

    PYTHONPATH=. python docs/scripts/cpu_int8_speed.py DATA [--model DIR] [--every K] [--calls N] [--threads T]

The shipped model's ONNX at each input size the engine meets (320x480 for the photo and its mirror,
400x600 for the 1.25x view; the graph pads it to 416x608 itself), compiled by the backend's own
``openvino_callable`` (bf16 hint, ``--threads`` threads, one stream); INT8 as ``cpu_levers.py``'s variants
(ov_int8, ov_int8_float_ends), calibrated on the same photos (every K-th of DATA from K/2 on). Per size and
batch: ``--calls`` calls of each model after a warm-up, taken in turns of 10 (bf16, then each INT8 model),
so that load from other processes falls on all alike; the median is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.inference import backends
from pipeline.inference.model_folder import load_pretrained
from pipeline.stages.quantize import network_inputs

sys.path.insert(0, str(Path(__file__).parent))
from cpu_levers import FLOAT_LAYERS, TEST_SPLIT, VARIANTS, int8_network  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--model", default="models/carvana-unet-mobilenetv2")
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    test_cars = set(pd.read_csv(TEST_SPLIT)["car_id"].astype(str))
    paths = sorted((Path(a.data) / "train").glob("*.jpg"))
    calibration_paths = [p for p in paths[a.every // 2 :: a.every] if p.name.split("_")[0] not in test_cars]
    pre = load_pretrained(a.model, torch.device("cpu"))
    net = pre.model.float().eval()
    calibration = network_inputs(pre.spec, calibration_paths)
    int8 = [v for v in VARIANTS if VARIANTS[v][4]]
    for size in calibration:
        with torch.no_grad():
            onnx = backends._onnx_bytes(net, (3, *size))
        runs = {"bf16": backends.openvino_callable(onnx, "bf16", a.threads)}
        for v in int8:
            with int8_network(calibration, FLOAT_LAYERS[VARIANTS[v][4]]):
                runs[v] = backends.openvino_callable(onnx, "bf16", a.threads)
        for batch in (1, 2) if size == tuple(calibration)[0] else (1,):
            x = np.ascontiguousarray(np.concatenate([s.numpy() for s in calibration[size][:batch]]), np.float32)
            times: dict[str, list[float]] = {k: [] for k in runs}
            for run in runs.values():
                for _ in range(5):
                    run(x)
            for _ in range(a.calls // 10):
                for k, run in runs.items():
                    for _ in range(10):
                        start = time.perf_counter()
                        run(x)
                        times[k].append(1000 * (time.perf_counter() - start))
            line = ", ".join(f"{k} {np.median(t):.1f}" for k, t in times.items())
            print(
                f"{size[0]}x{size[1]}, batch {batch}, ms per call (median of {len(times['bf16'])}): {line}", flush=True
            )


if __name__ == "__main__":
    main()
