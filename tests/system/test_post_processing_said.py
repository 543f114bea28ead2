"""The shipped model on photos made from its README photo, through the command line: a photo of two cars
keeps both, post-processing that deletes a car is said on the console and in the review list (predict and
submission, the list describing the mask written), a tiny car in a wide frame is named as past the review
list's tolerances, and the outline refiner says when a photo is off its scale."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.inference.review import read_review, review_path
from pipeline.masks import rle
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "carvana-unet-mobilenetv2"
PHOTO = REPO / "docs" / "img" / "shipped_photo.jpg"  # 480x320, one car

pytestmark = pytest.mark.slow


def _pieces(mask: np.ndarray) -> list[int]:
    n, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    return sorted(stats[1:, cv2.CC_STAT_AREA].tolist(), reverse=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """two_cars.jpg (the photo twice, side by side: 960x320, the cars 165 px apart, beyond the far-blob
    guard's 50 px gap) and tiny_car.jpg (the photo small in a wide 1918x1280 frame)."""
    root = tmp_path_factory.mktemp("photos")
    im = cv2.imread(str(PHOTO))
    cv2.imwrite(str(root / "two_cars.jpg"), np.concatenate([im, im], 1), [cv2.IMWRITE_JPEG_QUALITY, 95])
    canvas = np.full((1280, 1918, 3), 235, np.uint8)
    canvas[900:1220, 100:580] = im
    cv2.imwrite(str(root / "tiny_car.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return root


@pytest.fixture(scope="module")
def deleting(tmp_path_factory) -> Path:
    """A copy of the shipped folder whose post-processing is ``largest_cc``: it deletes every car but one."""
    folder = tmp_path_factory.mktemp("deleting") / "model"
    shutil.copytree(SHIPPED, folder)
    spec = json.loads((folder / "pipeline.json").read_text())
    spec["postprocess"] = ["largest_cc"]
    (folder / "pipeline.json").write_text(json.dumps(spec))
    return folder


def test_the_shipped_model_keeps_both_cars_and_names_the_odd_photo(photos, tmp_path, capsys):
    code, out, err = run_cli(capsys, "predict", photos, "--pretrained", SHIPPED, "--out", tmp_path / "p")
    assert code == 0
    mask = cv2.imread(str(tmp_path / "p" / "two_cars_mask.png"), cv2.IMREAD_GRAYSCALE)
    pieces = _pieces(mask)
    assert len(pieces) >= 2 and pieces[1] > 0.5 * pieces[0]  # both cars, the far one too
    assert "removed more than a blob's worth" not in out
    t = read_review(tmp_path / "p" / "review.csv").set_index("img")
    assert t.loc["two_cars.jpg", "area"] == int((mask > 0).sum()) and t.loc["two_cars.jpg", "post_px"] == 0
    assert "past the review list's tolerances: tiny_car.jpg (a shape unlike any train car's" in out
    # The refiner was trained on 1918x1280 photos: skipped on the 960x320 one, said once.
    assert err.count("note: refine_outline skipped: 960x320 is 0.50 times the width and 0.25 times the height") == 1


def test_post_processing_that_deletes_a_car_is_said_in_predict(photos, deleting, tmp_path, capsys):
    code, out, _ = run_cli(
        capsys, "predict", photos / "two_cars.jpg", "--pretrained", deleting, "--out", tmp_path / "p"
    )
    assert code == 0
    mask = cv2.imread(str(tmp_path / "p" / "two_cars_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert len(_pieces(mask)) == 1  # largest_cc did delete a car
    assert (
        "note: post-processing removed more than a blob's worth (2% of the photo) from 1 mask(s): two_cars.jpg" in out
    )
    row = read_review(tmp_path / "p" / "review.csv").iloc[0]
    assert row.area == int((mask > 0).sum())  # the review list describes the mask written
    assert row.post_removed > 0.05 * 960 * 320 and row.post_px > 0
    assert row.why.startswith(f"{row.post_px:,.0f} px: post-processing removed {row.post_removed:,} px")


def test_post_processing_that_deletes_a_car_is_said_in_the_submission(photos, deleting, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    for name in ("0123456789ab_01.jpg", "0123456789ab_02.jpg"):
        shutil.copy(photos / "two_cars.jpg", data / "test" / name)
    pd.DataFrame({"img": ["0123456789ab_01.jpg", "0123456789ab_02.jpg"], "rle_mask": ""}).to_csv(
        data / "sample_submission.csv", index=False
    )
    out = tmp_path / "sub" / "s.csv.gz"
    code, stdout, _ = run_cli(capsys, "submission", "--pretrained", deleting, "--data", data, "--out", out)
    assert code == 0
    assert "note: post-processing removed more than a blob's worth" in stdout and "0123456789ab_01.jpg" in stdout
    rows = pd.read_csv(out, keep_default_na=False).set_index("img")
    t = read_review(review_path(out)).set_index("img")
    for name in rows.index:
        written = rle.decode(rows.loc[name, "rle_mask"], 320, 960)
        assert t.loc[name, "area"] == int(written.sum())  # not the area before post-processing
        assert t.loc[name, "post_removed"] > 0.05 * 960 * 320
