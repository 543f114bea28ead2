"""The review list describes the mask that was written: area, box and outline after post-processing, the
pixels post-processing removed or added as evidence, a car's views compared by their share of the photo,
and no cell a spreadsheet would run as a formula."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.inference import review

H, W = 1280, 1918


def _device_features(raw: np.ndarray) -> list[int]:
    """image_features of a mask thresholded from a confident blend (no uncertain pixels)."""
    blended = torch.from_numpy(raw.astype(np.uint8) * 255)
    return review.image_features(blended[None, None], blended[None], 128)[0].tolist()


def test_final_features_are_those_of_the_mask_written():
    raw = np.zeros((64, 96), bool)
    raw[10:30, 10:40] = True  # the car
    raw[40:50, 60:90] = True  # a second car, 300 px, that post-processing deleted
    final = raw.copy()
    final[40:50, 60:90] = False
    final[20, 20] = False  # and a pixel inside the car it removed
    row = review.final_features(_device_features(raw), raw, final)
    got = dict(zip(review.REVIEW_FEATURES, row.tolist()))
    expected = dict(zip(review.DEVICE_FEATURES, _device_features(final)))
    for key in ("area", "perimeter", "top", "bottom", "left", "right", "height", "width"):
        assert got[key] == expected[key], key
    assert got["post_removed"] == 301 and got["post_added"] == 0
    empty = review.final_features(_device_features(raw), raw, np.zeros_like(raw))
    assert dict(zip(review.REVIEW_FEATURES, empty.tolist()))["top"] == -1


def _row(img, area, box, soft=20_000, removed=0, added=0, h=H, w=W):
    top, bottom, left, right = box
    return {"img": img, "area": int(area), "perimeter": 4000, "soft_error": soft, "uncertain": 900, "disagreement": 0,
            "height": h, "width": w, "top": top, "bottom": bottom, "left": left, "right": right,
            "post_removed": removed, "post_added": added}  # fmt: skip


def test_a_mask_that_lost_half_a_car_to_post_processing_ranks_first_and_says_so():
    rows = [_row(f"photo{i}.jpg", 500_000, (400, 1000, 300, 1600), soft=255 * (3000 + 300 * i)) for i in range(16)]
    # Post-processing removed half a car (258,005 px) from photo7: what remains looks like a car, and its
    # probabilities are as sure as the others'.
    rows[7] = _row("photo7.jpg", 258_005, (400, 1000, 300, 950), soft=255 * 7_174, removed=258_005)
    rows[3]["post_removed"] = 30_000  # a far blob removed: under a blob's worth (2 % of the photo), no evidence
    t = review.review_table(pd.DataFrame(rows))
    assert t.img.iloc[0] == "photo7.jpg"
    first = t.iloc[0]
    assert first.post_px == pytest.approx(258_005 - review.POST_TOLERANCE * H * W)
    assert "post-processing removed 258,005 px" in first.why
    assert t.set_index("img").loc["photo3.jpg", "post_px"] == 0
    lines = review.notes(t, "out/review.csv")  # said once, where it belongs
    assert len(lines) == 1 and "removed more than a blob's worth" in lines[0] and "photo7.jpg 258,005 px" in lines[0]
    rows[7]["post_added"], rows[7]["post_removed"] = 258_005, 0  # a step that added half a car's worth instead
    lines = review.notes(review.review_table(pd.DataFrame(rows)), "out/review.csv")
    assert len(lines) == 1 and "1 of 16 mask(s) past the review list's tolerances: photo7.jpg (post" in lines[0]


def test_a_car_s_views_are_compared_by_their_share_of_the_photo():
    rows = [_row(f"0123456789ab_{v:02d}.jpg", 500_000, (400, 1000, 300, 1600)) for v in range(1, 17)]
    # One view photographed at half the size: a quarter of the pixels, the same share of its photo.
    rows[4] = _row("0123456789ab_05.jpg", 125_000, (200, 500, 150, 800), h=H // 2, w=W // 2)
    t = review.review_table(pd.DataFrame(rows))
    assert (t.view_px == 0).all() and (t.view_dev <= 1).all()
    assert review.notes(t, "review.csv") == []


@pytest.mark.parametrize("name", ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "'=1"])
def test_no_cell_of_the_review_list_is_a_spreadsheet_formula(tmp_path, name):
    rows = [_row(f"{name}.jpg", 500_000, (400, 1000, 300, 1600)), _row("plain.jpg", 400_000, (400, 1000, 300, 1600))]
    path = review.write_review(tmp_path / "review.csv", review.review_table(pd.DataFrame(rows)))
    cells = pd.read_csv(path, dtype=str, keep_default_na=False)["img"].tolist()
    assert f"'{name}.jpg" in cells and "plain.jpg" in cells  # the quote that spreadsheets show as text
    assert sorted(review.read_review(path)["img"]) == sorted([f"{name}.jpg", "plain.jpg"])  # read back exactly
