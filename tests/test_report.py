"""report: a static HTML folder with curves, the evaluate metrics, a Dice histogram and the worst images."""

import re

import cv2
import numpy as np

from pipeline.__main__ import main
from pipeline.inference import review
from pipeline.masks.metrics import summarize
from pipeline.stages import evaluate
from pipeline.stages.report import ERR_ALPHA, FN, FP, TP, TP_ALPHA, error_regions, overlay


def _srcs(index):
    return re.findall(r'<img src="([^"]+)"', index.read_text())


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
