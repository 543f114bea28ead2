"""Merge a sharded submission: the N shard files, each complete and of one source, concatenated in
sample order into the submission and validated (the shards: pipeline/stages/submission_files.py).
"""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

from ..core.io_utils import (
    OutputLock,
    check_writable,
    fresh_file,
    open_nofollow,
    os_error_message,
    read_json,
    stored_path,
    write_json,
)
from ..data.layout import DataError, Layout
from ..inference.review import merge_reviews, review_path
from ..lineage.provenance import load_recipe, rows_source, submission_key, summary_recipe
from ..masks.submission_csv import SubmissionError, validate_submission
from .submission_files import (
    HEADER,
    SubmissionFiles,
    check_space,
    complete_summary,
    compressor,
    find_shards,
    shard_slice,
    split_suffix,
    summary_record,
    test_names,
    write_all,
)

_SOURCE_KEYS = ("recipe", "checkpoints", "precision", "backend")


def merge_shards(
    data_dir: str | Path,
    out: str | Path,
    *,
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
    found = find_shards(out)
    if not found and shards_of is not None:
        source = Path(shards_of)
        found = find_shards(source)
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
    summaries, summary_paths = [], [SubmissionFiles(shards[i]).summary for i in range(count)]
    for i in range(count):
        path, summary_path = shards[i], summary_paths[i]
        part_names = names[shard_slice(len(names), i, count)]
        info = read_json(summary_path) if summary_path.is_file() else {}
        recorded = info.get("key") if isinstance(info.get("key"), dict) else {}
        rows = submission_key(
            {k: recorded.get(k) for k in _SOURCE_KEYS},
            part_names,
            [layout.test_dir / n for n in part_names],
            f"{i}/{count}",
        )
        if complete_summary(path, summary_path, rows) is None:
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
    recorded_recipe = summary_recipe(summaries[0], summary_paths[0])
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
    files = SubmissionFiles(out)
    summary_path, part = files.summary, files.part
    compress = compressor(suffix)
    check_writable(out.parent, "submission")
    with OutputLock(out):
        if out.exists() and not force and complete_summary(out, summary_path, key) is None:
            previous = read_json(summary_path) if summary_path.is_file() else {}
            if previous.get("key", {}).get("sample") is not None:  # a finished submission of another source
                raise SubmissionError(
                    f"{out}: a complete submission made from another recipe or checkpoints is there; refusing to "
                    "replace it with these shards. Merge into another --out, or --force to replace it"
                )
        check_space(out.parent, len(names), suffix)
        try:
            fresh_file(part)  # never through a link standing at the .part's name
            with open_nofollow(part, "ab") as f:
                write_all(f, compress(HEADER))
                for i in range(count):
                    opener = gzip.open if source_suffix == ".csv.gz" else open
                    with opener(shards[i], "rt", newline="") as src:
                        header = src.readline()
                        if header != HEADER:
                            raise SubmissionError(f"{shards[i]}: header {header!r}, expected {HEADER!r}")
                        while block := src.read(1 << 22):
                            write_all(f, compress(block))
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
        summary = summary_record(
            out, key, part, stored_path(recorded_recipe, summary_path) if recorded_recipe else None, check,
            (width, height), partial=False, review=review_csv,
            merged_from=[str(shards[i]) for i in range(count)], seconds_this_run=round(time.time() - start, 1),
        )  # fmt: skip
        write_json(summary_path, summary)
        os.replace(part, out)
    if not quiet:
        print(
            f"{out}: {check['rows']} rows merged from {count} shards, validated ({check['empty_masks']} empty masks, "
            f"mean car area {check['mean_mask_area']:.3f})"
        )
    return summary
