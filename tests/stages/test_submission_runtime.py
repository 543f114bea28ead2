"""The submission on a CPU: the runtime line at start, --jobs, --profile's step table, the key per runtime."""

from __future__ import annotations

import pytest

from pipeline.core.io_utils import read_json
from pipeline.inference import backends
from tests.conftest import run_cli


def _submission(tiny_runs, tiny_data, out, *extra):
    _, recipe = tiny_runs
    return ["submission", "--recipe", recipe, "--data", tiny_data, "--out", out, *extra]


@pytest.mark.slow
def test_the_submission_says_which_runtime_and_precision_it_uses(tiny_runs, tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(backends, "cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))  # a CPU without bf16
    code, out, _ = run_cli(capsys, *_submission(tiny_runs, tiny_data, tmp_path / "s.csv.gz", "--limit", "3"))
    assert code == 0
    assert "inference: OpenVINO fp32 on the CPU" in out and "no bfloat16 instructions" in out
    key = read_json(tmp_path / "s.limit3-trial.csv.gz.json")["key"]
    assert (key["backend"], key["precision"]) == ("openvino", "fp32")
    code, out, _ = run_cli(
        capsys, *_submission(tiny_runs, tiny_data, tmp_path / "t.csv.gz", "--limit", "3", "--precision", "fp32")
    )
    assert code == 0 and "inference: PyTorch fp32 on cpu" in out
    key = read_json(tmp_path / "t.limit3-trial.csv.gz.json")["key"]
    assert (key["backend"], key["precision"]) == ("torch", "fp32")


@pytest.mark.slow
def test_profile_prints_where_the_time_went(tiny_runs, tiny_data, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys, *_submission(tiny_runs, tiny_data, tmp_path / "s.csv.gz", "--limit", "4", "--profile", "--jobs", "2")
    )
    assert code == 0
    table = out[out.index("step") :]
    for step in ("network 32x48", "decode at the model's size", "probabilities to the photo's size", "RLE"):
        assert step in table, step
    assert "4 photos in" in table and "photos/s" in table


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_jobs_below_one_are_refused(tiny_runs, tiny_data, tmp_path, capsys, jobs):
    code, _, err = run_cli(capsys, *_submission(tiny_runs, tiny_data, tmp_path / "s.csv.gz", "--jobs", jobs))
    assert code == 2 and "--jobs" in err
