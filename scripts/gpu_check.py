"""``make gpu-check``: the first run of this pipeline on a GPU, one command of at most 10 minutes.

Whoever is lent a GPU runs this first (``make gpu-check DATA=/path/to/carvana``; a handful of real
cars in the Kaggle layout is enough). Its sections, in order; each is written to
``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (tables ready to paste into docs/record/) as
soon as it ends, so a section that fails, or a run cut short, keeps everything before it:

1. ``env``               torch, CUDA, the GPU, its memory, bf16 support, cuDNN
2. ``cuda_tests``        the CUDA tests (CUDA_TESTS): what only a GPU can show
3. ``smoke_<model>``     ``make smoke`` for each model at full resolution: per stage seconds, peak
                         memory, img/s; the largest training and inference batch on this GPU
4. ``train_throughput``  training img/s and peak memory at batch 1, 2, 4, 8 (synthetic batches on the
                         GPU), and the memory per training image from the slope
5. ``bench_gpu``         ``make bench`` figure 4 (2 archs x 5 folds x hflip, end to end vs bare loop)
6. ``bench_host``        ``make bench`` figure 2 on the GPU (submission vs decode-only, trivial model)
7. ``agreement``         bf16 and fp16 vs fp32 masks of a briefly trained model on real images
8. ``compile``           eager vs ``torch.compile`` inference img/s, and the compile time

A section that would no longer fit ``--budget`` (by its estimate) is skipped and says so; one still
running at ``--hard-limit`` is stopped. Encoder weights are not downloaded (``encoder_weights=none``):
speed and memory do not depend on them. tests/system/test_gpu_check.py dry-runs the whole script on CPU at
a tiny size so that it cannot rot.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.core.checks import check_compile, check_device  # noqa: E402
from pipeline.core.config import ConfigError, load_config  # noqa: E402
from pipeline.core.device import pick_device  # noqa: E402
from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.core.io_utils import check_writable, write_json, write_text  # noqa: E402
from pipeline.core.measure import GB  # noqa: E402
from pipeline.data.layout import Layout  # noqa: E402
from pipeline.stages.train import check_train_config  # noqa: E402

# Seconds each section is expected to take on one H100/H200 (guesses until measured: see the JSON's
# "seconds" after the first run); a section is skipped when it would end past --budget.
ESTIMATE = {
    "cuda_tests": 60,
    "smoke": 60,
    "train_throughput": 60,
    "bench_gpu": 60,
    "bench_host": 30,
    "agreement": 45,
    "compile": 120,
}


class Budget(Exception):
    """A section ran past --hard-limit."""


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- sections ----------------------------------------------------------------------------------------------
def env(a, dev) -> dict:
    info = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(dev),
        "command": " ".join([Path(sys.executable).name, "scripts/gpu_check.py", *a.argv]),
    }
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(
            gpu=p.name,
            memory_gb=round(p.total_memory / GB, 1),
            capability=f"{p.major}.{p.minor}",
            bf16=torch.cuda.is_bf16_supported(including_emulation=False),
            cudnn=torch.backends.cudnn.version(),
            gpus_visible=torch.cuda.device_count(),
        )
    return info


# What only a GPU can show (skipped without one): training, and the engine's copies between devices.
CUDA_TESTS = ["tests/stages/test_train_cuda.py", "tests/inference/test_engine_cuda.py"]


def cuda_tests(a, dev, remaining: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(10, remaining))
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = lines[-1] if lines else proc.stderr[-300:]
    result = {"returncode": proc.returncode, "summary": summary, "tail": proc.stdout[-4000:]}
    if proc.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"{' '.join(CUDA_TESTS)}: {summary}")
    return result


def smoke(a, dev, model: str) -> dict:
    from pipeline.stages.smoke import run_smoke

    return run_smoke(REPO / "configs" / f"{model}.yaml", a.data, a.overrides, device=a.device)


def _fit(batches: list[int], peaks: list[float]) -> tuple[float, float]:
    """Least-squares line peak = fixed + per_image * batch (GB)."""
    if len(batches) < 2:
        return peaks[0] if peaks else 0.0, 0.0
    per_image, fixed = np.polyfit(batches, peaks, 1)
    return float(fixed), float(per_image)


def train_throughput(a, dev) -> dict:
    from pipeline.stages.bench import training_rate

    capacity = torch.cuda.get_device_properties(dev).total_memory / GB if dev.type == "cuda" else None
    out = {}
    for model in a.models:
        cfg = load_config(REPO / "configs" / f"{model}.yaml", a.overrides)
        rows = []
        for batch in a.batches:
            try:
                rate = training_rate(cfg, dev, batch, warmup=2, steps=5)
            except torch.OutOfMemoryError:
                rows.append({"batch": batch, "oom": True})
                _free(dev)
                break
            rows.append({"batch": batch, "img_s": rate["img_s"], "peak_gb": rate["peak_gb"], "setup": rate["setup"]})
            _free(dev)
        ok = [r for r in rows if not r.get("oom")]
        fixed, per_image = _fit([r["batch"] for r in ok], [r["peak_gb"] for r in ok])
        largest = math.floor((0.9 * capacity - fixed) / per_image) if capacity and per_image > 0 else None
        out[model] = {"rows": rows, "fixed_gb": round(fixed, 3), "per_image_gb": round(per_image, 3)}
        out[model]["max_batch_90pct"] = largest
    return out


def bench_gpu(a, dev) -> dict:
    from pipeline.stages.bench import figure_gpu

    return figure_gpu(
        Path(a.data), a.bench_images, a.workers, 4, device=str(dev), size=a.size, folds=a.bench_folds,
        archs=tuple(a.models), channels_last=a.channels_last,
    )  # fmt: skip


def bench_host(a, dev) -> dict:
    from pipeline.stages.bench import figure_host

    h, w = a.size or (1280, 1918)
    return figure_host(Path(a.data), 2 * a.bench_images, a.workers, 4, h, w, device=str(dev))


def _masks_and_maps(engine, images):
    return {name: q[0].cpu().numpy() for name, q in engine.predict(images)}


def agreement(a, dev) -> dict:
    """Train the first model briefly on real views of one car, then predict held-out and test images in
    fp32, bf16 and fp16 with the same weights: how many mask pixels change with the precision."""
    import pandas as pd

    from pipeline.data.layout import Layout, read_mask
    from pipeline.inference.engine import Engine, Member
    from pipeline.masks.metrics import dice
    from pipeline.models.unet import load_checkpoint_model
    from pipeline.stages.smoke import prepare
    from pipeline.stages.train import run

    model_name = a.models[0]
    with tempfile.TemporaryDirectory(prefix="gpu-check-agree-") as tmp:
        root = Path(tmp)
        scratch = prepare(a.data, root, 16)
        over = [
            f"data_dir={scratch.data}",
            f"folds_csv={scratch.folds_csv}",
            f"runs_dir={root}",
            f"device={dev}",
            "train.epochs=1",
            f"train.steps_per_epoch={a.agreement_steps}",
            "train.lr=0.0003",
            "train.warmup_epochs=0",
            "train.early_stopping=0",
        ]
        cfg = load_config(REPO / "configs" / f"{model_name}.yaml", a.overrides + over)
        start = time.perf_counter()
        summary = run(cfg, quiet=True)
        train_s = time.perf_counter() - start
        model, mcfg = load_checkpoint_model(cfg.run_dir / "best.pt", dev)
        layout = Layout(scratch.data)
        folds = pd.read_csv(scratch.folds_csv)
        held = sorted(folds[folds.fold == 0].img)  # the car the model did not train on
        images = [layout.train_image(n) for n in held] + scratch.test_images
        maps = {}
        for precision in ("fp32", "bf16", "fp16"):
            member = Member(model_name, [model], mcfg.image.height, mcfg.image.width, list(mcfg.predict.tta))
            engine = Engine([member], dev, precision, a.channels_last, batch_size=2, num_workers=0)
            maps[precision] = _masks_and_maps(engine, images)
            _free(dev)
        result = {
            "model": model_name,
            "train": f"{a.agreement_steps} steps of batch {cfg.train.batch_size} from encoder_weights=none, "
            f"{train_s:.0f} s, out-of-fold Dice {summary['mean_dice']:.4f} ({summary['precision']})",
            "images": len(images),
            "size": f"{mcfg.image.height}x{mcfg.image.width}",
        }
        ref = maps["fp32"]
        for precision in ("bf16", "fp16"):
            got = maps[precision]
            pixels = sum(ref[n].size for n in ref)
            changed = sum(int(((ref[n] >= 128) != (got[n] >= 128)).sum()) for n in ref)
            result[precision] = {
                "mask_agreement": 1 - changed / pixels,
                "maps_differing": sum(int((ref[n] != got[n]).sum()) for n in ref) / pixels,
                "max_abs_diff": int(max(np.abs(ref[n].astype(int) - got[n]).max() for n in ref)),
                "dice_vs_truth": {
                    p: float(np.mean([dice(maps[p][n] >= 128, read_mask(layout.mask(n))) for n in held]))
                    for p in ("fp32", precision)
                },
            }
    return result


def compile_check(a, dev) -> dict:
    from pipeline.inference.engine import Engine, Member
    from pipeline.models.unet import build_model
    from pipeline.stages.bench import _jpeg, make_test_set

    cfg = load_config(REPO / "configs" / f"{a.models[0]}.yaml", a.overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    n = a.compile_images
    out = {"model": a.models[0], "backend": a.compile_backend, "images": n}
    with tempfile.TemporaryDirectory(prefix="gpu-check-compile-") as tmp:
        data = make_test_set(Path(tmp), 2 * n, _jpeg(Path(a.data), 1918, 1280))
        images = sorted((data / "test").glob("*.jpg"))
        masks = {}
        for mode, compile in (("eager", False), ("compiled", a.compile_backend)):
            torch._dynamo.reset()
            member = Member(a.models[0], [model], cfg.image.height, cfg.image.width, ["hflip"], cfg.predict.amp)
            engine = Engine([member], dev, None, a.channels_last, batch_size=4, num_workers=a.workers, compile=compile)
            start = time.perf_counter()
            for _ in engine.masks(images[:n], [1], 128):  # the first pass compiles (and autotunes)
                pass
            first = time.perf_counter() - start
            start = time.perf_counter()
            masks[mode] = np.concatenate([np.stack(m) for _, m, _ in engine.masks(images[n:], [1], 128)])
            steady = time.perf_counter() - start
            out[mode] = {"first_pass_s": round(first, 2), "img_s": round(n / steady, 3)}
            _free(dev)
    out["speedup"] = out["compiled"]["img_s"] / out["eager"]["img_s"]
    out["mask_agreement"] = float(np.mean(masks["eager"] == masks["compiled"]))
    return out


# -- report ------------------------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    from pipeline.stages.smoke import markdown as smoke_table

    e = results.get("env", {}).get("result", {})
    lines = [
        f"## {e.get('gpu', e.get('device', '?'))}: `make gpu-check` ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {e.get('host')}, {e.get('cpus')} CPUs, {e.get('gpu', 'no GPU')} "
        f"({e.get('memory_gb', '-')} GB, compute {e.get('capability', '-')}, bf16 {e.get('bf16', '-')}), "
        f"torch {e.get('torch')}, CUDA {e.get('cuda')}, cuDNN {e.get('cudnn', '-')}.",
        "",
        "```bash",
        e.get("command", "scripts/gpu_check.py"),
        "```",
        "",
        "| section | status | seconds |",
        "|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', '')} |")
    t = results.get("cuda_tests", {}).get("result")
    if t:
        lines += ["", f"CUDA tests ({', '.join(CUDA_TESTS)}): {t['summary']}"]
    smokes = [r["result"] for k, r in results.items() if k.startswith("smoke_") and r["status"] == "ok"]
    if smokes:
        lines += ["", "### make smoke", "", smoke_table(smokes)]
    tt = results.get("train_throughput", {}).get("result")
    if tt:
        lines += ["", "### Training throughput (synthetic batches on the device)", ""]
        lines += ["| model | batch | img/s | peak GB | setup |", "|---|---|---|---|---|"]
        for model, m in tt.items():
            for r in m["rows"]:
                if r.get("oom"):
                    lines.append(f"| {model} | {r['batch']} | out of memory | | |")
                else:
                    lines.append(f"| {model} | {r['batch']} | {r['img_s']:.2f} | {r['peak_gb']:.2f} | {r['setup']} |")
            lines.append(
                f"| {model} | slope | | {m['per_image_gb']:.2f} GB/image over {m['fixed_gb']:.2f} GB | "
                f"largest batch in 90% of the memory: {m['max_batch_90pct']} |"
            )
    for key, title in (("bench_gpu", "make bench figure 4"), ("bench_host", "make bench figure 2")):
        b = results.get(key, {}).get("result")
        if b:
            lines += ["", f"### {title}", "", "| figure | value |", "|---|---|"]
            lines += [f"| `{k}` | {v:.4g} |" if isinstance(v, float) else f"| `{k}` | {v} |" for k, v in b.items()]
    ag = results.get("agreement", {}).get("result")
    if ag:
        title = f"### Masks in bf16/fp16 vs fp32 ({ag['model']}, {ag['images']} images of DATA, {ag['size']})"
        lines += ["", title, ""]
        lines += [f"Model: {ag['train']}.", "", "| precision | mask pixels agreeing with fp32 | uint8 maps differing "
                  "| max map difference | Dice vs truth (fp32 -> this) |", "|---|---|---|---|---|"]  # fmt: skip
        for p in ("bf16", "fp16"):
            r = ag[p]
            d = r["dice_vs_truth"]
            lines.append(
                f"| {p} | {r['mask_agreement']:.6f} | {r['maps_differing']:.4f} | {r['max_abs_diff']} | "
                f"{d['fp32']:.5f} -> {d[p]:.5f} |"
            )
    c = results.get("compile", {}).get("result")
    if c:
        lines += ["", f"### torch.compile ({c['model']}, backend {c['backend']}, {c['images']} images per pass)", ""]
        lines += ["| mode | first pass s | img/s after |", "|---|---|---|"]
        lines += [f"| {m} | {c[m]['first_pass_s']} | {c[m]['img_s']} |" for m in ("eager", "compiled")]
        lines.append(f"\nSpeed-up {c['speedup']:.2f}x; masks agreeing with eager: {c['mask_agreement']:.6f}.")
    return "\n".join(lines) + "\n"


# -- driver ------------------------------------------------------------------------------------------------
SECTIONS = ("env", "cuda_tests", "smoke", "train_throughput", "bench_gpu", "bench_host", "agreement", "compile")


def _ints(option: str, text: str, low: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < low:
        raise ConfigError(f"{option} {text!r}: a comma list of whole numbers, each at least {low}")
    return values


def check_args(a) -> None:
    """Every option, before anything runs or is written (a typo must not cost a 10-minute GPU lease)."""
    check_device(a.device, "--device")
    a.models = [m for m in a.models.split(",") if m]
    if not a.models:
        raise ConfigError("--models: give at least one config name, e.g. vgg11,resnet50")
    for m in a.models:
        if not (REPO / "configs" / f"{m}.yaml").is_file():
            known = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
            raise ConfigError(f"--models: no config {m!r} (configs/{m}.yaml); known: {', '.join(known)}")
    a.batches = _ints("--batches", a.batches, 1)
    if a.size:
        text = a.size
        try:
            a.size = tuple(int(v) for v in text.lower().split("x"))
        except ValueError:
            a.size = ()
        if len(a.size) != 2 or min(a.size) < 32:
            raise ConfigError(f"--size {text!r}: HxW, each at least 32, e.g. 256x384")
    else:
        a.size = None
    for option, value, low in (
        ("--workers", a.workers, 0),
        ("--bench-images", a.bench_images, 1),
        ("--bench-folds", a.bench_folds, 1),
        ("--agreement-steps", a.agreement_steps, 1),
        ("--compile-images", a.compile_images, 1),
    ):
        if value < low:
            raise ConfigError(f"{option} {value}: must be at least {low}")
    if a.budget <= 0 or a.hard_limit <= 0:
        raise ConfigError(f"--budget {a.budget} / --hard-limit {a.hard_limit}: seconds, each more than 0")
    skip = set(a.skip.split(",")) - {""}
    known = set(SECTIONS) | {f"smoke_{m}" for m in a.models}
    unknown = sorted(skip - known)
    if unknown:
        raise ConfigError(f"--skip {a.skip!r}: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    a.skip = skip
    check_compile(a.compile_backend, "--compile-backend")
    a.channels_last = {"true": True, "false": False}.get(a.channels_last, "auto")
    a.overrides = ["model.encoder_weights=none", f"train.num_workers={a.workers}", f"predict.num_workers={a.workers}"]
    if a.size:
        a.overrides += [f"image.height={a.size[0]}", f"image.width={a.size[1]}"]
    a.overrides += a.set
    for m in a.models:  # the configs load with these overrides (names, types, ranges)
        check_train_config(load_config(REPO / "configs" / f"{m}.yaml", a.overrides))
    layout = Layout(a.data)
    layout.require(layout.train_dir, layout.masks_dir)
    check_writable(a.out, "gpu-check output")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data", help="a Kaggle-layout root with a few real cars (train, masks, test)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="gpu-check", help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--models", default="vgg11,resnet50", help="configs to smoke and measure")
    p.add_argument("--size", help="HxW instead of the configs' own (dry runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for all")
    p.add_argument("--batches", default="1,2,4,8", help="training batch sizes to time")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers (the configs' 8)")
    p.add_argument("--bench-images", type=int, default=32)
    p.add_argument("--bench-folds", type=int, default=5)
    p.add_argument("--agreement-steps", type=int, default=60)
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--compile-images", type=int, default=16)
    p.add_argument("--channels-last", default="auto", choices=("auto", "true", "false"))
    p.add_argument("--skip", default="", help="sections to leave out, e.g. compile,agreement")
    p.add_argument("--budget", type=float, default=570, help="seconds: no section starts that would end later")
    p.add_argument("--hard-limit", type=float, default=590, help="seconds: a section still running is stopped")
    a = p.parse_args(argv)
    a.argv = list(argv if argv is not None else sys.argv[1:])
    try:
        check_args(a)
    except PipelineError as e:  # as the pipeline's own commands: one line naming the option, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    dev = pick_device(a.device)
    out = Path(a.out)
    skip = a.skip
    start = time.time()
    results: dict = {}

    def on_alarm(signum, frame):
        raise Budget(f"stopped at --hard-limit {a.hard_limit:.0f} s")

    signal.signal(signal.SIGALRM, on_alarm)
    sections = [("env", lambda: env(a, dev), 0)]
    sections.append(("cuda_tests", lambda: cuda_tests(a, dev, a.hard_limit - (time.time() - start)), "cuda_tests"))
    sections += [(f"smoke_{m}", lambda m=m: smoke(a, dev, m), "smoke") for m in a.models]
    sections += [
        ("train_throughput", lambda: train_throughput(a, dev), "train_throughput"),
        ("bench_gpu", lambda: bench_gpu(a, dev), "bench_gpu"),
        ("bench_host", lambda: bench_host(a, dev), "bench_host"),
        ("agreement", lambda: agreement(a, dev), "agreement"),
        ("compile", lambda: compile_check(a, dev), "compile"),
    ]
    for name, fn, kind in sections:
        elapsed = time.time() - start
        if name in skip or kind in skip:
            results[name] = {"status": "skipped (--skip)"}
        elif kind and elapsed + ESTIMATE[kind] > a.budget:
            results[name] = {"status": f"skipped: {elapsed:.0f} s + ~{ESTIMATE[kind]} s would pass --budget"}
        else:
            print(f"== {name} ({elapsed:.0f} s so far)", flush=True)
            signal.alarm(max(1, int(a.hard_limit - elapsed)))
            t0 = time.time()
            try:
                results[name] = {"status": "ok", "result": fn()}
            except Exception as e:  # one section's failure must not lose the others' figures
                results[name] = {"status": f"FAILED: {type(e).__name__}: {str(e)[:300]}"}
                results[name]["traceback"] = traceback.format_exc()[-3000:]
                print(results[name]["traceback"], file=sys.stderr, flush=True)
            finally:
                signal.alarm(0)
            results[name]["seconds"] = round(time.time() - t0, 1)
            _free(dev)
        write_json(out / "gpu_check.json", {"seconds": round(time.time() - start, 1), "sections": results})
        write_text(out / "gpu_check.md", markdown(results))
        print(f"== {name}: {results[name]['status']}", flush=True)
    failed = [n for n, r in results.items() if r["status"].startswith("FAILED")]
    print(f"gpu-check: {len(results) - len(failed)} sections ok or skipped, {len(failed)} failed "
          f"({time.time() - start:.0f} s) -> {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")  # fmt: skip
    print(json.dumps({n: r["status"] for n, r in results.items()}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
