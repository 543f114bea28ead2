"""A submission's files: their names (the output, its shards and trials), the rows they list, their
compression, the free space they need, whether one is complete, where a stopped run resumes, and the
summary beside each.

Sharding: ``shard=(i, N)`` computes the contiguous slice ``names[n*i//N : n*(i+1)//N]`` of the
sample order into its own resumable file ``<stem>.shard<i>-of-<N>.csv.gz`` (with the header);
``merge_shards`` (pipeline/stages/merge.py) concatenates the N shard files in order into the final
submission, which is then identical after decompression to a single-process run. Contiguous (not
strided) slices make the merge a plain concatenation.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import shutil
from pathlib import Path

from ..core.identity import file_sha256
from ..core.io_utils import RELATIVE_TO_FILE, open_nofollow, plain_name, read_json, write_json
from ..data.layout import DataError, Layout
from ..inference.review import REVIEW_FEATURES, ReviewSidecar
from ..masks.submission_csv import SubmissionError, read_sample_names

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


def compressor(suffix: str):
    if suffix == ".csv.gz":
        return lambda text: gzip.compress(text.encode(), compresslevel=6)
    return lambda text: text.encode()


def write_all(f, data: bytes) -> None:
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


# -- before and after a run: free space, a finished file, the rows, the resume point, the summary ----
# Measured on the 960 real masks (RLE of every 8th, one CSV row each): 8.7 kB plain, 3.5 kB gzipped
# per row. With a margin for jagged predicted outlines, what the free-space check asks for per row:
ROW_BYTES = {".csv.gz": 4_500, ".csv": 11_000}


def check_space(folder: Path, rows: int, suffix: str) -> None:
    """Found before the work, not after hours of it: the folder must hold about ``rows`` more rows."""
    need = rows * ROW_BYTES[suffix]
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DataError(
            f"{folder}: {free / 1e6:.0f} MB free, but {rows} rows need about {need / 1e6:.0f} MB "
            f"({ROW_BYTES[suffix] / 1e3:.1f} kB per row); free some space or point --out elsewhere"
        )


def complete_summary(out: Path, summary_path: Path, key: dict) -> dict | None:
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


def other_output(out: Path, summary_path: Path, key: dict) -> str:
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


def rows_to_write(layout: Layout, out: Path, shard: tuple[int, int] | None, limit: int | None):
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


class SubmissionFiles:
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


def resume_point(files: SubmissionFiles, key: dict, review: ReviewSidecar, n: int, force: bool, quiet: bool):
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


def summary_record(
    out: Path, key: dict, part: Path, recipe: str | None, check: dict, size, partial: bool, review, **more
) -> dict:
    """What ``<out>.json`` records of a validated ``part`` about to become ``out`` (a submission, a shard, a
    trial or a merge): its key, hash and check, the recipe (stored relative to the summary), and ``more``."""
    width, height = size
    return {
        "file": str(out),
        "key": key,
        "sha256": file_sha256(part, 64),
        "recipe": recipe,
        "paths": RELATIVE_TO_FILE,
        "rows": check["rows"],
        "empty_masks": check["empty_masks"],
        "mean_mask_area": round(check["mean_mask_area"], 5),
        "width": width,
        "height": height,
        "partial": partial,
        "review": review,
        **more,
    }


SHARD_RE = r"\.shard(\d+)-of-(\d+)"


def find_shards(out: Path) -> dict[int, dict[int, Path]]:
    """{N: {i: path}} of the files ``<stem>.shard<i>-of-<N><suffix>`` beside ``out``."""
    stem, suffix = split_suffix(out)
    pattern = re.compile(re.escape(stem) + SHARD_RE + re.escape(suffix))
    found: dict[int, dict[int, Path]] = {}
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                found.setdefault(int(m[2]), {})[int(m[1])] = p
    return found
