"""A project copied elsewhere and used from another working directory keeps every link."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli as _cli

pytestmark = pytest.mark.slow


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime: what "nothing was written there" compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_a_copied_project_used_from_another_folder_keeps_every_link(lab, tiny_data, tmp_path, capsys, monkeypatch):
    runs, recipe = lab
    project = tmp_path / "copy" / "project"  # runs/ and submissions/ side by side, as a clone has them
    shutil.copytree(runs, project / "runs")
    shutil.copytree(tiny_data, project / "data")
    (project / "submissions").mkdir()
    from pipeline.stages.ensemble import tune

    monkeypatch.chdir(project)
    tune("runs", "data", "submissions/recipe.json", steps=2, n_jobs=1, quiet=True, allow_incomplete=True)
    moved = tmp_path / "attached"  # the project copied again, then used read-only from elsewhere
    shutil.copytree(project, moved)
    work = tmp_path / "working"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _tree(moved)
    r = moved / "submissions" / "recipe.json"
    code, _, err = _cli(capsys, "submission", "--recipe", r, "--data", moved / "data", "--out", work / "s.csv.gz")
    assert code == 0, err
    code, out, _ = _cli(capsys, "lineage", work / "s.csv.gz")
    assert code == 0 and "BROKEN" not in out and "all" in out
    code, _, _ = _cli(
        capsys, "report", "--runs", moved / "runs", "--data", moved / "data", "--recipe", r, "--out", work / "rep",
        "--jobs", "1", "--worst", "1",
    )  # fmt: skip
    page = (work / "rep" / "index.html").read_text()
    assert code == 0 and "<td>blend</td>" in page and "left out" not in page
    assert _tree(moved) == before  # nothing written into the attached project
