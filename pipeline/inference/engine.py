"""The one inference engine, shared by out-of-fold prediction and submission.

For every image and every ensemble member it averages the sigmoid probabilities of the member's
fold models over the TTA views (at the member's input size), upsamples them bilinearly to the
image's own size and quantizes them to uint8 (0..255). Out-of-fold prediction stores exactly
these uint8 maps as PNGs; the ensemble tunes weights and threshold on them; the submission
blends the same maps with the same integer arithmetic (``blend``), so the tuned recipe means
the same thing on test images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..core.device import autocast, resolve_channels_last, resolve_precision, runtime_threads, use_device
from ..core.parallel import ordered_map
from ..core.profile import PROFILE
from ..data.datasets import InferenceDataset
from ..models.unet import SegModel
from .backends import OPENVINO_PRECISIONS, openvino_hint, runtime
from .tta import resolve, view_sizes


@dataclass
class Member:
    name: str
    models: list[SegModel]
    height: int
    width: int
    tta: list[str] = field(default_factory=lambda: ["hflip"])
    precision: str = "auto"  # the AMP setting the member's out-of-fold maps were made with (recipe)
    # Per input size (h, w): the network quantized to INT8, an OpenVINO model (xml, weights) from the model
    # folder (``make quantize``); what OpenVINO runs in ``int8``.
    int8: dict[tuple[int, int], tuple[bytes, bytes]] = field(default_factory=dict, repr=False)


def int8_missing(member: Member) -> set[tuple[int, int]]:
    """The input sizes (h, w) the member's views meet that it has no INT8 network for."""
    return view_sizes(member.tta, member.height, member.width) - set(member.int8)


def blend(quantized, weights: list[int]):
    """Weighted average of uint8 maps (M, ...) with integer weights, rounded half up.

    Integer arithmetic makes the result bit-identical in NumPy and in torch on any device,
    which is what lets the ensemble's out-of-fold search carry over to the submission.
    """
    total = int(sum(weights))
    if total <= 0:
        raise ValueError(f"blend weights must sum to a positive number, got {weights}")
    if len(weights) == 1:  # (q*w + w//2) // w == q for integers: a single member blends to itself
        return quantized[0]
    if isinstance(quantized, np.ndarray):
        acc = np.zeros(quantized.shape[1:], dtype=np.int32)
        for q, w in zip(quantized, weights):
            if w:
                acc += q.astype(np.int32) * int(w)
        return ((acc + total // 2) // total).astype(np.uint8)
    acc = torch.zeros(quantized.shape[1:], dtype=torch.int32, device=quantized.device)
    for q, w in zip(quantized, weights):
        if w:
            acc += q.to(torch.int32) * int(w)
    return torch.div(acc + total // 2, total, rounding_mode="floor").to(torch.uint8)


def _same_size_together(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Consecutive views of one size concatenated (view-major), in order: one call per run of a size."""
    runs: list[list[torch.Tensor]] = []
    for v in inputs:
        if runs and runs[-1][0].shape == v.shape:
            runs[-1].append(v)
        else:
            runs.append([v])
    return [torch.cat(r) if len(r) > 1 else r[0] for r in runs]


class Engine:
    """Streams images through the ensemble: workers decode, the device does everything else.

    DataLoader workers decode each JPEG once per distinct member input size (DCT-scaled where the
    size allows, ``data.read_image``) and hand uint8 tensors over; normalisation (inside
    ``SegModel``), the TTA views (all views of a batch in one forward call), the averaging, the
    bilinear resize back to the image size, the uint8 quantization, the blend and the threshold
    all run on the device. Only the final boolean masks come back to the host.

    On the CPU with ``jobs`` > 1, photos go through ``jobs`` threads instead, each photo's whole chain
    (decode, every view, resize, blend, threshold, review features) on one thread, two per core by default
    (``cpu_jobs``; one photo's thread leaves its core idle while it waits for the GIL): no step waits for
    another's, and the network's runtime (OpenVINO) runs one request per thread. The same functions compute
    the same numbers as the batched path.
    """

    def __init__(
        self,
        members: list[Member],
        device: torch.device,
        precision: str | None = None,
        channels_last: bool | str = "auto",
        batch_size: int = 4,
        num_workers: int = 2,
        compile: bool | str | Callable = False,
        views_in_one_call: bool = True,
        backend: str = "torch",
        jobs: int = 1,
    ):
        """``precision``: None runs each member in its own (``Member.precision``); a setting
        (auto|bf16|fp16|off|fp32) runs all of them in it. ``compile``: True (inductor) or a
        ``torch.compile`` backend. ``backend``: torch, or onnxruntime / openvino on the CPU
        (pipeline/inference/backends.py; fp32, or bf16 in OpenVINO). ``jobs``: photos in flight at once
        on the CPU, one thread each (1: batches through a DataLoader, as on a GPU)."""
        self.members = members
        self.device = device
        use_device(device)
        self.jobs = max(1, int(jobs)) if device.type == "cpu" else 1
        runtime_precision = None
        if backend != "torch":
            runtime_precision = precision or "fp32"
            allowed = OPENVINO_PRECISIONS if backend == "openvino" else ("fp32",)
            if runtime_precision not in allowed:
                raise ValueError(f"backend {backend}: runs in fp32 (or bf16, int8 in OpenVINO), not {precision}")
            for m in members if runtime_precision == "int8" else ():
                missing = int8_missing(m)
                if missing:
                    sizes = ", ".join(f"{h}x{w}" for h, w in sorted(missing))
                    raise ValueError(f"member {m.name}: no INT8 network for its input size(s) {sizes}; `make quantize`")
            precision = None
        # A CPU runtime runs every member in its own precision (``runtime_precision``); PyTorch each member's.
        self.precisions = {
            id(m): runtime_precision or resolve_precision(precision or m.precision, device) for m in members
        }
        self.channels_last = resolve_channels_last(channels_last, device)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.views_in_one_call = views_in_one_call
        self.sizes = list(dict.fromkeys((m.height, m.width) for m in members))
        if device.type == "cuda":
            # Fixed input sizes: let cuDNN pick the fastest convolution algorithms once.
            torch.backends.cudnn.benchmark = True
        runtime_name = backend
        if runtime_name != "torch" and (device.type != "cpu" or compile):
            raise ValueError(f"backend {runtime_name}: runs on the CPU, without --compile")
        self.backend = runtime_name
        self.compiled = bool(compile)
        backend = "inductor" if compile is True else compile
        self._forward: dict[int, list] = {}
        self._warm = False  # every view's input size compiled (``warm_up``)
        for m in members:
            for model in m.models:
                model.to(device).eval()
                if self.channels_last:
                    model.to(memory_format=torch.channels_last)
            # torch.compile is off by default: it costs minutes of compilation per model and has
            # not been measured to pay off here (make bench, docs/record/cpu-speed.md).
            if runtime_name != "torch":  # ONNX Runtime / OpenVINO run the same model on the CPU
                networks = m.int8 if runtime_precision == "int8" else None
                self._forward[id(m)] = [
                    runtime(
                        model,
                        runtime_name,
                        runtime_precision,
                        streams=self.jobs,
                        threads=runtime_threads(self.jobs),
                        networks=networks,
                    )
                    for model in m.models
                ]
                continue
            self._forward[id(m)] = [
                torch.compile(model, dynamic=False, backend=backend) if compile else model for model in m.models
            ]

    @torch.no_grad()
    def member_probs(self, member: Member, x: torch.Tensor) -> torch.Tensor:
        """Mean probability (B,1,h,w), fp32, over the member's fold models and TTA views."""
        n_images = x.shape[0]
        if self.compiled and n_images < self.batch_size:
            # A compiled model holds one graph per input shape: the partial last batch is padded to
            # the full size (its extra rows are dropped below) instead of compiling another graph.
            x = torch.cat([x, x[-1:].expand(self.batch_size - n_images, *x.shape[1:])])
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:  # (B,H,W,3) from the workers: NCHW with channels_last strides, no copy
            x = x.permute(0, 3, 1, 2)
        views = resolve(member.tta)
        inputs = [forward(x) for forward, _ in views]
        if self.views_in_one_call and len(views) > 1 and len({v.shape for v in inputs}) == 1:
            inputs = [torch.cat(inputs)]  # (V*B, 3, h, w), view-major; views of other sizes go one by one
        elif self.views_in_one_call and self.backend != "torch":
            inputs = _same_size_together(inputs)  # a CPU runtime: the views of one size in one call
        if self.channels_last:
            inputs = [v.contiguous(memory_format=torch.channels_last) for v in inputs]
        total = None
        for model in self._forward[id(member)]:
            logits = []
            for v in inputs:
                # A CPU runtime runs the graph in its own precision: PyTorch only traces it, in fp32.
                with autocast(self.device, self.precisions[id(member)] if self.backend == "torch" else "fp32"):
                    with PROFILE.step(f"network {v.shape[-2]}x{v.shape[-1]} ({v.shape[0] // n_images} view(s))"):
                        logits.extend(model(v).chunk(v.shape[0] // x.shape[0]))
            # Accumulate model by model, view by view: the same order as an unbatched loop.
            for (_, inverse), lg in zip(views, logits):
                p = torch.sigmoid(inverse(lg).float())
                total = p if total is None else total.add_(p)
        n = len(member.models) * len(views)
        total = total[:n_images]
        return total.div_(n) if n > 1 else total  # in place: full-size temporaries dominate on CPU

    @staticmethod
    def quantize(prob: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B,1,h,w) probability -> (B,height,width) uint8, bilinear upsampling to the image size."""
        if prob.shape[-2:] != (height, width):
            prob = F.interpolate(prob, size=(height, width), mode="bilinear", align_corners=False)
        # No clamp needed: means of sigmoids and their bilinear interpolation stay in [0, 1] up to an
        # ulp, and round(255 * (1 + ulp)) is still 255.
        return prob[:, 0].mul(255).round_().to(torch.uint8)

    def loader(self, images: list[Path]) -> DataLoader:
        return DataLoader(
            InferenceDataset(images, self.sizes, hwc=self.channels_last),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
        )

    def _photo_maps(self, path: Path) -> tuple[str, torch.Tensor]:
        """One photo's name and (M, H, W) uint8 maps, on this thread: the batched path for a batch of one."""
        with PROFILE.step("decode at the model's size"):
            item = InferenceDataset([path], self.sizes, hwc=self.channels_last)[0]
        h, w = item["height"], item["width"]
        maps = []
        for m in self.members:
            prob = self.member_probs(m, item[f"x{self.sizes.index((m.height, m.width))}"][None])
            with PROFILE.step("probabilities to the photo's size"):
                maps.append(self.quantize(prob, h, w)[0])
        return item["name"], torch.stack(maps)

    @property
    def openvino(self) -> tuple[str, int] | None:
        """(OpenVINO precision, threads) for post-processing networks to run as the model runs (in int8: as the
        layers it keeps in float); None: PyTorch."""
        if self.backend != "openvino":
            return None
        return openvino_hint(next(iter(self.precisions.values()))), runtime_threads(self.jobs)

    def warm_up(self) -> None:
        """Compile every input size the members' views meet, on this thread, before photos go to threads
        (a CPU runtime compiles on first use, with the process's environment pointed at a scratch folder).
        Once: the runtime keeps what it compiled, and ``predict``/``masks`` on threads call this on every call
        (a served photo, each batch of ``predict``), where another run on zeros would be a network's time lost."""
        if self.backend == "torch" or self._warm:
            return
        for m in self.members:
            # In the layout the photos come in: (1,H,W,3) when channels_last, else (1,3,H,W).
            shape = (1, m.height, m.width, 3) if self.channels_last else (1, 3, m.height, m.width)
            self.member_probs(m, torch.zeros(shape, dtype=torch.uint8))
        self._warm = True

    def _parallel(self, fn: Callable, images: list[Path]) -> Iterator:
        """``fn(path)`` for every photo on ``jobs`` threads, in input order; torch kernels stay on the
        calling thread (one each: threads that each started a pool of their own would thrash)."""
        self.warm_up()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield from ordered_map(fn, images, self.jobs, ahead=2 * self.jobs)
        finally:
            torch.set_num_threads(threads)

    def _quantized(self, images: list[Path]) -> Iterator[tuple[list[str], list[tuple[list[int], torch.Tensor]]]]:
        """Per batch: the names, and per group of images of one size (indices, (M,b,H,W) uint8 on the device)."""
        for batch in self.loader(images):
            probs = [self.member_probs(m, batch[f"x{self.sizes.index((m.height, m.width))}"]) for m in self.members]
            groups: dict[tuple[int, int], list[int]] = {}
            for i, (h, w) in enumerate(zip(batch["height"].tolist(), batch["width"].tolist())):
                groups.setdefault((h, w), []).append(i)
            out = []
            for (h, w), idx in groups.items():
                with PROFILE.step("probabilities to the photo's size"):
                    if len(idx) < len(batch["name"]):  # mixed sizes in one batch (never in Kaggle's test set)
                        sel = torch.tensor(idx, device=self.device)
                        qs = [self.quantize(p[sel], h, w) for p in probs]
                    else:
                        qs = [self.quantize(p, h, w) for p in probs]
                out.append((idx, qs[0][None] if len(qs) == 1 else torch.stack(qs)))
            yield list(batch["name"]), out

    def predict(self, images: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (image name, uint8 maps (M, H, W) on the engine's device), in input order."""
        if self.jobs > 1:
            yield from self._parallel(self._photo_maps, images)
            return
        for names, groups in self._quantized(images):
            per_image = {i: q[:, j] for idx, q in groups for j, i in enumerate(idx)}
            for i, name in enumerate(names):
                yield name, per_image[i]

    def masks(
        self, images: list[Path], weights: list[int], threshold: int, features=None, blends: bool = False, finish=None
    ) -> Iterator[tuple[list[str], list, np.ndarray | None]]:
        """Per batch: (names, boolean masks (H, W) as NumPy arrays on the host, features), in input order.

        The blend and threshold of ``predict``'s maps happen on the device. On CUDA the masks are
        copied into pinned memory without blocking and a batch is handed over only once the next
        one has been queued, so the device never waits for the host's RLE/gzip work.
        ``features(maps, blended, threshold)`` (e.g. ``review.image_features``), when given, runs on
        the device too and only its few numbers per image come back: a (batch, F) int64 array.
        ``blends``: hand over the uint8 blends (as many bytes as the masks) instead of the masks, for
        host-side steps that need the probabilities; the caller thresholds them. ``finish(name, mask,
        features)``: what to hand over instead of each mask, computed on the photo's thread (``jobs`` > 1 only).
        """
        if self.jobs > 1:
            yield from self._parallel_masks(images, weights, threshold, features, blends, finish)
            return
        if finish is not None:
            raise ValueError("finish: for photos on threads (jobs > 1)")
        pending = None
        for names, groups in self._quantized(images):
            copies = []
            for idx, q in groups:
                blended = blend(q, weights)
                m = blended if blends else blended >= threshold  # (b, H, W) uint8 or bool
                with PROFILE.step("review features"):
                    f = features(q, blended, threshold) if features is not None else None
                if self.device.type == "cuda":
                    host = torch.empty(m.shape, dtype=m.dtype, pin_memory=True)
                    host.copy_(m, non_blocking=True)
                    if f is not None:
                        f = torch.empty(f.shape, dtype=f.dtype, pin_memory=True).copy_(f, non_blocking=True)
                    copies.append((idx, host, f))
                else:
                    copies.append((idx, m, f))
            event = None
            if self.device.type == "cuda":
                # On the stream the copies were queued on: the engine's device's, not GPU 0's.
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self.device))
            if pending is not None:
                yield self._host_masks(*pending)
            pending = (names, copies, event)
        if pending is not None:
            yield self._host_masks(*pending)

    def _parallel_masks(self, images, weights, threshold, features, blends, finish):
        """``masks`` on ``jobs`` threads: each photo's maps, blend, threshold, features (and ``finish``) on one."""

        def one(path: Path):
            name, q = self._photo_maps(path)
            blended = blend(q, weights)
            m = (blended if blends else blended >= threshold).numpy()
            with PROFILE.step("review features"):
                f = features(q[:, None], blended[None], threshold) if features is not None else None
            return name, m if finish is None else finish(name, m, f), f

        batch: list = []
        try:
            for done in self._parallel(one, images):
                batch.append(done)
                if len(batch) == self.batch_size:
                    full, batch = batch, []
                    yield self._batch_of(full)
        except GeneratorExit:
            raise
        except BaseException:
            if batch:  # the photos before a failing one are handed over first: a resume keeps them
                yield self._batch_of(batch)
            raise
        if batch:
            yield self._batch_of(batch)

    @staticmethod
    def _batch_of(done: list) -> tuple[list[str], list, np.ndarray | None]:
        feats = [f for _, _, f in done if f is not None]
        return [n for n, _, _ in done], [m for _, m, _ in done], torch.cat(feats).numpy() if feats else None

    @staticmethod
    def _host_masks(names, copies, event) -> tuple[list[str], list, np.ndarray | None]:
        if event is not None:
            event.synchronize()
        per_image = {i: host[j].numpy() for idx, host, _ in copies for j, i in enumerate(idx)}
        masks = [per_image[i] for i in range(len(names))]
        rows = {i: f[j].numpy() for idx, _, f in copies if f is not None for j, i in enumerate(idx)}
        feats = np.stack([rows[i] for i in range(len(names))]) if rows else None
        return names, masks, feats
