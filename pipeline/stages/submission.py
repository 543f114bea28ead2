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

Here: ``make_submission``, which runs the phases in order. The files, shards, resume point and
summaries: pipeline/stages/submission_files.py; the rows and their ordered, chunked writer:
pipeline/stages/row_writer.py; ``merge_shards``: pipeline/stages/merge.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..core.device import cpu_jobs, pick_device, usable_cores
from ..core.io_utils import OutputLock, atomic_path, check_writable, stored_path, write_json
from ..core.profile import PROFILE
from ..data.layout import Layout
from ..inference.backends import resolve_runtime
from ..inference.engine import Engine
from ..inference.members import configured_workers, has_int8, load_members, member_precisions
from ..inference.review import ReviewSidecar, review_path
from ..inference.review import notes as review_notes
from ..lineage.provenance import load_recipe, rows_source, submission_key
from ..masks.submission_csv import SubmissionError, validate_submission
from .row_writer import write_rows
from .submission_files import (
    HEADER,
    SubmissionFiles,
    check_space,
    complete_summary,
    compressor,
    other_output,
    resume_point,
    rows_to_write,
    split_suffix,
    summary_record,
)


def make_submission(
    recipe_path: str | Path,
    data_dir: str | Path,
    out: str | Path,
    *,
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
    load=None,
    channels_last: bool | str = "auto",
    backend: str = "auto",
    jobs: int | None = None,
    profile: bool = False,
) -> dict:
    """Write ``out`` (.csv.gz or .csv) for the rows of ``sample_submission.csv``; return a summary.

    ``shard=(i, N)`` writes only shard i's slice to ``shard_path(out, i, N)``; ``limit`` writes the
    first N rows (of the shard) to ``limit_path``. ``load(recipe, device)`` builds the members
    (default ``load_members``).
    ``precision`` (auto|bf16|fp16|fp32) overrides every member's recorded one; it is part of the
    resume key, so a resumed run never mixes rows of two precisions. ``num_workers`` None: the
    members' ``predict.num_workers``. ``backend``/``precision``: as ``backends.resolve_runtime`` decides
    (auto: OpenVINO on a CPU, int8 where the model folders hold INT8 networks, else bf16); ``jobs``: photos in
    flight on the CPU, one thread each (None: two per core, ``cpu_jobs``; a GPU takes batches). ``profile``:
    print where the time went, step by step per photo (core/profile.py), at the end.
    """
    start = time.time()
    recipe_path, out = Path(recipe_path), Path(out)
    _, suffix = split_suffix(out)
    if limit is not None and limit < 1:
        raise SubmissionError(f"--limit {limit}: must be at least 1")
    recipe, checkpoint_shas = load_recipe(recipe_path)  # refuses checkpoints changed since `make ensemble`
    layout = Layout(data_dir)
    names, paths, out = rows_to_write(layout, out, shard, limit)
    dev = pick_device(device)
    if num_workers is None:
        num_workers = configured_workers(recipe)
    int8 = dev.type == "cpu" and precision in (None, "int8") and has_int8(recipe)
    choice = resolve_runtime(backend, precision, dev, int8=int8)
    backend, precision = choice.backend, choice.precision
    jobs = cpu_jobs(jobs, dev) if backend != "torch" else jobs or 1  # PyTorch: today's batches unless asked
    source = rows_source(recipe, checkpoint_shas, member_precisions(recipe, dev, precision), backend)
    key = submission_key(source, names, paths, f"{shard[0]}/{shard[1]}" if shard else None, limit)
    files = SubmissionFiles(out)
    check_writable(out.parent, "submission")
    with OutputLock(out):
        done = None if force else complete_summary(out, files.summary, key)
        if done is not None:
            files.progress.unlink(missing_ok=True)
            if not quiet:
                print(
                    f"{out} is already complete for this recipe, its checkpoints and data ({done['rows']} rows); "
                    "--force to redo"
                )
            return done
        if not force and (out.exists() or out.is_symlink()):
            raise SubmissionError(f"{out}: {other_output(out, files.summary, key)}")

        review = ReviewSidecar(out)  # the review data of the rows on disk, resumed with them
        rows_done, size = resume_point(files, key, review, len(names), force, quiet)
        compress = compressor(suffix)
        check_space(out.parent, len(names) - rows_done, suffix)
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
            members, weights = (load or load_members)(recipe, dev)
            engine = Engine(
                members, dev, precision, channels_last, batch_size=batch_size, num_workers=num_workers,
                compile=compile, backend=backend, jobs=jobs,
            )  # fmt: skip
            if profile:
                PROFILE.start()
            started = time.perf_counter()
            size = write_rows(
                engine, weights, recipe, layout, todo, files, key=key, review=review, compress=compress,
                rows_done=rows_done, size=size, n_rows=len(names), chunk_rows=chunk_rows, batch_size=batch_size,
                rle_threads=rle_threads, quiet=quiet,
            )  # fmt: skip
            if profile:
                PROFILE.stop()
                print(PROFILE.report(len(todo), time.perf_counter() - started, usable_cores()))

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


def _finish(files: SubmissionFiles, key, names, size, review, recipe_path, limit, shard, dev, num_workers, start):
    """Validate the part file, write its summary, then rename it into place; returns (summary, check)."""
    check = validate_submission(files.part, names, *size)
    review_csv = review.finish(names, files.out)
    summary = summary_record(
        files.out, key, files.part, stored_path(recipe_path, files.summary), check, size,
        partial=bool(limit) or shard is not None, review=str(review_csv),
        device=str(dev), num_workers=num_workers, seconds_this_run=round(time.time() - start, 1),
    )  # fmt: skip
    # Summary first, then the rename: the summary names the file's hash, so a crash between the
    # two leaves a finished .part (renamed by the next run) and never a stale "complete" claim.
    write_json(files.summary, summary)
    os.replace(files.part, files.out)
    files.progress.unlink(missing_ok=True)
    review.remove()
    return summary, check
