"""The submission file's format (pipeline/masks/submission_csv.py): the validator names the bad row,
the file's name and content must agree."""

from __future__ import annotations

import gzip

import pytest

from pipeline.data.folds import load_folds
from pipeline.data.layout import DataError
from pipeline.masks.submission_csv import SubmissionError, read_sample_names, validate_submission
from tests.conftest import copy_data as _copy


def test_csv_name_and_content_must_agree(tiny_data, tmp_path):
    names = ["a.jpg", "b.jpg"]
    text = "img,rle_mask\na.jpg,1 2\nb.jpg,\n"
    gz_named_csv = tmp_path / "s.csv"
    gz_named_csv.write_bytes(gzip.compress(text.encode()))
    plain_named_gz = tmp_path / "s.csv.gz"
    plain_named_gz.write_text(text)
    with pytest.raises(SubmissionError, match=r"s.csv: named .csv but holds gzip-compressed data"):
        validate_submission(gz_named_csv, names, 4, 2)
    with pytest.raises(SubmissionError, match=r"s.csv.gz: named .gz but not gzip data"):
        validate_submission(plain_named_gz, names, 4, 2)
    part = tmp_path / "s.csv.gz.part"  # the submission's partial file goes by content
    part.write_bytes(gzip.compress(text.encode()))
    assert validate_submission(part, names, 4, 2)["rows"] == 2
    folds = tmp_path / "folds.csv"
    folds.write_bytes(gzip.compress((tiny_data.parent / "folds.csv").read_bytes()))
    with pytest.raises(DataError, match="folds.csv: named .csv but holds gzip"):
        load_folds(folds)
    sample = tmp_path / "sample_submission.csv"
    sample.write_bytes(gzip.compress(b"img,rle_mask\na.jpg,1 1\n"))
    with pytest.raises(SubmissionError, match="sample_submission.csv: named .csv but holds gzip"):
        read_sample_names(sample)


def test_validator_names_the_bad_row(tmp_path):
    names = ["a.jpg", "b.jpg", "c.jpg"]

    def write(rows):
        p = tmp_path / "s.csv.gz"
        with gzip.open(p, "wt") as f:
            f.write("img,rle_mask\n" + "".join(f"{a},{b}\n" for a, b in rows))
        return p

    assert validate_submission(write([("a.jpg", "1 2"), ("b.jpg", ""), ("c.jpg", "5 1")]), names, 4, 2)["rows"] == 3
    with pytest.raises(SubmissionError, match=r"row 3: image 'c.jpg', expected 'b.jpg'"):
        validate_submission(write([("a.jpg", "1 2"), ("c.jpg", ""), ("b.jpg", "")]), names, 4, 2)
    with pytest.raises(SubmissionError, match=r"row 4 \(c.jpg\).*beyond"):
        validate_submission(write([("a.jpg", "1 2"), ("b.jpg", ""), ("c.jpg", "8 2")]), names, 4, 2)
    with pytest.raises(SubmissionError, match="2 rows, expected 3"):
        validate_submission(write([("a.jpg", "1 2"), ("b.jpg", "")]), names, 4, 2)


def test_validate_errors(cli, tiny_data, tmp_path):
    data = _copy(tiny_data, tmp_path)
    names = read_sample_names(data / "sample_submission.csv")
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"img,rle_mask\n\xff\xfe\x00\x00binary\x00junk\n")
    assert f"{junk}: unreadable as a CSV" in cli("validate", junk, "--data", data)
    huge = tmp_path / "huge.csv"
    huge.write_text("img,rle_mask\n" + "".join(f"{n},{'9' * 30} 1\n" for n in names))
    assert f"{huge}: row 2 ({names[0]}): RLE value 9999" in cli("validate", huge, "--data", data)
    beyond = tmp_path / "beyond.csv"
    beyond.write_text("img,rle_mask\n" + "".join(f"{n},1 999999\n" for n in names))
    assert "row 2" in cli("validate", beyond, "--data", data)
    (data / "sample_submission.csv").write_text("img,rle_mask\n")
    assert "sample_submission.csv: no rows after the header" in cli("validate", huge, "--data", data)
