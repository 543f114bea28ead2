"""make bench: every figure reaches bench.json as soon as it is measured, even when a later one fails."""

import json

import pytest

from pipeline.stages.bench import main


def test_a_failing_figure_keeps_the_ones_before_it(tiny_data, tmp_path):
    out = tmp_path / "bench.json"
    args = ["--data", str(tiny_data), "--out", str(out), "--figures", "1,2", "--images", "4", "--workers", "0"]
    with pytest.raises(SystemExit, match="host_ratio failed"):
        main(args + ["--size", "0x48"])  # figure 2 cannot resize to height 0
    res = json.loads(out.read_text())
    assert res["rle_speedup"] > 0 and "resize" in res["error_host_ratio"]
    main(args + ["--size", "32x48"])  # figure 2 on its own succeeds (on this machine's device)
    res = json.loads(out.read_text())
    assert res["host_ratio"] > 0 and "error_host_ratio" not in res
