"""Predict the test set with the ensemble recipe and write the Kaggle submission, resumably.

The CSV is written as a sequence of chunks (for ``.csv.gz`` each chunk is a gzip member: readers
decompress concatenated members as one stream; a ``.csv`` gets plain text), each fsync'ed before
the progress file records its end offset. After a crash or kill -9, re-running the same command
truncates the partial file to the last recorded chunk and continues with the next image, so
memory stays bounded and no finished work is lost. Only a validated file gets its final name,
and its summary (``<out>.json``, with the file's SHA-256) is written before that rename, so a
crash right after it does not recompute anything.

Sharding: ``shard=(i, N)`` computes the contiguous slice ``names[n*i//N : n*(i+1)//N]`` of the
sample order into its own resumable file ``<stem>.shard<i>-of-<N>.csv.gz`` (with the header);
``merge_shards`` concatenates the N shard files in order into the final submission, which is then
identical after decompression to a single-process run. Contiguous (not strided) slices make the
merge a plain concatenation.

Every output is guarded by an exclusive ``flock`` on ``<out>.lock``: a second run writing the same
file stops with the holder's pid and host, and a killed run's lock is released by the kernel.

Lineage (pipeline/lineage/provenance.py): the recipe is read through ``provenance.load_recipe``, which
refuses checkpoints that changed since ``make ensemble``. The resume key of a submission or
shard is what its rows are computed from (the recipe, the checkpoints' content hashes, the
inference precision) and which rows (sample order, test files, shard, limit), so a resumed run
never mixes rows of two models, and a merge never mixes shards of two.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.device import cpu_jobs, pick_device
from ..core.identity import file_sha256
from ..core.io_utils import (
    RELATIVE_TO_FILE,
    OutputLock,
    atomic_path,
    check_writable,
    fresh_file,
    open_nofollow,
    os_error_message,
    plain_name,
    read_json,
    stored_path,
    write_json,
)
from ..core.profile import PROFILE
from ..data.layout import DataError, Layout, read_image
from ..inference.backends import resolve_runtime
from ..inference.engine import Engine
from ..inference.members import configured_workers, load_members, member_precisions
from ..inference.recipe import Recipe
from ..inference.review import (
    REVIEW_FEATURES,
    ReviewSidecar,
    final_features,
    image_features,
    merge_reviews,
    review_path,
)
from ..inference.review import notes as review_notes
from ..lineage.provenance import load_recipe, rows_source, submission_key, summary_recipe
from ..masks import rle
from ..masks.submission_csv import SubmissionError, read_sample_names, validate_submission

HEADER = "img,rle_mask\n"
SUFFIXES = (".csv.gz", ".csv")


# -- file names -----------------------------------------------------------------------------------
def split_suffix(path: str | Path) -> tuple[str, str]:
    """``submission.csv.gz`` -> (``submission``, ``.csv.gz``); anything but .csv.gz/.csv is refused."""
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    raise SubmissionError(f"{path}: a submission must be named *.csv.gz (gzip) or *.csv (plain text)")


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> (1, 4)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not int(m[2]) >= 1 or not int(m[1]) < int(m[2]):
        raise SubmissionError(f"--shard {text!r}: expected i/N with 0 <= i < N (whole numbers), e.g. 0/4")
    return int(m[1]), int(m[2])


def shard_slice(n: int, index: int, count: int) -> slice:
    """The contiguous slice of ``n`` sample rows that shard ``index`` of ``count`` computes."""
    return slice(n * index // count, n * (index + 1) // count)


def shard_path(out: str | Path, index: int, count: int) -> Path:
    stem, suffix = split_suffix(out)
    return Path(out).with_name(f"{stem}.shard{index}-of-{count}{suffix}")


def limit_path(out: str | Path, limit: int) -> Path:
    """Where ``--limit N`` writes: never the final name, and visibly not a full submission."""
    stem, suffix = split_suffix(out)
    return Path(out).with_name(f"{stem}.limit{limit}-trial{suffix}")


def _compressor(suffix: str):
    if suffix == ".csv.gz":
        return lambda text: gzip.compress(text.encode(), compresslevel=6)
    return lambda text: text.encode()


def _write_all(f, data: bytes) -> None:
    """All of ``data`` to an unbuffered file, or an OSError: a short write (disk full) is never a chunk.

    Unbuffered, so a failed write surfaces here and not again when the file is closed; what a
    failed chunk left past the last recorded offset is truncated by the next run.
    """
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(f, "name", None))
        view = view[n:]


# -- ordered, pooled row writer ---------------------------------------------------------------------
def _row(name: str, m: np.ndarray, recipe: Recipe, photo: Path | None = None, openvino=None, review_row=None) -> str:
    """One CSV row: the recipe's mask of the image (``Recipe.mask``), then the RLE.

    ``m``: the image's uint8 blend where a step needs the probabilities and the photo (``Recipe.needs_photo``),
    else its mask as the engine thresholded it on the device at the recipe's threshold (as many bytes).
    ``photo``: the photo's path, decoded here (in the pool, or on the photo's thread: not on the loader's
    or the device's time) only where a step needs it (active_contour, refine_outline). ``openvino``: how a
    step's network runs (as the model does, ``Engine.openvino``). ``review_row``: the row's review
    features, completed here from the mask written (review.final_features).
    """

    def decode():
        with PROFILE.step("decode the photo (post-processing)"):
            return read_image(photo)

    if recipe.needs_photo:
        raw, mask = recipe.mask(m, decode, openvino=openvino)
    else:
        raw, mask = m, recipe.postprocessed(m)
    if review_row is not None and recipe.postprocess:  # the review list describes the mask written
        final_features(review_row, raw, mask, out=review_row)
    with PROFILE.step("RLE"):
        return f"{name},{rle.encode(mask)}\n"


def _timed(items, name: str):
    """``items``, the time spent waiting for each one profiled as ``name``."""
    it = iter(items)
    while True:
        with PROFILE.step(name):
            item = next(it, _END)
        if item is _END:
            return
        yield item


_END = object()


def _profiled(name: str, fn, *args):
    with PROFILE.step(name):
        return fn(*args)


class RowWriter:
    """Appends rows, in the order given, to an open file as fsync'ed chunks of ``chunk_rows``.

    RLE encoding (one task per image) and compression (one task per chunk) run in a small thread
    pool, overlapping with decoding and the device; NumPy and zlib release the GIL, so threads
    suffice and no mask is copied between processes. Results are consumed strictly in order, and
    at most ``max_rows`` images and ``max_chunks`` chunks are in flight: memory stays bounded.
    ``on_chunk(rows, offset)`` is called after each chunk is on disk.
    """

    def __init__(
        self,
        f,
        pool: ThreadPoolExecutor,
        chunk_rows: int,
        compress,
        on_chunk,
        recipe: Recipe,
        *,
        max_rows: int = 32,
        openvino=None,
    ):
        self.f, self.pool, self.chunk_rows, self.compress, self.on_chunk = f, pool, chunk_rows, compress, on_chunk
        self.recipe, self.openvino = recipe, openvino
        self.max_rows, self.max_chunks = max_rows, 2
        self.rows: deque[Future] = deque()
        self.chunks: deque[tuple[Future, int]] = deque()
        self.lines: list[str] = []
        self.broken = False  # a row failed: nothing after it may be written

    def add(self, name: str, m: np.ndarray, photo: Path | None = None, review_row=None) -> None:
        """An image's mask (or blend, for photo steps), made a row in the pool (``_row``); ``photo``: its path."""
        self._queue(self.pool.submit(_row, name, m, self.recipe, photo, openvino=self.openvino, review_row=review_row))

    def add_row(self, line: str) -> None:
        """A row computed elsewhere (``_row`` on the engine's photo thread), in its turn."""
        done: Future = Future()
        done.set_result(line)
        self._queue(done)

    def _queue(self, row: Future) -> None:
        self.rows.append(row)
        while self.rows and (len(self.rows) > self.max_rows or self.rows[0].done()):
            self._take_row()
        self._write_chunks(block=len(self.chunks) > self.max_chunks)

    def _take_row(self) -> None:
        try:
            with PROFILE.step("main thread: waiting for rows"):
                line = self.rows.popleft().result()
        except BaseException:
            self.broken = True
            raise
        self.lines.append(line)
        if len(self.lines) == self.chunk_rows:
            self._submit_chunk()

    def _submit_chunk(self) -> None:
        text, n = "".join(self.lines), len(self.lines)
        self.lines = []
        self.chunks.append((self.pool.submit(_profiled, "compress a chunk", self.compress, text), n))

    def _write_chunks(self, block: bool) -> None:
        while self.chunks and (block or self.chunks[0][0].done()):
            future, n = self.chunks.popleft()
            self._write(future.result(), n)

    def _write(self, data: bytes, n: int) -> None:
        with PROFILE.step("write + fsync a chunk, progress"):
            _write_all(self.f, data)
            os.fsync(self.f.fileno())
            self.on_chunk(n, self.f.tell())

    def finish(self) -> None:
        while self.rows:
            self._take_row()
        if self.lines:
            self._submit_chunk()
        self._write_chunks(block=True)

    def salvage(self) -> None:
        """After an error: write every row computed before the first failed one, in order; nothing after.

        The contract a resume relies on: what is on disk (and in the progress file) after a failure
        depends only on which row failed (or which image the engine could not produce), never on
        the thread pool's timing. Rows still in flight are waited for (milliseconds each).
        """
        while self.chunks:  # already-submitted chunks hold rows that all succeeded
            future, n = self.chunks.popleft()
            self._write(future.result(), n)
        if not self.broken:
            while self.rows:
                try:
                    self.lines.append(self.rows.popleft().result())
                except BaseException:
                    break
        for future in self.rows:
            future.cancel()
        self.rows.clear()
        if self.lines:
            self._write(self.compress("".join(self.lines)), len(self.lines))
            self.lines = []


# -- submission -------------------------------------------------------------------------------------
# Measured on the 960 real masks (RLE of every 8th, one CSV row each): 8.7 kB plain, 3.5 kB gzipped
# per row. With a margin for jagged predicted outlines, what the free-space check asks for per row:
ROW_BYTES = {".csv.gz": 4_500, ".csv": 11_000}


def _check_space(folder: Path, rows: int, suffix: str) -> None:
    """Found before the work, not after hours of it: the folder must hold about ``rows`` more rows."""
    need = rows * ROW_BYTES[suffix]
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DataError(
            f"{folder}: {free / 1e6:.0f} MB free, but {rows} rows need about {need / 1e6:.0f} MB "
            f"({ROW_BYTES[suffix] / 1e3:.1f} kB per row); free some space or point --out elsewhere"
        )


def _complete(out: Path, summary_path: Path, key: dict) -> dict | None:
    """The summary of ``out`` if it is finished for ``key`` (same key, and the file it validated)."""
    if not (out.exists() and summary_path.exists()):
        return None
    try:
        done = read_json(summary_path)
    except (OSError, ValueError):
        return None
    if done.get("key") == key and done.get("sha256") == file_sha256(out, 64):
        return done
    return None


def _other_output(out: Path, summary_path: Path, key: dict) -> str:
    """Why a file standing at ``out`` is not this run's to replace (a finished submission is hours of work)."""
    try:
        recorded = read_json(summary_path).get("key") if summary_path.is_file() else None
    except (OSError, ValueError, AttributeError):
        recorded = None
    if not isinstance(recorded, dict):
        what = "exists and has no summary of `make submission` beside it (not written by it?)"
    else:
        fields = {k: k for k in ("recipe", "checkpoints", "precision", "backend", "sample", "shard", "limit")}
        fields["test_files"] = "test files"
        differ = [label for k, label in fields.items() if recorded.get(k) != key.get(k)]
        what = (
            f"a complete submission made with another {', '.join(differ)} is there"
            if differ
            else "its content is not what its summary validated (edited since?)"
        )
    return f"{what}; refusing to replace it. Write to another --out, or add --force to replace it"


def test_names(layout: Layout) -> list[str]:
    """The sample's image names, each a plain file name (never joined onto test/ as ``../x``)."""
    names = read_sample_names(layout.sample_submission)
    for n in names:
        plain_name(n, str(layout.sample_submission))
    return names


def make_submission(
    recipe_path: str | Path,
    data_dir: str | Path,
    out: str | Path,
    device: str = "auto",
    batch_size: int = 4,
    num_workers: int | None = None,
    precision: str | None = None,
    chunk_rows: int = 256,
    force: bool = False,
    limit: int | None = None,
    quiet: bool = False,
    shard: tuple[int, int] | None = None,
    compile: bool | str = False,
    rle_threads: int = 2,
    load=load_members,
    channels_last: bool | str = "auto",
    backend: str = "auto",
    jobs: int | None = None,
    profile: bool = False,
) -> dict:
    """Write ``out`` (.csv.gz or .csv) for the rows of ``sample_submission.csv``; return a summary.

    ``shard=(i, N)`` writes only shard i's slice to ``shard_path(out, i, N)``; ``limit`` writes the
    first N rows (of the shard) to ``limit_path``. ``load(recipe, device)`` builds the members.
    ``precision`` (auto|bf16|fp16|fp32) overrides every member's recorded one; it is part of the
    resume key, so a resumed run never mixes rows of two precisions. ``num_workers`` None: the
    members' ``predict.num_workers``. ``backend``/``precision``: as ``backends.resolve_runtime`` decides
    (auto: OpenVINO on a CPU, in bf16 where the CPU has it); ``jobs``: photos in flight on the CPU, one
    thread each (None: one per core; a GPU takes batches). ``profile``: print where the time went, step by
    step per photo (core/profile.py), at the end.
    """
    start = time.time()
    recipe_path, out = Path(recipe_path), Path(out)
    _, suffix = split_suffix(out)
    if limit is not None and limit < 1:
        raise SubmissionError(f"--limit {limit}: must be at least 1")
    recipe, checkpoint_shas = load_recipe(recipe_path)  # refuses checkpoints changed since `make ensemble`
    layout = Layout(data_dir)
    names, paths, out = _rows_to_write(layout, out, shard, limit)
    dev = pick_device(device)
    if num_workers is None:
        num_workers = configured_workers(recipe)
    choice = resolve_runtime(backend, precision, dev)
    backend, precision = choice.backend, choice.precision
    jobs = cpu_jobs(jobs, dev) if backend != "torch" else jobs or 1  # PyTorch: today's batches unless asked
    source = rows_source(recipe, checkpoint_shas, member_precisions(recipe, dev, precision), backend)
    key = submission_key(source, names, paths, f"{shard[0]}/{shard[1]}" if shard else None, limit)
    files = _Files(out)
    check_writable(out.parent, "submission")
    with OutputLock(out):
        done = None if force else _complete(out, files.summary, key)
        if done is not None:
            files.progress.unlink(missing_ok=True)
            if not quiet:
                print(
                    f"{out} is already complete for this recipe, its checkpoints and data ({done['rows']} rows); "
                    "--force to redo"
                )
            return done
        if not force and (out.exists() or out.is_symlink()):
            raise SubmissionError(f"{out}: {_other_output(out, files.summary, key)}")

        review = ReviewSidecar(out)  # the review data of the rows on disk, resumed with them
        rows_done, size = _resume_point(files, key, review, len(names), force, quiet)
        compress = _compressor(suffix)
        _check_space(out.parent, len(names) - rows_done, suffix)
        if rows_done == 0:
            with atomic_path(
                files.part
            ) as tmp:  # a new file: a link left at the .part's name is replaced, not followed
                tmp.write_bytes(compress(HEADER))
            files.save_progress(key, 0, files.part.stat().st_size, None, review.start())

        todo = paths[rows_done:]
        if todo:
            if not quiet:
                print(choice.describe(dev, jobs))
            members, weights = load(recipe, dev)
            engine = Engine(
                members, dev, precision, channels_last, batch_size=batch_size, num_workers=num_workers,
                compile=compile, backend=backend, jobs=jobs,
            )  # fmt: skip
            if profile:
                PROFILE.start()
            started = time.perf_counter()
            size = _write_rows(
                engine, weights, recipe, layout, todo, files, key, review, compress,
                rows_done, size, len(names), chunk_rows, batch_size, rle_threads, quiet,
            )  # fmt: skip
            if profile:
                PROFILE.stop()
                cores = cpu_jobs(None, dev)
                print(PROFILE.report(len(todo), time.perf_counter() - started, cores))

        summary, check = _finish(files, key, names, size, review, recipe_path, limit, shard, dev, num_workers, start)
    if not quiet:
        for line in review_notes(review.table, review_path(out)):
            print(line)
        what = "trial of the first rows, not a submission" if limit else "shard" if shard else "validated"
        print(
            f"{out}: {check['rows']} rows, {what} ({check['empty_masks']} empty masks, "
            f"mean car area {check['mean_mask_area']:.3f})"
        )
    return summary


# -- make_submission's phases ------------------------------------------------------------------------
def _rows_to_write(layout: Layout, out: Path, shard: tuple[int, int] | None, limit: int | None):
    """The test images this run writes (all, a shard's slice, or a trial's first rows), their paths,
    and the file they go to; every one of them checked to exist before anything is written."""
    layout.require(layout.sample_submission, layout.test_dir)
    names = test_names(layout)
    if shard is not None:
        n = len(names)
        names = names[shard_slice(n, *shard)]
        if not names:
            raise SubmissionError(
                f"--shard {shard[0]}/{shard[1]}: empty, since {layout.sample_submission} has only {n} rows; "
                f"use at most {n} shards"
            )
        out = shard_path(out, *shard)
    if limit:  # a trial: written beside the submission under a name that says so, never over it
        names = names[:limit]
        out = limit_path(out, limit)
    paths = [layout.test_dir / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{missing[0]}: test image listed in sample_submission.csv not found ({len(missing)} missing in all)"
        )
    return names, paths, out


class _Files:
    """The submission's files: the CSV, its summary, the part being written, and what a resume keeps."""

    def __init__(self, out: Path):
        self.out = out
        self.summary = out.with_name(out.name + ".json")
        self.part = out.with_name(out.name + ".part")
        self.progress = out.with_name(out.name + ".progress.json")

    def save_progress(self, key: dict, rows: int, offset: int, size: list | None, review_bytes: int) -> None:
        """What a resume keeps: ``rows`` rows, ``offset`` bytes of the part file, the review data's bytes."""
        progress = {"key": key, "rows": rows, "bytes": offset, "size": size, "review_bytes": review_bytes}
        progress["review_columns"] = list(REVIEW_FEATURES)  # the sidecar's columns (a newer version adds some)
        write_json(self.progress, progress)


def _resume_point(files: _Files, key: dict, review: ReviewSidecar, n: int, force: bool, quiet: bool):
    """(rows already written, mask size) of a stopped run of the same key, or (0, None) to start over."""
    rows_done, size = 0, None
    if files.part.exists() and files.progress.exists() and not force:
        progress = read_json(files.progress)
        same_review = progress.get("review_columns") == list(REVIEW_FEATURES) and review.path.exists()
        if progress.get("key") == key and "review_bytes" in progress and same_review:
            rows_done, size = progress["rows"], progress["size"]
            with open_nofollow(files.part, "r+b") as f:
                f.truncate(progress["bytes"])  # drop a chunk that was being written when it stopped
            review.resume(progress["review_bytes"])
            if not quiet:
                print(f"resuming {files.part}: {rows_done}/{n} rows already written")
        elif not quiet and progress.get("key") == key:
            print(f"{files.part}: written without its review data (an older version); starting over")
        elif not quiet:
            print(f"{files.part}: left by another recipe, checkpoints, precision or data; starting over")
    return rows_done, size


def _write_rows(
    engine, weights, recipe, layout, todo, files, key, review, compress,
    rows_done, size, n_rows, chunk_rows, batch_size, rle_threads, quiet,
):  # fmt: skip
    """Predict ``todo`` and append their rows to the part file in chunks, each chunk's progress saved
    after it; a failure keeps every complete chunk. Returns the masks' size [width, height]."""
    bar = tqdm(total=n_rows, initial=rows_done, desc=files.out.name, unit="img", disable=quiet, smoothing=0.05)
    state = {"rows": rows_done, "size": size}

    def on_chunk(n: int, offset: int) -> None:
        state["rows"] += n
        # The same n rows' review data is on disk before the progress says so.
        files.save_progress(key, state["rows"], offset, state["size"], review.flush(n))
        bar.update(n)

    with open_nofollow(files.part, "ab") as f, ThreadPoolExecutor(max(1, rle_threads), "rle") as pool:
        writer = RowWriter(
            f, pool, chunk_rows, compress, on_chunk, recipe, max_rows=max(32, 4 * batch_size), openvino=engine.openvino
        )
        if engine.openvino and "refine_outline" in recipe.postprocess:  # compiled here, before the threads use it
            from ..masks.outline_refiner import openvino_runner

            openvino_runner(recipe.postprocess_params["refine_outline"], *engine.openvino)
        # Steps that need the photo and the probabilities (active_contour) get the uint8 blend instead of
        # the mask (as many bytes): ``_row`` makes the recipe's mask of either (``Recipe.mask``).
        finish = None
        if engine.jobs > 1:  # each photo's post-processing and RLE on its photo thread: no pool competes for cores

            def finish(name: str, m: np.ndarray, features) -> tuple[str, tuple[int, int], np.ndarray]:
                row = np.zeros(len(REVIEW_FEATURES), np.int64)
                row[: features.shape[1]] = features[0]
                line = _row(name, m, recipe, layout.test_dir / name, openvino=engine.openvino, review_row=row)
                return line, (m.shape[1], m.shape[0]), row

        try:
            batches = engine.masks(
                todo, weights, recipe.threshold, features=image_features, blends=recipe.needs_photo, finish=finish
            )
            batches = _timed(batches, "main thread: waiting for masks")
            for batch_names, masks, features in batches:
                if finish is not None:  # each photo's review row was completed on its thread
                    features = np.stack([row for _, _, row in masks])
                review_rows = review.add(batch_names, features)  # filled in by _row from the masks written
                for name, mask, review_row in zip(batch_names, masks, review_rows):
                    if finish is None:
                        width_height = (mask.shape[1], mask.shape[0])
                    else:
                        line, width_height, _ = mask
                    if state["size"] is None:
                        state["size"] = list(width_height)
                    elif list(width_height) != state["size"]:
                        w0, h0 = state["size"]
                        raise DataError(
                            f"{layout.test_dir / name}: {width_height[0]}x{width_height[1]}, but the test "
                            f"images before it are {w0}x{h0}"
                        )
                    if finish is None:
                        writer.add(name, mask, layout.test_dir / name, review_row)
                    else:
                        writer.add_row(line)
            writer.finish()
        except BaseException as e:
            try:
                writer.salvage()  # what is complete stays on disk for the next run
            except OSError:
                pass  # the disk that failed the write fails this one too; the progress file is exact
            if isinstance(e, OSError):
                raise DataError(
                    f"{os_error_message(files.part, e)}; the {state['rows']} rows written so far are kept: "
                    "re-run the same command to resume"
                ) from None
            raise
    bar.close()
    return state["size"]


def _finish(files: _Files, key, names, size, review, recipe_path, limit, shard, dev, num_workers, start):
    """Validate the part file, write its summary, then rename it into place; returns (summary, check)."""
    width, height = size
    check = validate_submission(files.part, names, width, height)
    review_csv = review.finish(names, files.out)
    summary = {
        "file": str(files.out),
        "key": key,
        "sha256": file_sha256(files.part, 64),
        "recipe": stored_path(recipe_path, files.summary),
        "paths": RELATIVE_TO_FILE,
        "rows": check["rows"],
        "empty_masks": check["empty_masks"],
        "mean_mask_area": round(check["mean_mask_area"], 5),
        "width": width,
        "height": height,
        "partial": bool(limit) or shard is not None,
        "review": str(review_csv),
        "device": str(dev),
        "num_workers": num_workers,
        "seconds_this_run": round(time.time() - start, 1),
    }
    # Summary first, then the rename: the summary names the file's hash, so a crash between the
    # two leaves a finished .part (renamed by the next run) and never a stale "complete" claim.
    write_json(files.summary, summary)
    os.replace(files.part, files.out)
    files.progress.unlink(missing_ok=True)
    review.remove()
    return summary, check


_SHARD_RE = r"\.shard(\d+)-of-(\d+)"


def _find_shards(out: Path) -> dict[int, dict[int, Path]]:
    """{N: {i: path}} of the files ``<stem>.shard<i>-of-<N><suffix>`` beside ``out``."""
    stem, suffix = split_suffix(out)
    pattern = re.compile(re.escape(stem) + _SHARD_RE + re.escape(suffix))
    found: dict[int, dict[int, Path]] = {}
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                found.setdefault(int(m[2]), {})[int(m[1])] = p
    return found


_SOURCE_KEYS = ("recipe", "checkpoints", "precision", "backend")


def merge_shards(
    data_dir: str | Path,
    out: str | Path,
    recipe_path: str | Path | None = None,
    quiet: bool = False,
    shards_of: str | Path | None = None,
    force: bool = False,
) -> dict:
    """Concatenate the shards (all N, each complete) into ``out`` in sample order; validate it.

    The shards are those of ``out`` (``<stem>.shard<i>-of-<N>.csv.gz`` beside it) or, when there are
    none, those of ``shards_of`` (the ``--out`` they were computed with). Every shard must have been
    computed from one source (recipe, checkpoints, precision); that source must still be the
    recipe's: ``recipe_path`` or, without it, the recipe the shards recorded, if it still exists.
    A complete ``out`` made from another source is never replaced (``force`` to replace it).
    """
    start = time.time()
    out = Path(out)
    _, suffix = split_suffix(out)
    source = out
    found = _find_shards(out)
    if not found and shards_of is not None:
        source = Path(shards_of)
        found = _find_shards(source)
    stem, source_suffix = split_suffix(source)
    if not found:
        raise SubmissionError(
            f"{source.parent}: no shard files {stem}.shard<i>-of-<N>{source_suffix}; "
            "run `make submission SHARD=i/N` first"
        )
    if len(found) > 1:
        raise SubmissionError(
            f"{source.parent}: shards of different splits ({', '.join(f'N={n}' for n in sorted(found))}) "
            f"for {source.name}; remove the ones you do not want"
        )
    ((count, shards),) = found.items()
    absent = [i for i in range(count) if i not in shards]
    if absent:
        raise SubmissionError(
            f"{source.parent}: shard(s) {absent} of {count} missing for {source.name}; "
            f"run `make submission SHARD={absent[0]}/{count}`"
        )
    layout = Layout(data_dir)
    layout.require(layout.sample_submission, layout.test_dir)
    names = test_names(layout)
    summaries = []
    for i in range(count):
        path = shards[i]
        part_names = names[shard_slice(len(names), i, count)]
        summary_path = path.with_name(path.name + ".json")
        info = read_json(summary_path) if summary_path.is_file() else {}
        recorded = info.get("key") if isinstance(info.get("key"), dict) else {}
        rows = submission_key(
            {k: recorded.get(k) for k in _SOURCE_KEYS},
            part_names,
            [layout.test_dir / n for n in part_names],
            f"{i}/{count}",
        )
        if _complete(path, summary_path, rows) is None:
            raise SubmissionError(
                f"{path}: not a complete shard {i}/{count} for this sample and test data "
                f"(or written by an older version); re-run `make submission SHARD={i}/{count}`"
            )
        summaries.append(info)
    sources = {tuple(str(s["key"][k]) for k in _SOURCE_KEYS) for s in summaries}
    sizes = {(s["width"], s["height"]) for s in summaries}
    if len(sources) > 1 or len(sizes) > 1:
        raise SubmissionError(
            f"{out.parent}: the shards of {out.name} were computed from different recipes, checkpoints, precisions "
            "or image sizes; re-run the stale ones with the current recipe"
        )
    shard_source = {k: summaries[0]["key"][k] for k in _SOURCE_KEYS}
    first_summary = shards[0].with_name(shards[0].name + ".json")
    recorded_recipe = summary_recipe(summaries[0], first_summary)
    want = Path(recipe_path) if recipe_path is not None else recorded_recipe or Path("")
    if recipe_path is not None or want.is_file():
        recipe, shas = load_recipe(want)
        current = rows_source(recipe, shas, shard_source["precision"], shard_source["backend"])
        if current != shard_source:
            raise SubmissionError(
                f"{source.parent}: the shards of {source.name} were computed from an earlier version of {want} "
                "(or other checkpoints); re-run `make submission SHARD=i/N` for every shard with the current recipe"
            )
    (width, height) = sizes.pop()
    key = submission_key(shard_source, names, [layout.test_dir / n for n in names])
    summary_path = out.with_name(out.name + ".json")
    part = out.with_name(out.name + ".part")
    compress = _compressor(suffix)
    check_writable(out.parent, "submission")
    with OutputLock(out):
        if out.exists() and not force and _complete(out, summary_path, key) is None:
            previous = read_json(summary_path) if summary_path.is_file() else {}
            if previous.get("key", {}).get("sample") is not None:  # a finished submission of another source
                raise SubmissionError(
                    f"{out}: a complete submission made from another recipe or checkpoints is there; refusing to "
                    "replace it with these shards. Merge into another --out, or --force to replace it"
                )
        _check_space(out.parent, len(names), suffix)
        try:
            fresh_file(part)  # never through a link standing at the .part's name
            with open_nofollow(part, "ab") as f:
                _write_all(f, compress(HEADER))
                for i in range(count):
                    opener = gzip.open if source_suffix == ".csv.gz" else open
                    with opener(shards[i], "rt", newline="") as src:
                        header = src.readline()
                        if header != HEADER:
                            raise SubmissionError(f"{shards[i]}: header {header!r}, expected {HEADER!r}")
                        while block := src.read(1 << 22):
                            _write_all(f, compress(block))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            part.unlink(missing_ok=True)
            raise DataError(os_error_message(part, e)) from None
        check = validate_submission(part, names, width, height)
        reviews = [review_path(shards[i]) for i in range(count)]
        review_csv = None
        if all(r.is_file() for r in reviews):  # one list for the whole test set: car features across shards
            review_csv = str(merge_reviews(reviews, names, out))
        elif not quiet:
            missing = next(r for r in reviews if not r.is_file())
            print(f"warning: {missing} not found (a shard of an older version?); no review list for {out.name}")
        summary = {
            "file": str(out),
            "key": key,
            "sha256": file_sha256(part, 64),
            "recipe": stored_path(recorded_recipe, summary_path) if recorded_recipe else None,
            "paths": RELATIVE_TO_FILE,
            "rows": check["rows"],
            "empty_masks": check["empty_masks"],
            "mean_mask_area": round(check["mean_mask_area"], 5),
            "width": width,
            "height": height,
            "partial": False,
            "review": review_csv,
            "merged_from": [str(shards[i]) for i in range(count)],
            "seconds_this_run": round(time.time() - start, 1),
        }
        write_json(summary_path, summary)
        os.replace(part, out)
    if not quiet:
        print(
            f"{out}: {check['rows']} rows merged from {count} shards, validated ({check['empty_masks']} empty masks, "
            f"mean car area {check['mean_mask_area']:.3f})"
        )
    return summary
