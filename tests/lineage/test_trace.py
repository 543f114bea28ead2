"""`python -m pipeline lineage FILE` (pipeline/lineage/trace.py): what each file is, and which links hold."""

from __future__ import annotations

import gzip
import json

import pytest

from pipeline.stages.submission import make_submission
from tests.conftest import edit_pipeline_json as _edit
from tests.conftest import run_cli as _cli


def test_lineage_says_what_each_file_of_the_pipeline_is(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    out = tmp_path / "s.csv.gz"
    make_submission(recipe, tiny_data, out, device="cpu", num_workers=0, quiet=True)
    folds_gz = tmp_path / "folds.csv.gz"
    folds_gz.write_bytes(gzip.compress((tiny_data.parent / "folds.csv").read_bytes()))
    part = tmp_path / "t.csv.gz.part"
    part.write_bytes(b"")
    cases = {
        out.with_name(out.name + ".json"): "the summary of submission s.csv.gz",
        runs / "a" / "fold0" / "oof" / "source.json": "the record of what made the out-of-fold maps",
        part: "an unfinished submission",
        folds_gz: "group integrity",
    }
    for path, expected in cases.items():
        code, printed, _ = _cli(capsys, "lineage", path)
        assert code == 0 and expected in printed, (path, printed)
    code, _, err = _cli(capsys, "lineage", runs / "a")
    assert code == 2 and "a folder; give one of its files" in err
    bogus = tmp_path / "x.json"
    bogus.mkdir()
    code, _, err = _cli(capsys, "lineage", bogus)
    assert code == 2 and "a folder" in err


@pytest.mark.slow
def test_lineage_says_when_a_folder_s_settings_are_not_what_its_figures_measured(folder, capsys):
    recorded = json.loads((folder / "pipeline.json").read_text())["source"]["recipe"]
    code, out, _ = _cli(capsys, "lineage", folder)
    assert code == 0 and "stands for it" in out and "other settings" not in out
    _edit(folder, lambda spec: spec.update(postprocess=["remove_far_blobs", *recorded["postprocess"]]))
    code, out, _ = _cli(capsys, "lineage", folder)
    assert code == 0 and "measured it with other settings (postprocess" in out and "stands for it" not in out
