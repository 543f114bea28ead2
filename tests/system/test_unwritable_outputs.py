"""An output that cannot be written (a file where a folder should be, a full disk) is found before the
work, by every stage that writes one."""

from __future__ import annotations

import shutil

from pipeline.stages import submission as submission_mod
from pipeline.stages import submission_files as submission_files_mod
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import run_cli_stderr as _cli


def test_an_output_that_cannot_be_written_is_found_before_the_work(lab, tiny_data, tmp_path, capsys, monkeypatch):
    runs, recipe = lab
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")

    def no_models(*a, **k):
        raise AssertionError("loaded models before checking the output")

    monkeypatch.setattr(submission_mod, "load_members", no_models)
    args = ["--data", tiny_data, "--device", "cpu", "--num-workers", "0", "--recipe", recipe]
    code, err = _cli(capsys, "submission", "--out", blocker / "s.csv.gz", *args)
    assert code == 2 and f"{blocker}: cannot write the submission here" in _one_error_line(err)
    # A disk without room for the rows: refused up front, with the estimate.
    monkeypatch.setattr(
        submission_files_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 1000)
    )
    code, err = _cli(capsys, "submission", "--out", tmp_path / "s.csv.gz", *args)
    assert code == 2 and "MB free, but 16 rows need about" in _one_error_line(err)
    code, err = _cli(capsys, "report", "--runs", runs, "--data", tiny_data, "--out", blocker / "r", "--jobs", "1")
    assert code == 2 and "cannot write the report here" in _one_error_line(err)
    ckpt = runs / "a" / "fold0" / "best.pt"
    code, err = _cli(capsys, "predict", tiny_data / "test", "--out", blocker / "p", "--checkpoint", ckpt)
    assert code == 2 and "cannot write the predictions here" in _one_error_line(err)
