"""The CPU's fast path: which runtime and precision run (and the fallbacks), photos on threads, OpenVINO bf16."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.config import ConfigError
from pipeline.inference import backends
from pipeline.inference.backends import RuntimeChoice, resolve_runtime
from pipeline.inference.engine import Engine, Member
from pipeline.models.unet import load_checkpoint

CPU = torch.device("cpu")
HAS_BF16 = "BF16" in backends.cpu_capabilities()


def no_bf16(monkeypatch):
    monkeypatch.setattr(backends, "cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))


def test_the_default_on_a_cpu_is_openvino_in_the_fastest_precision_it_has(monkeypatch):
    monkeypatch.setattr(backends, "cpu_capabilities", lambda: frozenset({"FP32", "BF16", "INT8"}))
    monkeypatch.setattr(backends, "usable_cores", lambda: 2)
    choice = resolve_runtime("auto", None, CPU)
    assert (choice.backend, choice.precision) == ("openvino", "bf16")
    assert choice.describe(CPU, 2).startswith("inference: OpenVINO bf16 on the CPU (2 threads)")
    assert choice.describe(CPU, 4).startswith("inference: OpenVINO bf16 on the CPU (4 threads on 2 cores)")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # one photo at a time: the network on torch's threads
    assert choice.describe(CPU, 1).startswith("inference: OpenVINO bf16 on the CPU (2 threads)")
    # --precision fp32: today's exact path; a GPU: PyTorch; fp16: PyTorch's autocast
    assert resolve_runtime("auto", "fp32", CPU) == RuntimeChoice("torch", "fp32")
    assert resolve_runtime("auto", None, torch.device("cuda")) == RuntimeChoice("torch", None)
    assert resolve_runtime("auto", "fp16", CPU).backend == "torch"
    assert resolve_runtime("openvino", "fp32", CPU) == RuntimeChoice("openvino", "fp32")
    assert resolve_runtime("onnxruntime", None, CPU) == RuntimeChoice("onnxruntime", "fp32")


def test_a_cpu_without_bfloat16_falls_back_to_fp32_and_says_so(monkeypatch):
    no_bf16(monkeypatch)
    choice = resolve_runtime("auto", None, CPU)
    assert (choice.backend, choice.precision) == ("openvino", "fp32")
    assert "no bfloat16 instructions" in choice.describe(CPU, 2)
    with pytest.raises(ConfigError, match="no bfloat16"):
        resolve_runtime("openvino", "bf16", CPU)
    assert resolve_runtime("auto", "bf16", CPU).backend == "torch"  # asked for bf16: PyTorch's, said why


def test_int8_is_the_default_only_for_models_with_int8_networks_on_a_cpu_that_runs_int8(monkeypatch):
    monkeypatch.setattr(backends, "cpu_capabilities", lambda: frozenset({"FP32", "BF16", "INT8"}))
    monkeypatch.setattr(backends, "usable_cores", lambda: 2)
    choice = resolve_runtime("auto", None, CPU, int8=True)
    assert (choice.backend, choice.precision) == ("openvino", "int8")
    assert choice.describe(CPU, 2).startswith("inference: OpenVINO int8 (the rest in bf16) on the CPU (2 threads)")
    assert resolve_runtime("openvino", None, CPU, int8=True).precision == "int8"
    assert resolve_runtime("auto", "bf16", CPU, int8=True) == RuntimeChoice("openvino", "bf16")  # asked: no INT8
    assert resolve_runtime("auto", "fp32", CPU, int8=True) == RuntimeChoice("torch", "fp32")
    assert resolve_runtime("auto", None, torch.device("cuda"), int8=True) == RuntimeChoice("torch", None)
    assert resolve_runtime("auto", None, CPU, int8=False).precision == "bf16"  # a model never quantized
    monkeypatch.setattr(backends, "cpu_capabilities", lambda: frozenset({"FP32", "BF16"}))  # a CPU without INT8
    assert resolve_runtime("auto", None, CPU, int8=True).precision == "bf16"
    no_bf16(monkeypatch)
    assert "(the rest in fp32)" in resolve_runtime("auto", None, CPU, int8=True).describe(CPU, 2)


@pytest.mark.parametrize(
    "backend, device, int8, message",
    [
        ("auto", "cpu", False, "no INT8 network"),
        ("onnxruntime", "cpu", True, "OpenVINO on the CPU only"),
        ("torch", "cpu", True, "OpenVINO on the CPU only"),
        ("auto", "cuda", True, "OpenVINO on the CPU only"),
    ],
)
def test_int8_asked_for_where_it_cannot_run_is_refused(backend, device, int8, message):
    with pytest.raises(ConfigError, match=message):
        resolve_runtime(backend, "int8", torch.device(device), int8=int8)


def test_without_openvino_the_default_is_pytorch(monkeypatch):
    monkeypatch.setattr(backends, "_installed", lambda: set())
    assert resolve_runtime("auto", None, CPU) == RuntimeChoice("torch", None)


@pytest.mark.parametrize("backend, precision", [("onnxruntime", "bf16"), ("openvino", "fp16"), ("nope", None)])
def test_what_a_runtime_cannot_run_is_refused(backend, precision):
    with pytest.raises(ConfigError):
        resolve_runtime(backend, precision, CPU)


def _member(tiny_runs, tta=("hflip", "scale1.25")) -> Member:
    runs, _ = tiny_runs
    model, cfg, _, _ = load_checkpoint(runs / "a" / "fold0" / "best.pt", CPU)
    return Member("a", [model], cfg.image.height, cfg.image.width, list(tta), "fp32")


def test_photos_on_threads_give_the_batched_path_s_maps(tiny_data, tiny_runs):
    """jobs > 1: each photo's chain on its own thread, in input order; the numbers of batches of 4 (a batch
    of one photo and one thread may round a convolution's last bit otherwise: at most 1/255 apart)."""
    photos = sorted((tiny_data / "test").glob("*.jpg"))
    member = _member(tiny_runs)
    batched = dict(Engine([member], CPU, batch_size=4, num_workers=0).predict(photos))
    threaded = list(Engine([member], CPU, batch_size=4, num_workers=0, jobs=2).predict(photos))
    assert [n for n, _ in threaded] == [p.name for p in photos]
    diff = torch.stack([(q.int() - batched[n].int()).abs() for n, q in threaded])
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.999
    feats = [f for _, _, f in Engine([member], CPU, jobs=2).masks(photos, [1], 128, features=_features())]
    ref = [
        f
        for _, _, f in Engine([member], CPU, batch_size=4, num_workers=0).masks(photos, [1], 128, features=_features())
    ]
    assert np.abs(np.concatenate(feats) - np.concatenate(ref)).max() <= 16  # the few pixels a last bit moves


def test_a_cpu_runtime_is_warmed_up_once_not_on_every_call(tiny_data, tiny_runs):
    """Photos on threads warm the runtime up first (it compiles each input size on first use); after that, a
    call (a served photo, each batch of ``predict``) runs the network on its photos only, not on zeros again."""
    photo = sorted((tiny_data / "test").glob("*.jpg"))[0]
    engine = Engine([_member(tiny_runs, tta=())], CPU, backend="onnxruntime", jobs=2)
    inputs = []
    real = engine.member_probs

    def counted(member, x):
        inputs.append(bool(x.any()))
        return real(member, x)

    engine.member_probs = counted
    for _ in range(3):
        ((name, _),) = engine.predict([photo])
        assert name == photo.name
    assert inputs == [False, True, True, True]  # one run on zeros to compile, then the photos alone


def _features():
    from pipeline.inference.review import image_features

    return image_features


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bfloat16 instructions (OpenVINO's BF16 capability)")
def test_openvino_bf16_masks_stay_within_the_bound_of_fp32(tiny_data, tiny_runs):
    photos = sorted((tiny_data / "test").glob("*.jpg"))
    member = _member(tiny_runs)
    exact = {n: m for ns, ms, _ in Engine([member], CPU, batch_size=4, num_workers=0).masks(photos, [1], 128)
             for n, m in zip(ns, ms)}  # fmt: skip
    engine = Engine([member], CPU, "bf16", backend="openvino", jobs=2)
    assert engine.precisions[id(member)] == "bf16" and engine.openvino == ("bf16", 2)
    fast = {n: m for ns, ms, _ in engine.masks(photos, [1], 128) for n, m in zip(ns, ms)}
    agree = np.mean([(fast[n] == exact[n]).mean() for n in exact])
    assert 0.98 <= agree < 1.0  # bf16 moves pixels at the outline of this barely trained model, and no more


@pytest.mark.slow
def test_the_refiner_runs_in_openvino_as_in_pytorch():
    from pipeline.masks.outline_refiner import OutlineRefiner, openvino_runner, params_for, refine_outline

    torch.manual_seed(0)
    net = OutlineRefiner()
    torch.nn.init.normal_(net.head.weight, std=0.1)  # a correction that is not zero
    params = params_for(net)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    prob = rng.integers(0, 256, (5, 64, 64), dtype=np.uint8)
    from pipeline.masks.outline_refiner import network, to_tensors

    with torch.no_grad():
        ref = network(params)(*to_tensors(rgb, prob)).numpy()
    got = openvino_runner(params, "f32", 1)(rgb, prob)
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-3
    image = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    blended = np.zeros((150, 200), np.uint8)
    blended[40:110, 50:160] = 200
    mask = (blended >= 128).astype(np.uint8)
    torch_mask = refine_outline(mask, blended, image, params)
    ov_mask = refine_outline(mask, blended, image, params, openvino=("f32", 1))
    assert np.mean(torch_mask == ov_mask) > 0.999


def test_compiling_on_several_threads_restores_the_temp_folder(tmp_path, monkeypatch):
    """scratch_home is held by one thread at a time: the process's HOME and temp folder come back as they were."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.core.cpu_runtime import scratch_home

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def hold(_):
        with scratch_home():
            assert Path(tempfile.gettempdir()).is_dir()
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(hold, range(16)))
    assert tempfile.tempdir == str(tmp_path) and list(tmp_path.iterdir()) == []
