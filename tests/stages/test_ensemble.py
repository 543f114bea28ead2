"""The ensemble search (pipeline/stages/ensemble.py): weights and threshold found as brute force finds them,
post-processing kept only when it measurably helps, members' folds checked, its workers end with it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.data.folds import load_folds
from pipeline.data.layout import DataError, Layout, read_image, read_mask
from pipeline.inference.engine import blend
from pipeline.masks.metrics import dice
from pipeline.masks.postprocess import apply as postprocess
from pipeline.masks.snakes import DEFAULTS as ACTIVE_CONTOUR_DEFAULTS
from pipeline.stages.ensemble import (
    GUARD_STEPS,
    MIN_POSTPROCESS_GAIN,
    POSTPROCESS_CANDIDATES,
    image_histograms,
    tune,
    weight_grid,
)
from tests.conftest import fake_fold

REPO = Path(__file__).resolve().parents[2]


def test_weight_grid_is_the_simplex():
    g = weight_grid(3, 4)
    assert len(g) == 15 and (g.sum(1) == 4).all() and len({tuple(r) for r in g}) == 15


def _fake_member(runs, name, images, maps, fold=0):
    fake_fold(runs, name, fold, images, maps, tta=["hflip"])


def test_search_finds_the_brute_force_optimum(tiny_data, tmp_path):
    layout = Layout(tiny_data)
    images = sorted(p.name for p in layout.train_dir.iterdir())[:6]
    masks = [read_mask(layout.mask(i)) for i in images]
    rng = np.random.default_rng(1)

    def noisy(mask, signal, noise):
        blur = cv2.GaussianBlur(mask.astype(np.float32), (7, 7), 0)
        return np.clip(255 * (signal * blur + noise * rng.random(mask.shape)), 0, 255).astype(np.uint8)

    maps_a = [noisy(m, 0.8, 0.4) for m in masks]
    maps_b = [noisy(m, 0.6, 0.6) for m in masks]
    runs = tmp_path / "runs"
    _fake_member(runs, "a", images, maps_a)
    _fake_member(runs, "b", images, maps_b)
    recipe = tune(runs, tiny_data, tmp_path / "recipe.json", steps=4, n_jobs=1, quiet=True)

    best = (-1.0, None, None)
    for w in weight_grid(2, 4):
        blended = [blend(np.stack([a, b]), w.tolist()) for a, b in zip(maps_a, maps_b)]
        for t in range(1, 256):
            score = float(np.mean([dice(bl >= t, m) for bl, m in zip(blended, masks)]))
            if score > best[0] + 1e-12:
                best = (score, w.tolist(), t)
    assert recipe["oof"]["dice_before_postprocess"] == pytest.approx(best[0], abs=1e-9)
    assert [m["weight"] for m in recipe["members"]] == best[1]
    assert recipe["threshold"] == best[2]
    scores = pd.read_csv(tmp_path / "recipe_oof_scores.csv")
    assert scores.blend.mean() == pytest.approx(recipe["oof"]["dice"], abs=1e-6)

    # Post-processing: every candidate's gain is recorded, and one is kept only if it raises the score.
    blended = [blend(np.stack([a, b]), best[1]) for a, b in zip(maps_a, maps_b)]
    photos = [read_image(layout.train_image(i)) for i in images]
    gains, params = recipe["postprocess_gain"], recipe["postprocess_params"]
    assert set(gains) == {"+".join(c) for c in POSTPROCESS_CANDIDATES}
    assert params == {"active_contour": ACTIVE_CONTOUR_DEFAULTS}
    for name, gain in gains.items():
        after = np.mean(
            [
                dice(postprocess((bl >= best[2]).astype(np.uint8), name, bl, photo, params), m)
                for bl, photo, m in zip(blended, photos, masks)
            ]
        )
        assert gain == pytest.approx(after - best[0], abs=1e-9)
    best_steps = max(gains, key=gains.get).split("+") if max(gains.values()) >= MIN_POSTPROCESS_GAIN else []
    assert [s for s in recipe["postprocess"] if s not in GUARD_STEPS] == best_steps

    # The guard goes first where it lowers no image's Dice; the recipe's Dice is that of what it chose.
    def scored(steps):
        return [
            dice(postprocess((bl >= best[2]).astype(np.uint8), steps, bl, photo, params), m)
            for bl, photo, m in zip(blended, photos, masks)
        ]

    unguarded, guarded = scored(best_steps), scored(["remove_far_blobs", *best_steps])
    kept = all(g >= u for g, u in zip(guarded, unguarded))
    assert recipe["postprocess_guard"]["remove_far_blobs"]["kept"] == kept
    assert recipe["postprocess"] == (["remove_far_blobs"] if kept else []) + best_steps
    assert recipe["oof"]["dice"] == pytest.approx(np.mean(guarded if kept else unguarded), abs=1e-9)
    none = tune(runs, tiny_data, tmp_path / "r0.json", steps=4, n_jobs=1, quiet=True, postprocess_steps="none")
    assert none["postprocess"] == [] and none["postprocess_gain"] == {}
    assert none["oof"]["dice"] == pytest.approx(best[0], abs=1e-9)


def test_threshold_between_separated_levels(tiny_data, tmp_path):
    layout = Layout(tiny_data)
    images = sorted(p.name for p in layout.train_dir.iterdir())[:4]
    maps = []
    for img in images:
        m = read_mask(layout.mask(img)).astype(bool)
        ring = cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~m
        q = np.zeros(m.shape, np.uint8)
        q[m], q[ring] = 200, 150  # a confident car and a less confident false halo
        maps.append(q)
    _fake_member(tmp_path / "runs", "solo", images, maps)
    recipe = tune(tmp_path / "runs", tiny_data, tmp_path / "r.json", n_jobs=1, quiet=True)
    assert recipe["threshold"] == 151 and recipe["oof"]["dice"] == 1.0
    assert recipe["oof"]["dice_at_0.5"] < 1.0  # 0.5 (128) keeps the halo: tuning the threshold matters


def _maps_with_a_corner_speck(layout: Layout) -> tuple[list[str], list[np.ndarray]]:
    """Four images predicted exactly, plus a false speck in the corner, far from the car."""
    images = sorted(p.name for p in layout.train_dir.iterdir())[:4]
    maps = []
    for img in images:
        q = read_mask(layout.mask(img)) * 255
        q[1:3, 1:3] = 255
        maps.append(q.astype(np.uint8))
    return images, maps


def test_post_processing_that_measurably_helps_goes_into_the_recipe(tiny_data, tmp_path):
    images, maps = _maps_with_a_corner_speck(Layout(tiny_data))
    _fake_member(tmp_path / "runs", "specks", images, maps)
    recipe = tune(tmp_path / "runs", tiny_data, tmp_path / "r.json", n_jobs=1, quiet=True)
    assert recipe["oof"]["dice_before_postprocess"] < 1
    # the first of the equal best, behind the guard (which costs nothing here)
    assert recipe["postprocess"] in (["remove_far_blobs", "largest_cc"], ["remove_far_blobs", "remove_small"])
    assert recipe["oof"]["dice"] == 1.0 and recipe["postprocess_gain"]["smooth_contour"] < MIN_POSTPROCESS_GAIN


@pytest.mark.parametrize("n_members", [1, 2, 3])
def test_image_histograms_count_every_pixel_as_blended(n_members):
    """The search's histograms (a joint histogram for two members, per pixel otherwise) are exactly
    the counts of (blended value, truth) over all pixels, for every weight vector."""
    rng = np.random.default_rng(n_members)
    maps = rng.integers(0, 256, (n_members, 40, 60)).astype(np.uint8)
    maps[:, :5] = 0  # certain background and car: counted without blending
    maps[:, -5:] = 255
    mask = (rng.random((40, 60)) < 0.4).astype(np.uint8)
    combos = weight_grid(n_members, 4 if n_members > 1 else 1)
    got = image_histograms(maps, mask, combos)
    flat, truth = maps.reshape(n_members, -1), mask.reshape(-1).astype(np.int64)
    for i, w in enumerate(combos):
        want = np.bincount(blend(flat, w.tolist()).astype(np.int64) * 2 + truth, minlength=512).reshape(256, 2)
        np.testing.assert_array_equal(got[i], want)


def _copy_data(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    shutil.copy(tiny_data.parent / "folds.csv", tmp_path / "folds.csv")
    return root


def test_the_far_blob_guard_is_kept_when_it_costs_no_image_anything(tiny_data, tmp_path):
    layout = Layout(tiny_data)
    images, maps = _maps_with_a_corner_speck(layout)
    _fake_member(tmp_path / "runs", "blobs", images, maps)
    recipe = tune(tmp_path / "runs", tiny_data, tmp_path / "r.json", n_jobs=1, quiet=True)
    guard = recipe["postprocess_guard"]["remove_far_blobs"]
    # largest_cc, chosen for its gain, already removes these blobs: the guard adds nothing and costs nothing
    assert guard["kept"] and guard["images_worse"] == 0 and guard["gain"] == 0
    assert recipe["postprocess"][0] == "remove_far_blobs" and recipe["oof"]["dice"] == 1.0
    alone = [dice(postprocess((m >= 128).astype(np.uint8), ["remove_far_blobs"]), read_mask(layout.mask(i)))
             for m, i in zip(maps, images)]  # fmt: skip
    assert alone == [1.0] * 4  # and on its own it removes every one of them


def test_the_far_blob_guard_is_dropped_when_it_would_remove_a_true_piece(tiny_data, tmp_path):
    """A true piece far from the car, predicted right: the guard would cost that image, so it stays out."""
    import PIL.Image

    data = _copy_data(tiny_data, tmp_path)
    layout = Layout(data)
    images = sorted(p.name for p in layout.train_dir.iterdir())[:4]
    maps = []
    for img in images[:1]:
        mask = read_mask(layout.mask(img))
        mask[1:3, 1:3] = 1  # the truth has a separate piece far from the car
        im = PIL.Image.fromarray(mask, mode="P")
        im.putpalette([0, 0, 0, 255, 255, 255])
        im.save(layout.mask(img))
    for img in images:
        maps.append((read_mask(layout.mask(img)) * 255).astype(np.uint8))  # predicted exactly
    _fake_member(tmp_path / "runs", "exact", images, maps)
    recipe = tune(tmp_path / "runs", data, tmp_path / "r.json", n_jobs=1, quiet=True)
    guard = recipe["postprocess_guard"]["remove_far_blobs"]
    assert not guard["kept"] and guard["images_worse"] == 1
    assert "remove_far_blobs" not in recipe["postprocess"] and recipe["oof"]["dice"] == 1.0


def _fake_fold(runs, name, fold, images, layout, k=None):
    fake_fold(runs, name, fold, images, [read_mask(layout.mask(i)) * 255 for i in images], k=k)


def test_ensemble_refuses_oof_of_another_checkpoint(tiny_data, tmp_path):
    layout, runs = Layout(tiny_data), tmp_path / "runs"
    folds = load_folds(tiny_data.parent / "folds.csv")
    for f in range(3):
        _fake_fold(runs, "a", f, sorted(folds[folds.fold == f].img)[:2], layout, k=3)
    assert tune(runs, tiny_data, tmp_path / "r.json", n_jobs=1, quiet=True)["oof"]["dice"] == 1.0
    (runs / "a" / "fold1" / "best.pt").write_bytes(b"retrained or copied over later")
    with pytest.raises(DataError, match=r"fold1/oof.json: written for another best.pt"):
        tune(runs, tiny_data, tmp_path / "r.json", n_jobs=1, quiet=True)


def test_ensemble_member_missing_folds_is_an_error(tiny_data, tmp_path):
    layout = Layout(tiny_data)
    folds = load_folds(tiny_data.parent / "folds.csv")
    by_fold = {f: sorted(folds[folds.fold == f].img)[:2] for f in range(3)}
    runs = tmp_path / "runs"
    for f in range(3):
        _fake_fold(runs, "a", f, by_fold[f], layout)
    for f in (0, 2):  # fold1's folder was not copied over
        _fake_fold(runs, "b", f, by_fold[f], layout)
    with pytest.raises(
        DataError, match=r"b lacks fold\(s\) \[1\] \(.*runs/b/fold1/oof.json not found\).*--allow-incomplete"
    ):
        tune(runs, tiny_data, tmp_path / "r.json", n_jobs=1, quiet=True)
    recipe = tune(runs, tiny_data, tmp_path / "r.json", n_jobs=1, quiet=True, allow_incomplete=True)
    assert recipe["oof"]["n_images"] == 4
    # One member alone: the k recorded by training says which folds exist.
    solo = tmp_path / "solo"
    for f in (0, 1):
        _fake_fold(solo, "c", f, by_fold[f], layout, k=3)
    with pytest.raises(DataError, match=r"c lacks fold\(s\) \[2\]"):
        tune(solo, tiny_data, tmp_path / "r2.json", n_jobs=1, quiet=True)


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_killed_ensemble_leaves_no_worker_running(tiny_data, tmp_path):
    """kill -9 of `ensemble` mid-search: its process pool's workers end within seconds (they used to wait
    minutes for work, holding their memory)."""
    layout_masks = sorted((tiny_data / "train_masks").iterdir())
    images = [p.name.replace("_mask.gif", ".jpg") for p in layout_masks]
    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    for name in ("a", "b", "c"):
        maps = [rng.integers(0, 256, (64, 96), dtype=np.uint8) for _ in images]
        fake_fold(runs, name, 0, images, maps)
    cmd = [sys.executable, "-m", "pipeline", "ensemble", "--runs", str(runs), "--data", str(tiny_data)]
    cmd += ["--out", str(tmp_path / "r.json"), "--steps", "60", "--jobs", "2", "--allow-incomplete"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers: set[int] = set()
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            workers = {
                k
                for k in _children(proc.pid)
                if "LokyProcess" in Path(f"/proc/{k}/cmdline").read_text(errors="replace")
            }
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert workers, "the ensemble finished before its workers could be seen; make the search larger"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
            time.sleep(0.2)
        alive = [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text()]
        assert not alive, f"workers {alive} outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
