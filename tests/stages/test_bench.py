"""`python -m pipeline bench` (make bench): every figure reaches bench.json as soon as it is measured, even
when a later one fails."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def test_a_failing_figure_keeps_the_ones_before_it(tiny_data, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--data", str(tiny_data), "--out", str(out), "--figures", "1,2", "--images", "4"]
    args += ["--num-workers", "0"]
    with pytest.raises(SystemExit, match="host_ratio failed"):
        main(args + ["--size", "0x48"])  # figure 2 cannot resize to height 0
    res = json.loads(out.read_text())
    assert res["rle_speedup"] > 0 and "resize" in res["error_host_ratio"]
    assert main(args + ["--size", "32x48"]) == 0  # figure 2 on its own succeeds (on this machine's device)
    res = json.loads(out.read_text())
    assert res["host_ratio"] > 0 and "error_host_ratio" not in res
    assert res["command"].startswith("python -m pipeline bench --data ") and "--size 32x48" in res["command"]


@pytest.mark.slow
def test_the_module_spelling_still_runs_the_stage():
    """`python -m pipeline.stages.bench` (before bench was a stage) hands over to `python -m pipeline bench`."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.bench", "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "usage: python -m pipeline bench" in done.stdout
    assert "python -m pipeline.stages.bench is now python -m pipeline bench" in done.stderr
