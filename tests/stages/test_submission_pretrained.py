"""A submission from an exported model folder (--pretrained): its recipe written once beside the output,
never over a user's file; shards and merge as for a recipe."""

from __future__ import annotations

import pytest

from pipeline.core.io_utils import read_json
from tests.conftest import run_cli as _cli

pytestmark = pytest.mark.slow


def test_submission_from_a_folder_keeps_every_recipe_it_did_not_write(folder, tiny_data, tmp_path, capsys):
    out_dir = tmp_path / "subs"
    out_dir.mkdir()
    mine = out_dir / "recipe-apart.json"
    mine.write_text('{"mine": true}')  # a user's recipe with the folder's name
    argv = ["submission", "--pretrained", folder, "--data", tiny_data, "--out", out_dir / "sub.csv.gz", "--limit", "2"]
    code, _, _ = _cli(capsys, *argv)
    assert code == 0 and mine.read_text() == '{"mine": true}'
    made = list(out_dir.glob("recipe-pretrained-*.json"))
    assert len(made) == 1
    stamp = made[0].stat().st_mtime_ns
    code, _, _ = _cli(capsys, *argv)
    assert code == 0 and made[0].stat().st_mtime_ns == stamp  # written once, then kept
    made[0].write_text('{"members": []}')  # something else at its name: never overwritten
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and "is not the recipe of" in err and made[0].read_text() == '{"members": []}'


def test_recipe_and_pretrained_together_are_refused(folder, tiny_data, tmp_path, capsys):
    photo = next((tiny_data / "test").glob("*.jpg"))
    code, _, err = _cli(
        capsys, "predict", photo, "--pretrained", folder, "--recipe", tmp_path / "r.json", "--out", tmp_path
    )
    assert code == 2 and "--recipe and --pretrained" in err
    code, _, err = _cli(
        capsys, "submission", "--pretrained", folder, "--recipe", tmp_path / "r.json", "--data", tiny_data
    )
    assert code == 2 and "--recipe and --pretrained" in err


def test_merge_after_shards_of_an_exported_model(folder, tiny_data, tmp_path, capsys):
    out = tmp_path / "subs" / "sub.csv.gz"
    for i in (0, 1):
        code, _, _ = _cli(
            capsys, "submission", "--pretrained", folder, "--data", tiny_data, "--out", out, f"--shard={i}/2"
        )
        assert code == 0
    code, _, err = _cli(capsys, "merge", "--data", tiny_data, "--out", out)
    assert code == 0, err
    assert read_json(out.with_name(out.name + ".json"))["rows"] == len(list((tiny_data / "test").glob("*.jpg")))
