"""Out-of-fold maps (pipeline/stages/oof.py): re-predicted for a new model, never kept from an old one."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.core.identity import file_sha256
from pipeline.core.io_utils import read_json
from pipeline.stages.train import run
from tests.conftest import tiny_config


@pytest.mark.slow
def test_fresh_repredicts_out_of_fold_maps(tiny_data, tmp_path):
    """--fresh with another seed leaves the new model's maps, not the old ones (only missing maps were predicted)."""
    old = run(tiny_config(tiny_data, tmp_path / "x", seed=1), quiet=True)
    new = run(tiny_config(tiny_data, tmp_path / "x", seed=2), fresh=True, quiet=True)
    clean = run(tiny_config(tiny_data, tmp_path / "y", seed=2), quiet=True)  # the same run, never trained before
    x, y = tmp_path / "x" / "tiny" / "fold0", tmp_path / "y" / "tiny" / "fold0"
    pngs = sorted(p.name for p in (y / "oof").glob("*.png"))
    assert len(pngs) == 32 and sorted(p.name for p in (x / "oof").glob("*.png")) == pngs
    for name in pngs:
        assert np.array_equal(cv2.imread(str(x / "oof" / name), -1), cv2.imread(str(y / "oof" / name), -1)), name
    assert new["mean_dice"] == clean["mean_dice"] and new["checkpoint_sha256"] != old["checkpoint_sha256"]
    assert read_json(x / "oof.json")["checkpoint_sha256"] == file_sha256(x / "best.pt")
