"""Validate a submission file against ``sample_submission.csv`` without loading it whole."""

from __future__ import annotations

import csv
import gzip
import sys
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import PipelineError
from ..core.io_utils import check_csv_name
from .rle import RLEError, parse


class SubmissionError(PipelineError, ValueError):
    pass


def read_sample_names(sample_csv: str | Path) -> list[str]:
    sample_csv = Path(sample_csv)
    if not sample_csv.is_file():
        raise SubmissionError(f"{sample_csv}: not found")
    try:
        with submission_rows(sample_csv) as reader:
            names = [row[0] for row in reader if row]
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise SubmissionError(f"{sample_csv}: unreadable as a CSV ({str(e)[:120]})") from None
    if not names:
        raise SubmissionError(f"{sample_csv}: no rows after the header; expected one row per test image")
    if len(set(names)) != len(names):
        raise SubmissionError(f"{sample_csv}: duplicate image names")
    return names


def open_csv(path: Path):
    # By name for .csv / .csv.gz (a disagreeing content is refused); by content otherwise (".part").
    gzipped = check_csv_name(path, SubmissionError) == "gzip"
    return gzip.open(path, "rt", newline="") if gzipped else open(path, newline="")


@contextmanager
def submission_rows(path: Path):
    """A csv.reader over an ``img,rle_mask`` file (see open_csv), past its checked header."""
    csv.field_size_limit(sys.maxsize)  # one RLE can be longer than csv's default field limit
    with open_csv(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["img", "rle_mask"]:
            raise SubmissionError(f"{path}: header {header}, expected ['img', 'rle_mask']")
        yield reader


def validate_submission(path: str | Path, names: list[str], width: int, height: int) -> dict:
    """Check header, names and order (== sample), row count, and every RLE (well-formed, in bounds).

    Streams the file; raises SubmissionError naming the row and image of the first problem.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: not found")
    n_pixels = width * height
    empty = 0
    pixels = 0
    try:
        with submission_rows(path) as reader:
            i = -1
            for i, row in enumerate(reader):
                where = f"{path}: row {i + 2}"
                if i >= len(names):
                    raise SubmissionError(f"{where}: more rows than the {len(names)} in sample_submission.csv")
                if len(row) != 2:
                    raise SubmissionError(f"{where}: {len(row)} fields, expected 2 (img,rle_mask)")
                if row[0] != names[i]:
                    raise SubmissionError(f"{where}: image {row[0]!r}, expected {names[i]!r} (sample order)")
                try:
                    runs = parse(row[1], n_pixels)
                except RLEError as e:
                    raise SubmissionError(f"{where} ({row[0]}): {e}") from None
                if len(runs) == 0:
                    empty += 1
                pixels += int(runs[:, 1].sum())
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, csv.Error) as e:
        # binary junk: bytes that are not UTF-8 text, NUL bytes, a broken gzip stream
        raise SubmissionError(f"{path}: unreadable as a CSV ({str(e)[:120]})") from None
    if i + 1 != len(names):
        raise SubmissionError(f"{path}: {i + 1} rows, expected {len(names)} (sample_submission.csv)")
    return {"rows": i + 1, "empty_masks": empty, "mean_mask_area": pixels / max(1, i + 1) / n_pixels}
