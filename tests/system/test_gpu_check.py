"""scripts/gpu_check.py dry-run on CPU at a tiny size: every section runs, so the first GPU run cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow


def test_gpu_check_dry_run_on_cpu(tiny_data, tmp_path):
    out = tmp_path / "gc"
    args = ["--device", "cpu", "--data", str(tiny_data), "--out", str(out), "--size", "32x48"]
    args += ["--models", "demo-mobilenetv3", "--batches", "1,2", "--workers", "0", "--bench-images", "4"]
    args += ["--bench-folds", "1", "--agreement-steps", "3", "--compile-backend", "eager", "--compile-images", "4"]
    # The CUDA layout (channels_last) and bf16 autocast on CPU: the branches the GPU will take.
    args += ["--channels-last", "true", "--set", "train.channels_last=true", "--set", "predict.amp=bf16"]
    assert gpu_check.main(args) == 0
    sections = json.loads((out / "gpu_check.json").read_text())["sections"]
    assert {n: s["status"] for n, s in sections.items()} == {
        n: "ok"
        for n in ("env", "cuda_tests", "smoke_demo-mobilenetv3", "train_throughput", "bench_gpu", "bench_host")
        + ("agreement", "compile")
    }
    smoke = sections["smoke_demo-mobilenetv3"]["result"]
    assert smoke["inference_precision"] == "bf16" and smoke["channels_last"] and smoke["submission_rows"] == 4
    assert [r["batch"] for r in sections["train_throughput"]["result"]["demo-mobilenetv3"]["rows"]] == [1, 2]
    assert sections["bench_gpu"]["result"]["ensemble_img_s"] > 0
    assert sections["agreement"]["result"]["bf16"]["mask_agreement"] > 0.9
    assert sections["compile"]["result"]["mask_agreement"] == 1.0  # eager backend: the same masks
    md = (out / "gpu_check.md").read_text()
    for heading in ("### make smoke", "### Training throughput", "figure 4", "figure 2", "bf16/fp16", "torch.compile"):
        assert heading in md


def test_gpu_check_keeps_to_its_budget(tiny_data, tmp_path):
    args = ["--device", "cpu", "--data", str(tiny_data), "--models", "demo-mobilenetv3"]
    assert gpu_check.main(args + ["--out", str(tmp_path / "a"), "--budget", "1"]) == 0
    sections = json.loads((tmp_path / "a" / "gpu_check.json").read_text())["sections"]
    assert sections.pop("env")["status"] == "ok"
    assert all(s["status"].startswith("skipped: ") and "--budget" in s["status"] for s in sections.values())
    # A section still running at --hard-limit is stopped; what came before is kept.
    others = "smoke,train_throughput,bench_gpu,bench_host,agreement,compile"
    assert gpu_check.main(args + ["--out", str(tmp_path / "b"), "--hard-limit", "1", "--skip", others]) == 1
    sections = json.loads((tmp_path / "b" / "gpu_check.json").read_text())["sections"]
    assert sections["env"]["status"] == "ok" and "--hard-limit" in sections["cuda_tests"]["status"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--skip", "compil"], "--skip 'compil': unknown section(s) ['compil']"),
        (["--device", "cuda:7"], "--device=cuda:7"),
        (["--batches", "1,x"], "--batches '1,x'"),
        (["--size", "32"], "--size '32': HxW"),
        (["--models", "vgg12"], "--models: no config 'vgg12'"),
    ],
)
def test_gpu_check_checks_its_options_up_front(tiny_data, tmp_path, argv, expected):
    out = tmp_path / "gc"
    cmd = [sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--data", str(tiny_data), "--out", str(out), *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert not out.exists()
