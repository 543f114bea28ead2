"""Resuming a training run (pipeline/stages/train.py): only the run its record describes, in any
precision, never two trainings of one fold at once."""

from __future__ import annotations

import fcntl
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.errors import ResumeError
from pipeline.core.io_utils import read_json
from pipeline.data.folds import load_folds
from pipeline.stages.oof import predict_oof
from pipeline.stages.train import Trainer, run
from tests.conftest import kill_after_first_epoch, tiny_config
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import run_cli_stderr as _cli


def test_a_finished_run_rerun_with_another_setting_is_refused(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 1})
    run(cfg, quiet=True)
    written = (cfg.run_dir / "config.yaml").read_text()
    with pytest.raises(ResumeError, match="train.lr=0.001 \\(now 0.002\\)"):
        run(tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 1, "train.lr": 0.002}), quiet=True)
    assert (cfg.run_dir / "config.yaml").read_text() == written  # its record untouched
    # where things are and how fast they go may change
    Trainer(
        tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 1, "train.num_workers": 1}), quiet=True
    )


@pytest.mark.slow
def test_a_killed_run_resumed_with_another_setting_is_refused(tiny_data, tmp_path):
    from tests.conftest import kill_after_first_epoch

    cfg = tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 3})
    trainer = Trainer(cfg, quiet=True)
    kill_after_first_epoch(trainer)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    with pytest.raises(ResumeError, match="augment.hflip"):
        Trainer(
            tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 3, "augment.hflip": 0.0}), quiet=True
        )
    Trainer(
        tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 3, "augment.hflip": 0.0}),
        fresh=True,
        quiet=True,
    )


def _moved_cars(folds_csv, out):
    """The folds CSV with one car of fold 0 and one of fold 1 swapped (a re-made split)."""
    df = load_folds(folds_csv)
    a, b = df[df.fold == 0].car_id.iloc[0], df[df.fold == 1].car_id.iloc[0]
    df.loc[df.car_id == a, "fold"], df.loc[df.car_id == b, "fold"] = 1, 0
    df.to_csv(out, index=False)
    return out


def test_resume_and_oof_refuse_another_split(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"train.epochs": 1})
    Trainer(cfg, quiet=True).fit()
    other = tiny_config(
        tiny_data, tmp_path / "runs", folds_csv=_moved_cars(tiny_data.parent / "folds.csv", tmp_path / "other.csv")
    )
    other.train.epochs = 1
    with pytest.raises(
        ResumeError, match=r"last.pt: trained on a different split than .*other.csv.*refusing to resume"
    ):
        Trainer(other, quiet=True)
    with pytest.raises(ResumeError, match=r"best.pt: trained on a different split.*refusing to write out-of-fold"):
        predict_oof(other, quiet=True)
    assert not (cfg.run_dir / "oof.json").exists()
    predict_oof(cfg, quiet=True)  # the split it was trained on is fine
    assert read_json(cfg.run_dir / "oof.json")["folds"]["k"] == 3


def test_bad_last_pt_names_the_ways_out(cli):
    run_dir = cli.cfg.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(b"PK\x03\x04 half a checkpoint")
    err = cli("train")
    assert f"{run_dir / 'last.pt'}: unreadable last.pt, truncated or not a torch file" in err
    assert "--fresh" in err and "best.pt" in err
    torch.save({"conv1.weight": torch.zeros(1)}, run_dir / "last.pt")  # a foreign (weights-only) file
    assert "last.pt: not a checkpoint of this pipeline" in cli("train")


def test_a_second_training_of_the_same_fold_stops_and_names_the_holder(tiny_data, tmp_path, capsys):
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    cfg.run_dir.mkdir(parents=True)
    with open(cfg.run_dir.with_name("fold0.lock"), "w") as held:
        held.write("pid 4242 on host gpu7\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        code, err = _cli(capsys, "train", "--config", config)
    line = _one_error_line(err)
    assert code == 2 and f"{cfg.run_dir}: another run is training this fold (pid 4242 on host gpu7" in line
    assert not (cfg.run_dir / "last.pt").exists()


@pytest.mark.slow
def test_a_run_resumes_in_another_precision(tiny_data, tmp_path):
    """train.amp may change on resume: an fp32 run (its GradScaler disabled, saved empty) goes on in fp16."""
    kill_after_first_epoch(Trainer(tiny_config(tiny_data, tmp_path / "runs"), quiet=True))
    resumed = Trainer(tiny_config(tiny_data, tmp_path / "runs", **{"train.amp": "fp16"}), quiet=True)
    assert resumed.epoch == 1 and resumed.scaler.is_enabled()
    resumed.fit()
    assert resumed.finished and np.isfinite(resumed.history[-1]["train_loss"])


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_names_the_file_and_the_run_resumes_from_the_last(tiny_data, tmp_path):
    import os
    import subprocess
    import sys
    import textwrap

    from pipeline.core.identity import file_sha256

    cfg = tiny_config(tiny_data, tmp_path / "runs", fold=0, **{"train.epochs": 2})
    kill_after_first_epoch(Trainer(cfg, quiet=True))
    last = cfg.run_dir / "last.pt"
    before = file_sha256(last)
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.to_yaml())
    # A real short write: past the file-size limit write() fails (EFBIG), as on a full disk, and torch's
    # writer says only "unexpected pos". Half a checkpoint: the logs and history stay under it.
    limit = last.stat().st_size // 2
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pipeline.__main__ import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        sys.exit(main(["train", "--config", {str(config)!r}]))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = _one_error_line(proc.stderr)
    assert f"{cfg.run_dir}/" in error and ".pt: cannot write the checkpoint" in error and "MB free there" in error
    assert "resumes from the last one" in error and "Traceback" not in proc.stderr
    assert file_sha256(last) == before  # epoch 1's checkpoint, whole
    assert not [p.name for p in cfg.run_dir.iterdir() if p.name.endswith(".tmp")]
    run(cfg, quiet=True)  # the same command, with room again, resumes from it and finishes
    assert pd.read_csv(cfg.run_dir / "history.csv").epoch.tolist() == [1, 2]
