"""Review scores: exact device features, a corrupted prediction ranked above clean ones, a view judged
against its own car's views (a framing is not a mistake), the out-of-fold figures, and the resumable
sidecar."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.data.layout import Layout, read_mask
from pipeline.inference import review
from pipeline.inference.engine import blend
from tests.conftest import REAL, needs_real_data


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
    # The uncertain-pixel evidence alone: the synthetic cars' shapes and views are not real cars' (the
    # shape and view evidence is tested below), so every shape counts as
    # plausible here and no view disagreement as past the tolerance.
    wide = {f: [0.0, 1.0] for f in review.SHAPE_FEATURES}
    monkeypatch.setattr(review, "car_shapes", lambda: {"all": wide})
    loose = {ref: {f: 1e9 for f in tol} for ref, tol in review.VIEW_TOLERANCE.items()}
    monkeypatch.setattr(review, "VIEW_TOLERANCE", loose)
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


H, W = 1280, 1918


def _row(img, area, box, soft=20_000):
    top, bottom, left, right = box
    return {"img": img, "area": int(area), "perimeter": 4000, "soft_error": soft, "uncertain": 900, "disagreement": 0,
            "height": H, "width": W, "top": top, "bottom": bottom, "left": left, "right": right}  # fmt: skip


def _car(car, area=500_000, box=(400, 1000, 300, 1600), soft=20_000):
    return [_row(f"{car}_{v:02d}.jpg", area, box, soft) for v in range(1, 17)]


def test_a_view_that_disagrees_with_its_own_car_ranks_first_and_says_why():
    rows = _car("0123456789ab")
    rows[2] = _row("0123456789ab_03.jpg", 545_000, (400, 1200, 300, 1600))  # a blob on the floor below the car
    rows[6] = _row(
        "0123456789ab_07.jpg", 0, (-1, -1, -1, -1)
    )  # no car found: its mirror (11) and neighbours say one is there
    t = review.review_table(pd.DataFrame(rows)).set_index("img")
    assert list(t.index[:2]) == ["0123456789ab_07.jpg", "0123456789ab_03.jpg"]
    assert t.loc["0123456789ab_07.jpg", "view_px"] == pytest.approx(500_000)
    assert t.loc["0123456789ab_03.jpg", "view_px"] == pytest.approx(45_000)
    assert "box bottom +200 px against its mirror view" in t.loc["0123456789ab_03.jpg", "why"]
    # Its mirror partner (15) disagrees with it, but agrees with its own neighbours: not blamed.
    assert t.loc["0123456789ab_15.jpg", "view_px"] == 0 and t.loc["0123456789ab_15.jpg", "why"].startswith("78 px")
    assert (t["shape_px"] == 0).all()  # each has its car's views to compare with


def test_a_car_framed_unlike_the_train_cars_is_a_framing_not_16_mistakes():
    wide = _car(
        "aaaaaaaaaaaa", area=0.5 * H * W, box=(300, H - 10, 0, W - 1), soft=5_000
    )  # larger, lower: platform edge
    usual = _car("0123456789ab")
    usual[4] = _row("0123456789ab_05.jpg", 500_000, (400, 1000, 300, 1600), soft=2_000_000)  # unsure: a real mistake
    t = review.review_table(pd.DataFrame(wide + usual)).set_index("img")
    assert t.index[0] == "0123456789ab_05.jpg"
    mine = t.loc[[r["img"] for r in wide]]
    assert (mine.shape_dev > review.SHAPE_TOLERANCE).all() and (mine.shape_px == 0).all() and (mine.view_px == 0).all()
    assert (mine.score == 5_000 / 255).all() and mine.why.str.contains("framed unlike the train cars").all()
    # Alone, with no other view of its car here, the same photo is judged against all train cars.
    alone = review.review_table(pd.DataFrame(wide[:1])).iloc[0]
    assert alone.shape_px > 0 and "a shape unlike any train car's" in alone.why


def test_an_odd_photo_among_a_car_s_views_ranks_first():
    rows = _car("0123456789ab", soft=200_000)
    rows[3] = _row("0123456789ab_04.jpg", 0.56 * H * W, (0, H - 1, 0, W - 1), soft=0)  # confident, not a car
    t = review.review_table(pd.DataFrame(rows))
    assert t.img.iloc[0] == "0123456789ab_04.jpg" and "against its mirror view" in t.why.iloc[0]


@needs_real_data()
def test_no_true_mask_disagrees_with_its_car_past_the_tolerance():
    layout = Layout(REAL)
    cars = sorted({p.name[:12] for p in layout.masks_dir.glob("*_mask.gif")})[:4]
    rows = []
    for car in cars:
        for v in range(1, 17):
            m = read_mask(layout.mask(f"{car}_{v:02d}.jpg")) > 0
            ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            rows.append(_row(f"{car}_{v:02d}.jpg", m.sum(), (ys[0], ys[-1], xs[0], xs[-1]), soft=0))
    t = review.review_table(pd.DataFrame(rows))
    assert len(t) == 64 and (t.view_dev <= 1).all() and (t.score == 0).all()


def test_car_view_reads_carvana_names_only():
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


def test_review_ranks_a_confident_non_car_mask_first():
    from pipeline.inference.review import review_table

    h, w = 1280, 1918

    def row(img, area_share, box, soft=20_000):
        top, bottom, left, right = box
        size = {"height": h, "width": w, "top": top, "bottom": bottom, "left": left, "right": right}
        return {"img": img, "area": int(area_share * h * w), "perimeter": 4000, "soft_error": soft, "uncertain": 900,
                "disagreement": 0, **size}  # fmt: skip

    cars = [row(f"car_{v}.jpg", 0.2, (380, 1000, 300, 1600), soft=100_000 + v) for v in range(1, 9)]
    odd = [
        row("holiday.jpg", 0.56, (0, h - 1, 0, w - 1), soft=0),  # a confident mask over most of a non-car photo
        row("0123456789ab_03.jpg", 0.0, (-1, -1, -1, -1), soft=0),  # no car found on a Carvana photo: one is there
        row("empty.jpg", 0.0, (-1, -1, -1, -1), soft=0),  # no car found on another photo: maybe right
    ]
    t = review_table(pd.DataFrame(cars + odd))
    assert set(t.img[:2]) == {"holiday.jpg", "0123456789ab_03.jpg"} and t.img.iloc[-1] == "empty.jpg"
    assert (t.set_index("img").loc[[c["img"] for c in cars], "shape_dev"] == 0).all()


@pytest.mark.parametrize("members", [1, 2, 3])
def test_host_features_are_the_device_features(members):
    """The host's OpenCV passes give the tensor operations' numbers: blobs touching the frame or not,
    blends spread over every value, thresholds at and around the uncertain range's ends."""
    rng = np.random.default_rng(members)
    for _ in range(12):
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 60))
        maps = np.zeros((members, h, w), np.uint8)
        for q in maps:
            for _ in range(int(rng.integers(0, 4))):
                y, x = int(rng.integers(-5, h)), int(rng.integers(-5, w))
                q[max(0, y) : y + int(rng.integers(1, 20)), max(0, x) : x + int(rng.integers(1, 30))] = 255
            noisy = rng.random((h, w)) < 0.3
            q[noisy] = rng.integers(0, 256, int(noisy.sum()))
        q = torch.from_numpy(maps)[:, None]
        blended = blend(q, [1] * members)
        for threshold in (1, 63, 64, 65, 128, 132, 191, 192, 255):
            host = review.image_features(q, blended, threshold)
            assert host.tolist() == review._device_features(q, blended, threshold).tolist()


def test_final_features_count_what_post_processing_changed():
    """Removed and added pixels, area, outline and box of the mask written, against plain NumPy counts;
    the masks as bool, 0/1 or 0/255 bytes."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        raw = rng.random((30, 50)) < 0.4
        final = raw.copy()
        final[rng.integers(0, 30, 40), rng.integers(0, 50, 40)] ^= True
        features = list(range(len(review.DEVICE_FEATURES)))
        car = final.astype(np.uint8)
        inner = cv2.erode(car, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=1)
        ys, xs = np.nonzero(final)
        expected = dict(zip(review.DEVICE_FEATURES, features))
        expected.update(
            area=int(final.sum()),
            perimeter=int(final.sum()) - int(inner.sum()),
            top=int(ys.min()),
            bottom=int(ys.max()),
            left=int(xs.min()),
            right=int(xs.max()),
            post_removed=int((raw & ~final).sum()),
            post_added=int((final & ~raw).sum()),
        )
        for given in (final, final.astype(np.uint8), final.astype(np.uint8) * 255):
            row = review.final_features(features, raw, given)
            assert dict(zip(review.REVIEW_FEATURES, row.tolist())) == expected
    same = review.final_features(features, raw, raw.astype(np.uint8) * 255)
    assert same.tolist() == [*features, 0, 0]  # nothing changed: the device's features stand
