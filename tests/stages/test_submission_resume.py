"""A submission resumes where it stopped (pipeline/stages/submission.py), and never mixes rows of two
models or loses rows already written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.core.errors import LineageError
from pipeline.core.identity import file_sha256
from pipeline.core.io_utils import read_json, write_json
from pipeline.masks.submission_csv import read_sample_names
from pipeline.stages import row_writer as row_writer_mod
from tests.conftest import csv_rows as _rows
from tests.conftest import retrain_stand_in as _retrain
from tests.conftest import tiny_submission as _sub

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_resume_after_a_checkpoint_changed_never_mixes_rows(lab, tiny_data, tmp_path, monkeypatch):
    runs, recipe = lab
    names = read_sample_names(tiny_data / "sample_submission.csv")
    out = tmp_path / "s.csv.gz"
    real_row = row_writer_mod._row

    def dying_row(name, mask, recipe, photo=None, **how):
        if name == names[7]:
            raise KeyboardInterrupt
        return real_row(name, mask, recipe, photo, **how)

    monkeypatch.setattr(row_writer_mod, "_row", dying_row)
    with pytest.raises(KeyboardInterrupt):
        _sub(recipe, tiny_data, out)
    monkeypatch.setattr(row_writer_mod, "_row", real_row)
    assert read_json(out.with_name(out.name + ".progress.json"))["rows"] == 7
    ckpt = runs / "b" / "fold0" / "best.pt"
    _retrain(ckpt)
    with pytest.raises(LineageError, match="b/fold0/best.pt changed since the recipe was tuned"):
        _sub(recipe, tiny_data, out)  # used to resume: 7 rows of the old model, 9 of the new one
    # The user re-tunes (the recipe now names the new checkpoint): the resume starts over.
    spec = json.loads(recipe.read_text())
    for m in spec["members"]:
        m["checkpoint_sha256"] = [file_sha256(recipe.parent / c) for c in m["checkpoints"]]  # stored relative
    write_json(recipe, spec)
    _sub(recipe, tiny_data, out)
    clean = tmp_path / "clean.csv.gz"
    _sub(recipe, tiny_data, clean)
    assert _rows(out) == _rows(clean)


@pytest.mark.slow
def test_a_full_disk_mid_run_keeps_the_rows_written_and_names_the_file(lab, tiny_data, tmp_path):
    _, recipe = lab
    out = tmp_path / "s.csv.gz"
    # A real write failure: the file-size limit makes write() fail with EFBIG once the .part passes it.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pipeline.stages import submission
        from pipeline.core.errors import PipelineError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (700, 700))
        try:
            submission.make_submission({str(recipe)!r}, {str(tiny_data)!r}, {str(out)!r}, device="cpu",
                                       num_workers=0, chunk_rows=2, quiet=True)
        except PipelineError as e:
            print(e)
            sys.exit(2)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    part = out.with_name(out.name + ".part")
    assert f"{part}: cannot write" in proc.stdout and "rows written so far are kept" in proc.stdout
    kept = read_json(out.with_name(out.name + ".progress.json"))["rows"]
    assert 0 < kept < 16
    calls = []
    real = row_writer_mod._row
    row_writer_mod._row = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        _sub(recipe, tiny_data, out, chunk_rows=2)  # resumes after the rows on disk
    finally:
        row_writer_mod._row = real
    assert len(calls) == 16 - kept
    _sub(recipe, tiny_data, tmp_path / "clean.csv.gz")
    assert _rows(out) == _rows(tmp_path / "clean.csv.gz")
