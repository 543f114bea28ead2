"""report: a static HTML folder with curves, the evaluate metrics, a Dice histogram and the worst images."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.core.identity import file_sha256
from pipeline.core.io_utils import read_json, write_json
from pipeline.inference import review
from pipeline.masks.metrics import summarize
from pipeline.stages import evaluate
from pipeline.stages.report import ERR_ALPHA, FN, FP, TP, TP_ALPHA, error_regions, make_report, overlay
from tests.conftest import edit_pipeline_json as _edit
from tests.conftest import retrain_stand_in as _retrain
from tests.conftest import run_cli as _cli


def _srcs(index):
    return re.findall(r'<img src="([^"]+)"', index.read_text())


@pytest.mark.slow
def test_report_writes_index_with_its_images(tiny_data, tiny_runs, tmp_path):
    runs, recipe = tiny_runs
    out = tmp_path / "report"
    args = [
        "report",
        "--runs",
        str(runs),
        "--data",
        str(tiny_data),
        "--recipe",
        str(recipe),
        "--out",
        str(out),
        "--jobs",
        "1",
    ]
    assert main(args + ["--worst", "3"]) == 0
    index = out / "index.html"
    page = index.read_text()
    srcs = _srcs(index)
    assert {"dice_hist.png", "curves_1.png", "curves_2.png"} <= {s.split("/")[-1] for s in srcs}
    assert sum(s.endswith("_overlay.png") for s in srcs) == 3 and any("_crop1.png" in s for s in srcs)
    for src in srcs:  # relative links to PNGs in the report's own pictures folder: opens from disk, no server
        assert src.count("/") == 1 and cv2.imread(str(out / src)) is not None, src
    # The table holds evaluate's numbers for each member and for the blend.
    tables = evaluate.score_runs(runs, tiny_data, n_jobs=1)
    tables["blend"] = evaluate.score_recipe(recipe, tiny_data, n_jobs=1)
    for name, table in tables.items():
        s = summarize(table)
        row = re.search(rf"<tr[^>]*><td>{name}</td>(.*?)</tr>", page).group(1)
        assert re.findall(r"<td>([^<]*)</td>", row) == [str(s["n_images"])] + [
            f"{s[c]:.5f}" for c in ("mean_dice", "mean_iou", "pixel_accuracy", "precision", "recall")
        ] + [f"{s[c]:.5f}" for c in ("dice_p5", "dice_p50", "dice_p95")]
    # The review score's figures (pipeline/inference/review.py) for each source, and the gain curve.
    assert any(s.endswith("/review_gain.png") for s in srcs)
    for name, table in tables.items():
        f = review.review_figures(table)
        row = re.findall(rf"<tr[^>]*><td>{name}</td>(.*?)</tr>", page)[1]  # [0] is the metrics table
        assert re.findall(r"<td>([^<]*)</td>", row) == [
            f"{f['top_images']} of {f['n_images']}",
            *(f"{f[k]:.1%}" for k in ("error_share_top", "error_share_random", "error_share_random_p95")),
            f"{f['error_share_best']:.1%}",
            f"{f['spearman']:.3f}",
        ]
    # The worst images are the blend's lowest Dice, in order.
    worst = tables["blend"].sort_values(["dice", "img"]).img.head(3).tolist()
    assert re.findall(r"<h3>\d\. ([^:]+):", page) == worst
    # Re-running into the same folder with fewer images leaves no stale pictures behind.
    assert main(args + ["--worst", "1"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == sorted(_srcs(index))


def test_report_without_recipe_shows_members(tiny_data, tiny_runs, tmp_path, capsys):
    runs, _ = tiny_runs
    out = tmp_path / "report"
    args = ["report", "--runs", str(runs), "--data", str(tiny_data), "--recipe", str(tmp_path / "none.json")]
    assert main(args + ["--out", str(out), "--members", "a", "--worst", "2", "--jobs", "1"]) == 0
    assert "no recipe there" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    assert "<td>a</td>" in page and "<td>blend</td>" not in page and "<td>b</td>" not in page
    assert "Worst out-of-fold images (a)" in page


def test_overlay_colours_each_outcome():
    image = np.full((4, 4, 3), 100, np.uint8)
    truth = np.zeros((4, 4), bool)
    pred = np.zeros((4, 4), bool)
    truth[0, :2] = pred[0, 0] = True  # (0,0) true positive, (0,1) false negative
    pred[1, 0] = True  # false positive
    out = overlay(image, pred, truth).astype(int)

    def tint(colour, alpha):
        return np.round((1 - alpha) * 100 + alpha * np.array(colour)).astype(int)

    assert (out[0, 0] == tint(TP, TP_ALPHA)).all()
    assert (out[0, 1] == tint(FN, ERR_ALPHA)).all()
    assert (out[1, 0] == tint(FP, ERR_ALPHA)).all()
    assert (out[2:] == 100).all()  # true negatives untouched


def test_error_regions_largest_first_with_exact_areas():
    truth = np.zeros((200, 300), bool)
    pred = truth.copy()
    pred[10:15, 20:30] = True  # 50 false-positive pixels
    truth[150:152, 250:255] = True  # 10 false-negative pixels
    pred[100, 100] = True  # 1
    boxes = error_regions(pred, truth, k=2)
    assert [b[4] for b in boxes] == [50, 10]
    (x0, y0, x1, y1, _), (u0, v0, u1, v1, _) = boxes
    assert x0 <= 20 and x1 >= 30 and y0 <= 10 and y1 >= 15 and min(x1 - x0, y1 - y0) >= 200 // 8
    assert u0 <= 250 and u1 >= 255 and v0 <= 150 and v1 >= 152 and u1 <= 300 and v1 <= 200


@pytest.mark.slow
def test_a_failed_report_leaves_the_last_one_whole(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    out = tmp_path / "report"
    args = ["report", "--runs", runs, "--data", data, "--recipe", recipe, "--out", out, "--jobs", "1", "--worst", "2"]
    assert _cli(capsys, *args)[0] == 0
    before = {p: (out / p).read_bytes() for p in ["index.html", *_srcs(out / "index.html")]}
    worst = re.findall(r"<h3>1\. ([^:]+):", (out / "index.html").read_text())[0]
    photo = data / "train" / worst
    photo.write_bytes(photo.read_bytes()[:200])  # truncated: the second report fails drawing it
    code, _, err = _cli(capsys, *args)
    assert code == 2 and worst in err
    assert {p: (out / p).read_bytes() for p in before} == before  # the last report, whole
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [Path(_srcs(out / "index.html")[0]).parts[0]]


@pytest.mark.slow
def test_report_removes_and_replaces_only_its_own_files(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    out = tmp_path / "report"
    out.mkdir()
    mine = {n: f"the user's own {n}".encode() for n in ("dice_hist.png", "curves_a.png", "worst_1_overlay.png")}
    for n, data in mine.items():
        (out / n).write_bytes(data)
    args = ["report", "--runs", runs, "--data", tiny_data, "--out", out, "--jobs", "1", "--worst", "1"]
    assert _cli(capsys, *args, "--recipe", recipe)[0] == 0
    first = _srcs(out / "index.html")
    assert _cli(capsys, *args, "--recipe", tmp_path / "none.json")[0] == 0
    second = _srcs(out / "index.html")
    assert all((out / s).is_file() for s in second) and not any((out / s).exists() for s in first if s not in second)
    assert {n: (out / n).read_bytes() for n in mine} == mine
    other = tmp_path / "other"
    other.mkdir()
    (other / "index.html").write_text("<p>my own page</p>")
    code, _, err = _cli(capsys, "report", "--runs", runs, "--data", tiny_data, "--out", other, "--jobs", "1")
    assert code == 2 and "was not written by `report`" in err
    assert (other / "index.html").read_text() == "<p>my own page</p>"


@pytest.mark.slow
def test_report_escapes_every_value_from_names_and_paths(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    shutil.copytree(runs / "a", runs / 'a" onerror="alert(1)')  # a copy under a name no run can have
    odd = tmp_path / '<script>alert("recipe")<'
    out = tmp_path / "report"
    code, _, _ = _cli(
        capsys, "report", "--runs", runs, "--data", tiny_data, "--recipe", odd / "r.json", "--out", out, "--jobs", "1"
    )
    page = (out / "index.html").read_text()
    assert code == 0 and "<script>" not in page and "&lt;script&gt;" in page
    assert "onerror=" not in page.replace("onerror=&#34;", "")  # only ever as escaped text, never an attribute
    assert all(re.fullmatch(r"report-[\w-]+/[\w.]+\.png", s) for s in _srcs(out / "index.html"))


@pytest.mark.slow
def test_report_draws_no_worst_image_from_a_model_that_may_have_trained_on_it(folder, tiny_data, tmp_path, capsys):
    _edit(folder, lambda spec: spec["source"].update(trained=None, cars=None))  # a folder that does not say what it saw
    code, _, err = _cli(
        capsys, "report", "--pretrained", folder, "--data", tiny_data, "--runs", tmp_path / "none",
        "--out", tmp_path / "rep", "--worst", "2", "--recipe", tmp_path / "none.json",
    )  # fmt: skip
    page = (tmp_path / "rep" / "index.html").read_text()
    label = f"model:{json.loads((folder / 'pipeline.json').read_text())['name']}"
    assert code == 0 and label in page and "Worst out-of-fold images" not in page
    assert "does not record the cars it was trained on" in page


@pytest.mark.slow
def test_report_works_on_runs_in_every_state(lab, tiny_data, tmp_path, capsys):
    runs, recipe = lab
    killed = runs / "c" / "fold0"
    killed.mkdir(parents=True)
    (killed / "history.csv").write_text("")  # killed before its first epoch
    header_only = runs / "c" / "fold1"
    header_only.mkdir(parents=True)
    (header_only / "history.csv").write_text("epoch,lr,train_loss,val_loss,val_dice,val_iou,seconds,best_val_dice\n")
    training = runs / "d" / "fold0"  # still training: epochs recorded, no oof.json yet
    shutil.copytree(runs / "a" / "fold0", training)
    (training / "oof.json").unlink()
    shutil.copytree(runs / "a" / "fold0", runs / "a" / "fold0.bak")  # a backup
    index = make_report(runs, tiny_data, tmp_path / "r", recipe_path=recipe, n_worst=1, n_jobs=1, quiet=True)
    page = index.read_text()
    assert "<td>a</td>" in page and "<td>blend</td>" in page
    assert "d (no completed fold yet" in page and "<h3>c" not in page  # c has no epoch recorded
    assert len(re.findall(r'src="[^"]+/curves_\d+\.png"', page)) == 3  # a, b and d
    assert "Lineage of the recipe (all " in page
    # A fold retrained since the recipe: the members are reported, the stale blend is not.
    _retrain(runs / "b" / "fold0" / "best.pt")
    (runs / "b" / "fold0" / "oof.json").write_text(
        (runs / "b" / "fold0" / "oof.json").read_text().replace('"n_images"', '"retrained": 1, "n_images"')
    )
    info = read_json(runs / "b" / "fold0" / "oof.json")
    info["checkpoint_sha256"] = file_sha256(runs / "b" / "fold0" / "best.pt")
    write_json(runs / "b" / "fold0" / "oof.json", info)
    source = runs / "b" / "fold0" / "oof" / "source.json"  # re-predicted by the retrained model, as training does
    write_json(source, {**read_json(source), "checkpoint_sha256": info["checkpoint_sha256"]})
    page = make_report(
        runs, tiny_data, tmp_path / "r2", recipe_path=recipe, n_worst=1, n_jobs=1, quiet=True
    ).read_text()
    assert "The blend is left out" in page and "oof.json changed since the recipe was tuned" in page
    assert "<td>blend</td>" not in page and "<td>b</td>" in page
    assert "Lineage of the recipe (2 broken link(s))" in page and "BROKEN checkpoint" in page
