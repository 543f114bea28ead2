"""All stages on a tiny generated dataset: folds -> train (2 members x 3 folds) -> ensemble -> submission."""

import csv
import gzip

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.core.io_utils import read_json
from pipeline.data.layout import DataError, read_image
from pipeline.inference.engine import blend
from pipeline.inference.recipe import Recipe
from pipeline.masks import rle
from pipeline.masks.postprocess import apply as postprocess
from pipeline.masks.submission_csv import read_sample_names
from pipeline.models.unet import load_checkpoint_model
from pipeline.stages import row_writer as row_writer_mod
from pipeline.stages.ensemble import tune
from pipeline.stages.submission import make_submission
from pipeline.stages.train import run
from tests.conftest import H, W, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    runs = root / "runs"
    members = {"a": {}, "b": {"model.decoder_channels": "[8,8,8,8,8]", "predict.tta": "[]"}}
    for name, over in members.items():
        for fold in range(3):
            run(tiny_config(tiny_data, runs, name=name, fold=fold, **over), quiet=True)
    # The post-processing is pinned: which step a tiny training's maps favour depends on its threads and
    # CPU, and this test is about the rows (active_contour's rows are tested on their own, in test_predict).
    path = root / "sub" / "recipe.json"
    tune(runs, tiny_data, path, steps=4, n_jobs=1, quiet=True, postprocess_steps="fill_holes")
    return root, Recipe.load(path).to_dict()  # its paths resolved (stored relative to the recipe's folder)


def _expected_rows(tiny_data, recipe):
    """Independent re-computation of every test row from the checkpoints (no Engine)."""
    names = read_sample_names(tiny_data / "sample_submission.csv")
    models = {c: load_checkpoint_model(c)[0] for m in recipe["members"] for c in m["checkpoints"]}  # once each
    rows = []
    for name in names:
        maps, weights = [], []
        for m in recipe["members"]:
            if m["weight"] == 0:
                continue
            x = torch.from_numpy(read_image(tiny_data / "test" / name, m["height"], m["width"]).transpose(2, 0, 1))[
                None
            ]
            probs = []
            for ckpt in m["checkpoints"]:
                model = models[ckpt]
                with torch.no_grad():
                    probs.append(torch.sigmoid(model(x)))
                    if "hflip" in m["tta"]:
                        probs.append(torch.sigmoid(model(x.flip(-1)).flip(-1)))
            p = torch.stack(probs).mean(0)
            p = F.interpolate(p, size=(H, W), mode="bilinear", align_corners=False)[0, 0]
            maps.append(torch.round(p.clamp(0, 1) * 255).to(torch.uint8).numpy())
            weights.append(m["weight"])
        mask = (blend(np.stack(maps), weights) >= recipe["threshold"]).astype(np.uint8)
        rows.append([name, rle.encode(postprocess(mask, recipe["postprocess"]))])
    return rows


def _read_rows(path):
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.reader(f))


def test_submission_row_by_row(tiny_data, trained):
    root, recipe = trained
    assert len(recipe["members"]) == 2 and all(m["folds"] == [0, 1, 2] for m in recipe["members"])
    assert 0 < recipe["threshold"] < 256 and 0 <= recipe["oof"]["dice"] <= 1 and recipe["postprocess"] == ["fill_holes"]
    assert recipe["oof"]["n_images"] == 6 * 16
    out = root / "sub" / "submission.csv.gz"
    summary = make_submission(
        root / "sub" / "recipe.json",
        tiny_data,
        out,
        device="cpu",
        num_workers=0,
        chunk_rows=5,
        quiet=True,
        precision="fp32",  # the rows computed here are PyTorch's fp32: a CPU with BF16 runs bf16 by default
    )
    rows = _read_rows(out)
    assert rows[0] == ["img", "rle_mask"]
    expected = _expected_rows(tiny_data, recipe)
    assert [r[0] for r in rows[1:]] == read_sample_names(tiny_data / "sample_submission.csv")
    for got, want in zip(rows[1:], expected):
        assert got == want, f"row for {want[0]} differs"
        rle.parse(got[1], W * H)
    assert summary["rows"] == 16 and summary["width"] == W and summary["height"] == H
    assert not out.with_name(out.name + ".part").exists()


def test_submission_resumes_after_a_crash(tiny_data, trained, monkeypatch):
    root, _ = trained
    recipe = root / "sub" / "recipe.json"
    clean = root / "clean.csv.gz"
    make_submission(recipe, tiny_data, clean, device="cpu", num_workers=0, chunk_rows=3, quiet=True)

    crashed = root / "crashed.csv.gz"
    names = read_sample_names(tiny_data / "sample_submission.csv")
    real_row = row_writer_mod._row

    def dying_row(name, mask, recipe, photo=None, **how):
        if name == names[7]:  # the 8th row, mid-way through the third chunk of 3
            raise KeyboardInterrupt
        return real_row(name, mask, recipe, photo, **how)

    monkeypatch.setattr(row_writer_mod, "_row", dying_row)
    with pytest.raises(KeyboardInterrupt):
        make_submission(recipe, tiny_data, crashed, device="cpu", num_workers=0, chunk_rows=3, quiet=True)
    assert not crashed.exists()
    progress = read_json(crashed.with_name(crashed.name + ".progress.json"))
    # The writer's contract: every row before the failed one is on disk (2 chunks of 3 + 1), none after,
    # whatever the RLE thread pool's timing.
    assert progress["rows"] == 7
    with gzip.open(crashed.with_name(crashed.name + ".part"), "rt") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == names[:7]
    # Garbage past the recorded offset (a chunk half-written at the crash) must be dropped.
    with open(crashed.with_name(crashed.name + ".part"), "ab") as f:
        f.write(b"\x1f\x8b half a chunk")
    monkeypatch.setattr(row_writer_mod, "_row", real_row)
    make_submission(recipe, tiny_data, crashed, device="cpu", num_workers=0, chunk_rows=3, quiet=True)
    assert _read_rows(crashed) == _read_rows(clean)


def test_missing_test_image_is_named(tiny_data, trained, tmp_path):
    import shutil

    root, _ = trained
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    victim = sorted((data / "test").iterdir())[4]
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        make_submission(root / "sub" / "recipe.json", data, tmp_path / "s.csv.gz", device="cpu", quiet=True)
