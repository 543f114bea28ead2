"""``make bench`` (``python -m pipeline bench``): the submission's speed and memory figures, side by side,
with targets.

1. ``rle_speedup``  RLE encode of real 1918x1280 masks, ours vs the widely copied Kaggle-kernel
   encoder (strings checked byte-identical). Target >= 3.
2. ``host_ratio``   images/s of the whole submission with a trivial model (decode, device work,
   threshold, RLE, gzip, write) over a decode-only loop over the same files through the engine's
   own loader (same workers, layout, pinning). On the GPU when there is one. Target >= 0.8. On a
   CPU-only machine the "device" work runs on the same cores as the decoders.
3. ``rss_growth``   peak RSS of a submission child process over 5,000 generated 480x320 test
   images relative to 1,000 (all in one process: num_workers=0). Target < 0.10.
4. GPU only: ``ensemble_img_s`` (2 architectures x 5 folds x hflip at the configs' resolution, in
   the configs' inference precision), the hours this implies for 100,064 images, model-views/s,
   ``gpu_ratio`` (end to end over a bare forward loop on a loader batch already on the GPU; target
   >= 0.9), and training images/s for vgg11 and resnet50 at full resolution (synthetic batches
   already on the GPU). The end-to-end rate is that of the images beyond the first n: two runs,
   of n and 2n images, so start-up (workers, engine) cancels out.

Writes ``bench.json`` (path printed) after every figure, so a figure that fails leaves the ones
before it; a failing figure is recorded with its error. Models have random weights: speed does
not depend on them.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ..core.io_utils import write_json
from ..data.layout import image_size, read_mask
from ..inference.recipe import Recipe
from ..masks import rle
from ..masks.probability import HALF

TEST_IMAGES = 100_064


def kaggle_rle(img: np.ndarray) -> str:
    """The encoder of the public Kaggle kernels, written from its description (the reference)."""
    pixels = img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def _best(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _masks(data: Path, n: int) -> tuple[list[np.ndarray], str]:
    files = sorted((data / "train_masks").glob("*_mask.gif"))[:n] if (data / "train_masks").is_dir() else []
    if files:
        return [read_mask(f) for f in files], f"{len(files)} real masks from {data / 'train_masks'}"
    from ..data.demo_data import _car_params, render_view

    rng = np.random.default_rng(0)
    masks = [render_view(_car_params(rng), 1 + i % 16, 1918, 1280, rng)[1].astype(np.uint8) for i in range(n)]
    return masks, f"{n} generated demo masks (no real data at {data})"


def figure_rle(data: Path) -> dict:
    masks, source = _masks(data, 16)
    for m in masks:
        if rle.encode(m) != kaggle_rle(m):
            raise AssertionError("RLE strings differ from the Kaggle-kernel encoder")
    ours = _best(lambda: [rle.encode(m) for m in masks]) / len(masks)
    ref = _best(lambda: [kaggle_rle(m) for m in masks]) / len(masks)
    return {"rle_speedup": ref / ours, "rle_ms_ours": ours * 1e3, "rle_ms_kaggle": ref * 1e3, "rle_source": source}


# -- a test set on disk and a trivial ensemble --------------------------------------------------------
class Trivial(nn.Module):
    """Returns fixed logits (a real car mask's, when there is one): no compute, realistic RLE rows."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], 1, *self.logits.shape[-2:])


def _trivial_logits(height: int, width: int) -> torch.Tensor:
    mask = _masks(Path(os.environ.get("BENCH_DATA", "../shared/data/carvana_real")), 1)[0][0]
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy(mask.astype(np.float32) * 8 - 4)[None, None]


def _jpeg(data: Path, width: int, height: int) -> bytes:
    real = sorted((data / "test").glob("*.jpg")) if (data / "test").is_dir() else []
    if real and (width, height) == (1918, 1280):
        return real[0].read_bytes()
    from ..data.demo_data import _car_params, render_view

    rng = np.random.default_rng(1)
    img = render_view(_car_params(rng), 3, width, height, rng)[0]
    return cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def make_test_set(root: Path, n: int, jpeg: bytes) -> Path:
    """``root/data`` in the Kaggle layout with n test images (hard links to one JPEG) + sample CSV."""
    data = root / "data"
    (data / "test").mkdir(parents=True, exist_ok=True)
    first = data / "test" / "source.jpg"
    first.write_bytes(jpeg)
    names = [f"{i:012x}_{1 + i % 16:02d}.jpg" for i in range(n)]
    for name in names:
        os.link(first, data / "test" / name)
    first.unlink()
    (data / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{x},1 1\n" for x in names))
    return data


def trivial_recipe(root: Path, height: int, width: int) -> Path:
    """A recipe whose one member is the trivial model (built by ``load_trivial``, not read from a file).

    Its stand-in checkpoint file is real, so the submission checks its lineage as for real members.
    """
    from ..core.identity import file_sha256

    ckpt = root / "trivial.pt"
    ckpt.write_bytes(b"stand-in: the trivial model is built by pipeline.stages.bench.load_trivial")
    oof = root / "oof.json"  # and a stand-in of the out-of-fold summary it was "tuned" on
    oof.write_text('{"stand_in": "pipeline.stages.bench.trivial_recipe"}\n')
    member = {
        "name": "trivial",
        "weight": 1,
        "checkpoints": [str(ckpt)],
        "checkpoint_sha256": [file_sha256(ckpt)],
        "oof_sha256": [file_sha256(oof)],
        "height": height,
        "width": width,
        "tta": [],
    }
    path = root / "recipe.json"
    path.write_text(json.dumps({"members": [member], "threshold": HALF}))
    return path


def load_trivial(recipe: Recipe, device: torch.device):
    """The members of ``trivial_recipe``'s recipe, as ``make_submission(load=...)`` builds them."""
    m = recipe.members[0]
    return _trivial_members(m.height, m.width), [1]


def _trivial_members(height: int, width: int) -> list:
    from ..inference.engine import Member

    return [Member("trivial", [Trivial(_trivial_logits(height, width))], height, width, [])]


def _device(name: str) -> torch.device:
    from ..core.device import pick_device

    return pick_device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def figure_host(data: Path, n: int, workers: int, batch: int, height: int, width: int, device: str = "auto") -> dict:
    from ..inference.engine import Engine
    from .submission import make_submission

    dev = _device(device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        test = make_test_set(root, n, _jpeg(data, 1918, 1280))
        paths = sorted((test / "test").glob("*.jpg"))
        recipe = trivial_recipe(root, height, width)
        # The engine's own loader (layout, pinning, prefetch) without the device work: what the host can feed.
        trivial = _trivial_members(height, width)
        feeder = Engine(trivial, dev, batch_size=batch, num_workers=workers)

        def decode_only():
            for _ in feeder.loader(paths):
                pass

        def submission():
            out = root / f"s{time.monotonic_ns()}.csv.gz"
            make_submission(
                recipe, test, out, device=str(dev), batch_size=batch, num_workers=workers, quiet=True,
                load=load_trivial,
            )  # fmt: skip

        t_decode = min(_best(decode_only, 1), _best(decode_only, 1))
        t_sub = min(_best(submission, 1), _best(submission, 1))
        w0, h0 = image_size(paths[0])
    return {
        "host_ratio": t_decode / t_sub,
        "host_img_s_submission": n / t_sub,
        "host_img_s_decode_only": n / t_decode,
        "host_setup": f"{n} test images {w0}x{h0}, input {height}x{width}, {workers} workers, batch {batch}, "
        f"device {dev}",
    }


def _rss_child(n: int, root: Path) -> None:
    """Run inside a child process: a submission over n small images; print peak RSS (kB)."""
    from .submission import make_submission

    # 480x320: big enough that keeping anything per image (a 150 kB mask) would show as growth.
    data = make_test_set(root, n, _jpeg(Path("/nonexistent"), 480, 320))
    out = root / "s.csv.gz"
    make_submission(
        trivial_recipe(root, 320, 480), data, out, device="cpu", num_workers=0, quiet=True, load=load_trivial,
        chunk_rows=256,
    )  # fmt: skip
    status = Path("/proc/self/status").read_text()
    print(json.dumps({"vmhwm_kb": int(status.split("VmHWM:")[1].split()[0])}))


def figure_rss(small: int, large: int) -> dict:
    peaks = {}
    for n in (small, large):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pipeline.stages.bench", "--rss-child", str(n), tmp]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            peaks[n] = json.loads(out.strip().splitlines()[-1])["vmhwm_kb"]
    return {
        "rss_growth": peaks[large] / peaks[small] - 1,
        f"rss_peak_mb_{small}": peaks[small] / 1024,
        f"rss_peak_mb_{large}": peaks[large] / 1024,
        "rss_setup": "480x320 generated test images, 1 process (num_workers=0), trivial model, VmHWM",
    }


# -- figure 4: GPU ------------------------------------------------------------------------------------
def figure_gpu(
    data: Path,
    n: int,
    workers: int,
    batch: int,
    device: str = "cuda",
    size: tuple[int, int] | None = None,
    folds: int = 5,
    archs: tuple[str, ...] = ("vgg11", "resnet50"),
    channels_last: bool | str = "auto",
) -> dict:
    """Figure 4 on ``device`` (the GPU; for a dry run another device, a smaller ``size`` and ``folds``,
    and ``channels_last=True`` to take the CUDA layout on CPU)."""
    from ..core.config import load_config
    from ..core.device import resolve_precision
    from ..inference.engine import Engine, Member
    from ..models.unet import build_model
    from .submission import make_submission

    dev = _device(device)
    over = ["model.encoder_weights=none"] + ([f"image.height={size[0]}", f"image.width={size[1]}"] if size else [])
    cfgs = {a: load_config(f"configs/{a}.yaml", over) for a in archs}
    members = []
    for arch, cfg in cfgs.items():
        models = [build_model(cfg.model) for _ in range(folds)]
        members.append(Member(arch, models, cfg.image.height, cfg.image.width, ["hflip"], cfg.predict.amp))
    views = sum(len(m.models) * 2 for m in members)
    weights = [1] * len(members)
    precisions = sorted({resolve_precision(m.precision, dev) for m in members})
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        test = make_test_set(root, 2 * n, _jpeg(data, 1918, 1280))
        recipe = trivial_recipe(root, members[0].height, members[0].width)

        def submission(name: str, limit: int) -> float:
            start = time.perf_counter()
            make_submission(
                recipe, test, root / name, device=str(dev), batch_size=batch, num_workers=workers, quiet=True,
                load=lambda r, d: (members, weights), limit=limit, channels_last=channels_last,
            )  # fmt: skip
            return time.perf_counter() - start

        submission("warm.csv.gz", 2 * batch)  # warm-up: cuDNN autotuning, allocator
        t_n = submission("n.csv.gz", n)
        t_2n = submission("2n.csv.gz", 2 * n)
        e2e = n / max(t_2n - t_n, 1e-9)  # the marginal rate: start-up is in both runs and cancels
        # The bare loop: a batch exactly as the engine's loader hands it over (HWC uint8 under
        # channels_last), already on the device, through the same member_probs.
        engine = Engine(members, dev, channels_last=channels_last, batch_size=batch, num_workers=0)
        first = next(iter(engine.loader(sorted((test / "test").glob("*.jpg"))[:batch])))
        inputs = {id(m): first[f"x{engine.sizes.index((m.height, m.width))}"].to(dev) for m in members}
        steps = max(2, n // batch)
        for m in members:
            engine.member_probs(m, inputs[id(m)])
        _sync(dev)
        start = time.perf_counter()
        for _ in range(steps):
            for m in members:
                engine.member_probs(m, inputs[id(m)])
        _sync(dev)
        bare = steps * batch / (time.perf_counter() - start)
    h, w = members[0].height, members[0].width
    out.update(
        ensemble_img_s=e2e,
        ensemble_hours_100064=TEST_IMAGES / e2e / 3600,
        model_views_per_s=e2e * views,
        bare_forward_img_s=bare,
        gpu_ratio=e2e / bare,
        gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
        gpu_setup=f"{len(archs)} archs x {folds} folds x (identity, hflip) = {views} model-views/image, "
        f"{'/'.join(precisions)}, channels_last {engine.channels_last}, batch {batch}, {workers} workers, "
        f"input {h}x{w}, marginal rate of test images {n + 1}..{2 * n}",
    )
    for arch, cfg in cfgs.items():
        rate = training_rate(cfg, dev, cfg.train.batch_size, channels_last=channels_last)
        out[f"train_img_s_{arch}"] = rate["img_s"]
        out[f"train_setup_{arch}"] = rate["setup"]
    return out


def training_rate(
    cfg, device: torch.device, batch: int, warmup: int = 3, steps: int = 10, channels_last: bool | str = "auto"
) -> dict:
    """Training images/s and peak memory of ``cfg``'s model at its size and precision, on synthetic
    batches already on the device (the loader is not measured): forward, the config's loss, backward, AdamW."""
    from ..core.device import autocast, resolve_channels_last, resolve_precision
    from ..core.measure import GB, Meter
    from ..models.losses import get_loss
    from ..models.unet import build_model

    precision = resolve_precision(cfg.train.amp, device)
    layout = resolve_channels_last(cfg.train.channels_last if channels_last == "auto" else channels_last, device)
    meter = Meter(device)
    model = build_model(cfg.model).to(device).train()
    if layout:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = get_loss(cfg.train.loss).to(device)
    h, w = cfg.image.height, cfg.image.width
    x = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, device=device)
    if layout:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, h, w, device=device) > 0.5).float()

    def step():
        with autocast(device, precision):
            logits = model(x)
        loss = loss_fn(logits, y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):  # cuDNN autotuning, the optimizer's state, the allocator
        step()
    with meter.stage("train", images=steps * batch):
        for _ in range(steps):
            step()
    stage = meter.stages[0]
    return {
        "img_s": stage["img_s"],
        "peak_gb": stage["peak_gb"],
        "fixed_gb": stage["baseline_gb"],
        "setup": f"batch {batch}, {h}x{w}, {precision}, channels_last {layout}, loss {cfg.train.loss}",
        "peak_bytes": stage["peak_gb"] * GB,
    }


TARGETS = {"rle_speedup": (">=", 3.0), "host_ratio": (">=", 0.8), "rss_growth": ("<", 0.10), "gpu_ratio": (">=", 0.9)}


def _verdict(key: str, value: float) -> str:
    op, t = TARGETS[key]
    ok = value >= t if op == ">=" else value < t
    return f"target {op} {t:g}: {'met' if ok else 'MISSED'}"


def run_bench(
    data: str | Path = "../shared/data/carvana_real",
    out: str | Path = "bench.json",
    images: int = 96,
    num_workers: int = 2,
    batch_size: int = 4,
    size: str = "1280x1918",
    rss: str = "1000,5000",
    figures: str = "1,2,3,4",
) -> None:
    """``python -m pipeline bench``: the figures asked for, each written to ``out`` as soon as it is measured."""
    command = (
        f"python -m pipeline bench --data {data} --out {out} --images {images} --num-workers {num_workers} "
        f"--batch-size {batch_size} --size {size} --rss {rss} --figures {figures}"
    )
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    cv2.setNumThreads(1)
    data = Path(data)
    os.environ["BENCH_DATA"] = str(data)  # for the trivial model's mask, also in the figure-3 children
    h, w = (int(v) for v in size.lower().split("x"))
    small, large = (int(v) for v in rss.split(","))
    res: dict = {
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "torch": torch.__version__,
        "command": command,
    }
    start = time.time()
    res["seconds"] = 0.0
    out = Path(out)
    wanted = {int(f) for f in figures.split(",")}
    failed = []

    def measure(number: int, name: str, fn, report) -> None:
        """One figure: measured, printed, and bench.json rewritten at once (a later crash keeps it)."""
        if number not in wanted:
            return
        try:
            res.update(fn())
        except Exception as e:  # a figure that fails must not take the others with it
            res[f"error_{name}"] = f"{type(e).__name__}: {e}"
            failed.append(name)
            print(f"{number}. {name}: FAILED: {type(e).__name__}: {e}")
        else:
            report()
        res["seconds"] = round(time.time() - start, 1)
        write_json(out, res)

    def report_rle():
        print(f"1. rle_speedup  {res['rle_speedup']:6.2f}x  {_verdict('rle_speedup', res['rle_speedup'])}")
        print(f"   ours {res['rle_ms_ours']:.3f} ms vs Kaggle kernel {res['rle_ms_kaggle']:.3f} ms per mask, identical")
        print(f"   strings ({res['rle_source']})")

    def report_host():
        print(f"2. host_ratio   {res['host_ratio']:6.2f}   {_verdict('host_ratio', res['host_ratio'])}")
        print(
            f"   submission {res['host_img_s_submission']:.1f} img/s vs decode only "
            f"{res['host_img_s_decode_only']:.1f} img/s ({res['host_setup']})"
        )

    def report_rss():
        print(f"3. rss_growth   {res['rss_growth']:6.3f}   {_verdict('rss_growth', res['rss_growth'])}")
        print(
            f"   peak RSS {res[f'rss_peak_mb_{small}']:.0f} MB for {small} images, "
            f"{res[f'rss_peak_mb_{large}']:.0f} MB for {large} ({res['rss_setup']})"
        )

    def report_gpu():
        print(
            f"4. ensemble_img_s {res['ensemble_img_s']:.2f} img/s -> {res['ensemble_hours_100064']:.2f} h for "
            f"{TEST_IMAGES} images (target < 1 h on one H100); {res['model_views_per_s']:.1f} model-views/s"
        )
        print(f"   gpu_ratio {res['gpu_ratio']:.2f} ({_verdict('gpu_ratio', res['gpu_ratio'])}); {res['gpu_setup']}")
        print(
            f"   training img/s at 1280x1918: vgg11 {res['train_img_s_vgg11']:.1f}, "
            f"resnet50 {res['train_img_s_resnet50']:.1f} ({res['gpu']})"
        )

    measure(1, "rle_speedup", lambda: figure_rle(data), report_rle)
    measure(2, "host_ratio", lambda: figure_host(data, images, num_workers, batch_size, h, w), report_host)
    measure(3, "rss_growth", lambda: figure_rss(small, large), report_rss)
    if torch.cuda.is_available():
        measure(4, "gpu", lambda: figure_gpu(data, max(images // 2, 32), max(num_workers, 8), batch_size), report_gpu)
    elif 4 in wanted:
        res["gpu"] = None
        print("4. GPU figures  skipped: no CUDA device")
        write_json(out, res)
    print(f"bench.json: {out.resolve()} ({res['seconds']:.0f} s)")
    if failed:
        raise SystemExit(f"bench: figure(s) {', '.join(failed)} failed; the others are in {out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rss-child"]:  # one child process of figure 3 (figure_rss)
        torch.set_num_threads(1)
        _rss_child(int(sys.argv[2]), Path(sys.argv[3]))
    else:  # the older spelling of the stage: hand the command line over to it
        print("note: python -m pipeline.stages.bench is now python -m pipeline bench", file=sys.stderr)
        os.execv(sys.executable, [sys.executable, "-m", "pipeline", "bench", *sys.argv[1:]])
