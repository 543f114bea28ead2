"""Shared fixtures: a tiny generated dataset in the Kaggle layout (96x64 images) and a tiny config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.core.config import load_config
from pipeline.data.demo_data import generate
from pipeline.data.folds import load_folds, make_folds

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL = SHARED / "data" / "carvana_real"
WEIGHTS = SHARED / "weights"

W, H = 96, 64

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Test workers run side by side (make test: one per core): one torch thread each, and for the
    # processes tests start, or the threads oversubscribe the cores and thrash.
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``python -m pipeline ARGV`` run in this process; never a traceback."""
    from pipeline.__main__ import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, out.out, out.err


def needs_real_data():
    """A test of the real Carvana sample: marked real_data, and skipped, saying why, where ../shared lacks it."""
    skip = pytest.mark.skipif(not REAL.is_dir(), reason=f"real Carvana sample not found at {REAL} (../shared)")
    return lambda test: pytest.mark.real_data(skip(test))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """6 train cars + 1 test car, 16 views each, 96x64 JPEG + GIF masks, folds k=3."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    generate(root, n_train_cars=6, n_test_cars=1, width=W, height=H, seed=7, n_jobs=1)
    make_folds(root, root.parent / "folds.csv", k=3, seed=0, n_jobs=1)
    return root


def tiny_config(data: Path, runs: Path, **over):
    base = [
        f"data_dir={data}",
        f"folds_csv={data.parent / 'folds.csv'}",
        f"runs_dir={runs}",
        "name=tiny",
        "device=cpu",
        "model.encoder=tu-mobilenetv3_small_050",  # 4 MB checkpoints: tests train and load many
        "model.encoder_weights=none",
        "model.decoder_channels=[16,8,8,8,8]",
        "image.height=32",
        "image.width=48",
        "train.epochs=2",
        "train.batch_size=4",
        "train.steps_per_epoch=2",
        "train.num_workers=0",
        "train.lr=0.001",
        "train.early_stopping=0",
        "predict.num_workers=0",
        "predict.batch_size=4",
    ]
    return load_config(None, base + [f"{k}={v}" for k, v in over.items()])


@pytest.fixture(scope="session")
def tiny_runs(tiny_data, tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny members trained on fold 0 only, and their ensemble recipe: (runs dir, recipe path)."""
    from pipeline.stages.ensemble import tune
    from pipeline.stages.train import run

    root = tmp_path_factory.mktemp("tiny_runs")
    runs = root / "runs"
    for name, over in {"a": {}, "b": {"model.decoder_channels": "[8,8,8,8,8]", "predict.tta": "[]"}}.items():
        run(tiny_config(tiny_data, runs, name=name, fold=0, **over), quiet=True)
    recipe = root / "recipe.json"
    # fold 0 only; no post-processing: what the tiny maps would favour depends on threads and CPU
    tune(runs, tiny_data, recipe, steps=2, n_jobs=1, quiet=True, allow_incomplete=True, postprocess_steps="none")
    return runs, recipe


# -- lineage-complete stand-ins for trained runs and recipes (pipeline/lineage/provenance.py) ---------------
def kill_after_first_epoch(trainer) -> None:
    """Run ``trainer.fit()`` as if the process were killed right after epoch 1's checkpoint and history."""
    real = trainer._write_history

    def killed():
        real()
        raise KeyboardInterrupt

    trainer._write_history = killed
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def fake_fold(runs: Path, name: str, fold: int, images, maps, tta=(), height=32, width=48, k=None, folds_sha=None):
    """``runs/<name>/fold<k>/`` as training leaves it: a best.pt, the uint8 maps, oof_dice.csv, oof.json.

    The best.pt is a stand-in (bytes, not a model): what binds the maps to it is its content hash.
    """
    import cv2
    import pandas as pd
    import torch

    from pipeline.core.identity import file_sha256
    from pipeline.core.io_utils import write_json

    run = runs / name / f"fold{fold}"
    (run / "oof").mkdir(parents=True)
    # A stand-in checkpoint (no weights): what binds the maps to it is its content hash, and its config
    # says the input size the oof.json repeats.
    stand_in = {"config": {"name": name, "fold": fold, "image": {"height": height, "width": width}}, "model": {}}
    torch.save(stand_in, run / "best.pt")
    for img, q in zip(images, maps):
        cv2.imwrite(str(run / "oof" / f"{Path(img).stem}.png"), q)
    pd.DataFrame({"img": list(images), "dice": 0.0}).to_csv(run / "oof_dice.csv", index=False)
    info = {
        "name": name,
        "fold": fold,
        "threshold": 128,
        "tta": list(tta),
        "height": height,
        "width": width,
        "checkpoint": "best.pt",
        "checkpoint_sha256": file_sha256(run / "best.pt"),
    }
    if k:
        info["folds"] = {"folds_sha": folds_sha or "s", "fold_sha": str(fold), "k": k}
    # What made the maps, as oof.py records it beside them (every reader checks oof.json agrees).
    source = {"checkpoint_sha256": info["checkpoint_sha256"], "tta": list(tta), "fold_sha": str(fold)}
    write_json(run / "oof" / "source.json", source)
    write_json(run / "oof.json", info)
    return run


def fake_recipe(path: Path, runs: Path, weights: dict[str, int], threshold: int = 128, **over) -> Path:
    """A complete recipe over the completed folds of the fake runs, with the given weights."""
    from pipeline.core.io_utils import write_json
    from pipeline.lineage.provenance import recipe_fold
    from pipeline.lineage.runs import discover

    found = discover(runs, list(weights), allow_incomplete=True, quiet=True)
    members = []
    for name, w in weights.items():
        lineage = [recipe_fold(Path(f["run_dir"]), f) for f in found[name]]
        members.append(
            {
                "name": name,
                "weight": w,
                "folds": [f["fold"] for f in found[name]],
                "checkpoints": [rf["checkpoint"] for rf in lineage],
                "checkpoint_sha256": [rf["checkpoint_sha256"] for rf in lineage],
                "oof_sha256": [rf["oof_sha256"] for rf in lineage],
                "tta": found[name][0]["tta"],
                "height": found[name][0]["height"],
                "width": found[name][0]["width"],
            }
        )
    write_json(path, {"format": 2, "runs_dir": str(runs), "threshold": threshold, "members": members, **over})
    return path


def write_recipe(path: Path, members: list[dict], threshold: int = 128, **over) -> Path:
    """A recipe over real checkpoint files given per member, with their content hashes filled in, and the
    hashes of the out-of-fold summaries beside them (a stand-in oof.json where a checkpoint has none:
    submission and predict check the summary a recipe was tuned on)."""
    from pipeline.core.identity import file_sha256
    from pipeline.core.io_utils import write_json

    for m in members:
        for c in m["checkpoints"]:
            oof = Path(c).parent / "oof.json"
            if not oof.is_file():
                write_json(oof, {"stand_in": "the out-of-fold summary of a hand-made recipe's checkpoints"})
    full = [
        {
            **m,
            "checkpoint_sha256": [file_sha256(c) for c in m["checkpoints"]],
            "oof_sha256": [file_sha256(Path(c).parent / "oof.json") for c in m["checkpoints"]],
        }
        for m in members
    ]
    write_json(path, {"format": 2, "threshold": threshold, "members": full, **over})
    return path


def tiny_test_split(tiny_data: Path, path: Path, n: int = 2) -> frozenset[str]:
    """The first n cars of the tiny folds' fold 0 and 1 as a test split (one car of each)."""
    import pandas as pd

    folds = load_folds(tiny_data.parent / "folds.csv")
    cars = [sorted(folds[folds.fold == f].car_id.unique())[0] for f in range(n)]
    pd.DataFrame({"car_id": cars}).to_csv(path, index=False)
    return frozenset(cars)


@pytest.fixture(scope="session")
def split_model(tiny_data, tmp_path_factory):
    """A tiny member trained with a test split (folds 0 and 1, and full), exported with the recipe of its
    folds, and the same without a test split: (test split, folder kept apart, folder that saw them)."""
    from pipeline.stages.ensemble import tune
    from pipeline.stages.export import export_model
    from pipeline.stages.train import run

    root = tmp_path_factory.mktemp("split_model")
    split = root / "test_split.csv"
    tiny_test_split(tiny_data, split)
    folders = []
    for name, over in (("apart", {"test_split": str(split)}), ("saw", {})):
        runs = root / name / "runs"
        for fold in (0, 1, "full"):
            run(tiny_config(tiny_data, runs, name=name, fold=fold, **over), quiet=True)
        recipe = root / name / "recipe.json"
        tune(runs, tiny_data, recipe, steps=1, n_jobs=1, quiet=True, allow_incomplete=True, postprocess_steps="none")
        folder = root / name / "model"
        export_model(runs / name / "full" / "final.pt", folder, recipe=recipe, dtype="fp32", quiet=True)
        folders.append(folder)
    return split, *folders


# -- shared by the tests of several modules ---------------------------------------------------------------
@pytest.fixture
def lab(tiny_runs, tmp_path):
    """A private copy of the two tiny trained members (fold 0) and their recipe: (runs, recipe)."""
    import shutil

    runs, recipe = tiny_runs
    shutil.copytree(runs, tmp_path / "runs")
    shutil.copy(recipe, tmp_path / "recipe.json")  # its paths are relative to its folder: the copy holds
    return tmp_path / "runs", tmp_path / "recipe.json"


@pytest.fixture
def folder(split_model, tmp_path):
    """A private copy of the tiny model folder trained apart from its test split (its record lists its cars)."""
    import shutil

    _, apart, _ = split_model
    shutil.copytree(apart, tmp_path / "model")
    return tmp_path / "model"


def edit_pipeline_json(folder: Path, change) -> None:
    """Apply ``change(spec)`` to a model folder's pipeline.json."""
    import json

    spec = json.loads((folder / "pipeline.json").read_text())
    change(spec)
    (folder / "pipeline.json").write_text(json.dumps(spec))


def run_cli_stderr(capsys, *argv) -> tuple[int, str]:
    """(exit status, stderr) of the command line; what it printed stays in ``run_cli_stderr.out``."""
    from pipeline.__main__ import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    run_cli_stderr.out = captured.out
    return code, captured.err


def one_error_line(err: str) -> str:
    """The one ``error: ...`` line of a stage's stderr (progress bars may surround it)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def cli(tiny_data, tmp_path, capsys):
    """Run the CLI; return (exit code, stderr) and check the error is short and traceback-free."""
    from pipeline.__main__ import main

    cfg = tiny_config(tiny_data, tmp_path / "runs")
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.to_yaml())

    def call(*argv, lines=1):
        argv = [str(a) for a in argv]
        if argv[0] == "train":
            argv = ["train", "--config", str(config), *argv[1:]]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        out = err.splitlines()  # progress bars (tqdm, on stderr) may come before the error
        starts = [i for i, line in enumerate(out) if line.startswith("error: ")]
        assert len(starts) == 1 and len(out) - starts[0] <= lines, err
        return "\n".join(out[starts[0] :])

    call.cfg = cfg
    return call


def copy_data(tiny_data: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny data root (and its folds.csv beside it): tmp_path/data."""
    import shutil

    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    shutil.copy(tiny_data.parent / "folds.csv", tmp_path / "folds.csv")
    return dst


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def first_train_image(data: Path) -> Path:
    return sorted((data / "train").iterdir())[0]


def retrain_stand_in(ckpt: Path) -> None:
    """Stand-in for a retrained (or replaced) fold: same config, other weights."""
    import torch

    state = torch.load(ckpt, weights_only=True)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] = state["model"][first] + 0.5
    torch.save(state, ckpt)


def tiny_submission(recipe, data, out, **kw):
    """make_submission on the CPU, quietly, in chunks of 3 rows (so resumes have something to resume)."""
    from pipeline.stages.submission import make_submission

    return make_submission(recipe, data, out, device="cpu", num_workers=0, quiet=True, **{"chunk_rows": 3, **kw})


def csv_rows(path: Path) -> list[list[str]]:
    """The rows of a CSV, gzip-compressed or not (header included)."""
    import csv
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return list(csv.reader(f))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a process group's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- make serve: a tiny exported model and a real server on loopback ------------------------------------
@pytest.fixture(scope="session")
def served_model(tiny_data, tmp_path_factory) -> Path:
    """A tiny model trained on every car and exported as a model folder (fp32, no recipe: threshold 128)."""
    from pipeline.stages.export import export_model
    from pipeline.stages.train import run

    runs = tmp_path_factory.mktemp("served_model") / "runs"
    run(tiny_config(tiny_data, runs, name="served", fold="full"), quiet=True)
    folder = runs.parent / "model"
    export_model(runs / "served" / "full" / "final.pt", folder, dtype="fp32", name="served", quiet=True)
    return folder


class ServerProcess:
    """``python -m pipeline serve --port 0 ...`` in a subprocess on 127.0.0.1, its temporary files under
    ``tmp`` (TMPDIR); ``url`` once it prints its address. Stopped with SIGINT, as Ctrl+C stops it."""

    def __init__(self, model: Path, tmp: Path, *args: str, timeout: float = 120):
        import re
        import subprocess
        import sys
        import threading
        import time

        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("PIPELINE_API_KEY", None)
        cmd = [sys.executable, "-m", "pipeline", "serve", "--pretrained", str(model), "--port", "0", *args]
        cmd += ["--device", "cpu"]
        self.proc = subprocess.Popen(
            cmd, cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.url: str | None = None
        found = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
                if m and self.url is None:
                    self.url = m.group(1)
                    found.set()
            found.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.2):
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the server did not start:\n" + "".join(self.lines))
        if self.url is None:
            raise AssertionError("the server did not start:\n" + "".join(self.lines))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode
