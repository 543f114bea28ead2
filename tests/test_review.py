"""Review scores: exact device features, a corrupted prediction ranked above clean ones, the car-level
area feature, the out-of-fold figures, and the resumable sidecar."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.data.layout import Layout, read_mask
from pipeline.inference import review
from pipeline.inference.engine import blend


def test_image_features_are_exact_counts():
    # Two members on one 6x8 image: a 2x3 car both members are sure of, a pixel only one of them sees.
    a = np.zeros((6, 8), np.uint8)
    a[1:3, 2:5] = 255
    b = a.copy()
    a[4, 6] = 200  # member a alone: 200 >= threshold 128
    b[4, 6] = 20
    b[0, 0] = 200  # uncertain in the blend (100), below the threshold
    b[5, 0] = 40  # sure enough (blend 20): not uncertain, and not counted in soft_error
    maps = torch.from_numpy(np.stack([a, b]))[:, None]
    blended = blend(maps, [1, 1])
    row = review.image_features(maps, blended, 128)[0].tolist()
    got = dict(zip(review.DEVICE_FEATURES, row))
    # blend: car 255 (6 px); (200+20+1)//2 = 110 at (4, 6) and (0+200+1)//2 = 100 at (0, 0), both background.
    assert got == {
        "area": 6,
        "perimeter": 6,  # every pixel of a 2x3 block touches the background
        "soft_error": 110 + 100,  # probability on the wrong side of the threshold, in 1/255 px
        "uncertain": 2,  # 110 and 100 are within 64..191; 20 is not
        "disagreement": 2,  # (4, 6) and (0, 0): one member says car, the other background
        "height": 6,
        "width": 8,
        "top": 1,  # the car's bounding box: rows 1..2, columns 2..4
        "bottom": 2,
        "left": 2,
        "right": 4,
    }
    assert review.features_of(np.stack([a, b]), [1, 1], 128) == got
    empty = review.features_of(np.zeros((1, 6, 8), np.uint8), [1], 128)
    assert [empty[k] for k in ("area", "top", "bottom", "left", "right")] == [0, -1, -1, -1, -1]


def test_outline_on_the_image_frame_is_not_counted():
    car = np.zeros((1, 1, 5, 7), np.uint8)
    car[..., :, :3] = 255  # touches the top, bottom and left of the frame
    (row,) = review.image_features(torch.from_numpy(car), torch.from_numpy(car[0]), 128).tolist()
    assert row[:2] == [15, 5]  # area 15; the outline is only the column next to the background


def _sharp_map(mask: np.ndarray) -> np.ndarray:
    """A confident prediction: the truth with a 1-pixel soft edge, as a well-trained model gives."""
    return cv2.GaussianBlur(mask.astype(np.float32) * 255, (3, 3), 0.6).round().astype(np.uint8)


def test_a_corrupted_prediction_ranks_above_clean_ones(tiny_data, monkeypatch):
    # The uncertain-pixel evidence alone: the synthetic cars' shapes are not real cars' (the shape
    # evidence is tested with real ranges in tests/test_round3.py), so every shape counts as plausible here.
    wide = {f: [0.0, 1.0] for f in review.SHAPE_FEATURES}
    monkeypatch.setattr(review, "car_shapes", lambda: {"all": wide})
    layout = Layout(tiny_data)
    images = sorted(p.name for p in layout.train_dir.iterdir())[:16]  # one car's 16 views
    rows = []
    for i, img in enumerate(images):
        q = _sharp_map(read_mask(layout.mask(img)))
        if i == 5:  # the model is unsure over a patch of the car: probabilities near 0.5
            q[20:40, 30:60] = np.where(q[20:40, 30:60] > 127, 140, 110)
        rows.append({"img": img, **review.features_of(q[None], [1], 128)})
    table = review.review_table(pd.DataFrame(rows))
    assert table.img.iloc[0] == images[5]
    assert table.score.iloc[0] > 3 * table.score.iloc[1]
    assert sorted(table.img) == images and tuple(table.columns) == review.COLUMNS


def test_view_area_dev_compares_with_mirror_and_neighbour_views():
    car = "0123456789ab"
    images = [f"{car}_{v:02d}.jpg" for v in range(1, 17)] + ["photo.jpg"]
    area = np.full(17, 1000.0)
    area[2] = 500  # view 03: its mirror (15) and neighbours (02, 04) all have 1000
    dev = review.view_area_dev(images, area)
    assert dev[2] == pytest.approx(np.log(2))
    # Views 02 and 04 have 03 as a neighbour: the median of (1000, 500, 1000) is still 1000.
    assert dev[1] == 0 and dev[3] == 0 and dev[-1] == 0  # a photo without a Carvana name: no car context
    assert review.car_view("0123456789ab_07.jpg") == ("0123456789ab", 7) and review.car_view("x_07.jpg") is None


def test_figures_share_of_errors_in_the_top_and_rank_correlation():
    n = 40
    errors = np.r_[np.full(2, 1000), np.full(38, 10)]  # 2 bad images hold 2000 of 2380 error pixels
    table = pd.DataFrame(
        {
            "img": [f"i{k:02d}" for k in range(n)],
            "review_score": np.linspace(1, 0, n),  # the bad images score highest
            "fp": errors // 2,
            "fn": errors - errors // 2,
            "dice": 1 - errors / 1e5,
        }
    )
    fig = review.review_figures(table)
    assert fig["n_images"] == 40 and fig["top_images"] == 2
    assert fig["error_share_top"] == pytest.approx(2000 / 2380)
    assert fig["error_share_best"] == pytest.approx(2000 / 2380)
    assert fig["error_share_random"] == pytest.approx(2 / 40)
    # Spearman on ties: ranks of 1 - Dice are average ranks; computed by hand here with pandas' ranks.
    expected = np.corrcoef(table.review_score.rank(), (1 - table.dice).rank())[0, 1]
    assert fig["spearman"] == pytest.approx(expected)
    table["review_score"] = table.review_score.to_numpy()[::-1]  # now the bad images score lowest
    worst = review.review_figures(table)
    assert worst["error_share_top"] == pytest.approx(20 / 2380) and worst["spearman"] < 0


def test_sidecar_keeps_exactly_the_flushed_rows_across_a_resume(tmp_path):
    out = tmp_path / "s.csv.gz"
    side = review.ReviewSidecar(out)
    size0 = side.start()
    names = [f"0123456789ab_{v:02d}.jpg" for v in range(1, 17)]
    feats = np.arange(16 * len(review.DEVICE_FEATURES)).reshape(16, -1) + 100
    side.add(names[:6], feats[:6])
    recorded = side.flush(4)  # a chunk of 4 rows reached the disk and the progress file
    side.flush(2)  # the next chunk reached the disk, then a kill before the progress recorded it
    assert recorded > size0
    resumed = review.ReviewSidecar(out)
    resumed.resume(recorded)
    resumed.add(names[4:], feats[4:])
    resumed.flush(12)
    path = resumed.finish(names, out)
    assert path == tmp_path / "s.csv.gz.review.csv"
    table = review.read_review(path)
    assert sorted(table.img) == names  # every image once
    assert table.set_index("img").loc[names, "area"].tolist() == feats[:, 0].tolist()
    with pytest.raises(review.DataError, match="review data for 16 rows, the output has 15"):
        resumed.finish(names[:15], out)
