"""The submission's rows: each image's mask made with the recipe (``Recipe.mask``) and RLE-encoded, then
appended in order as fsync'ed, compressed chunks, each chunk's progress saved after it
(pipeline/stages/submission.py orchestrates; pipeline/stages/submission_files.py names the files).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..core.io_utils import open_nofollow, os_error_message
from ..core.profile import PROFILE
from ..data.layout import DataError, Layout, read_image
from ..inference.engine import Engine
from ..inference.recipe import Recipe
from ..inference.review import REVIEW_FEATURES, ReviewSidecar, final_features, image_features
from ..masks import rle
from .submission_files import SubmissionFiles, write_all


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
            write_all(self.f, data)
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


def write_rows(
    engine: Engine,
    weights: list[int],
    recipe: Recipe,
    layout: Layout,
    todo: list[Path],
    files: SubmissionFiles,
    *,
    key: dict,
    review: ReviewSidecar,
    compress,
    rows_done: int,
    size: list | None,
    n_rows: int,
    chunk_rows: int,
    batch_size: int,
    rle_threads: int,
    quiet: bool,
) -> list:
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
        recipe.compile_steps(engine.openvino)  # before the threads use them
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
