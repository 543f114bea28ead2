"""Nothing is written outside an output folder: no stage follows a symbolic link it finds there."""

from __future__ import annotations

import os

from tests.conftest import run_cli as _cli
from tests.conftest import tiny_config


def test_submission_never_writes_through_a_link(lab, tiny_data, tmp_path, capsys):
    _, recipe = lab
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    out = tmp_path / "sub" / "s.csv.gz"
    out.parent.mkdir()
    for aux in (".part", ".review.part"):
        os.symlink(victim, out.with_name(out.name + aux))
    code, _, _ = _cli(capsys, "submission", "--recipe", recipe, "--data", tiny_data, "--out", out, "--device", "cpu")
    assert code == 0 and victim.read_text() == "keep me" and out.is_file()
    lock = tmp_path / "sub" / "t.csv.gz.lock"
    os.symlink(victim, lock)
    code, _, err = _cli(capsys, "submission", "--recipe", recipe, "--data", tiny_data, "--out", lock.with_suffix(""))
    assert code == 2 and "is a symbolic link" in err and victim.read_text() == "keep me"


def test_training_and_predict_never_write_through_a_link(lab, tiny_data, tmp_path, capsys):
    runs, _ = lab
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    cfg = tiny_config(tiny_data, tmp_path / "runs2")
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    cfg.run_dir.parent.mkdir(parents=True)
    os.symlink(victim, cfg.run_dir.with_name("fold0.lock"))
    code, _, err = _cli(capsys, "train", "--config", config)
    assert code == 2 and "fold0.lock: is a symbolic link" in err and victim.read_text() == "keep me"
    out = tmp_path / "pred"
    out.mkdir()
    os.symlink(victim, out / "lineage.jsonl")
    ckpt = runs / "a" / "fold0" / "best.pt"
    code, _, err = _cli(capsys, "predict", tiny_data / "test", "--out", out, "--checkpoint", ckpt, "--device", "cpu")
    assert code == 2 and "lineage.jsonl" in err and victim.read_text() == "keep me"
