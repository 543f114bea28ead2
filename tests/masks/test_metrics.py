"""Per-image metrics on hand-computed cases, a perfect and an empty prediction, and the summary."""

import numpy as np
import pandas as pd
import pytest

from pipeline.masks.metrics import SUMMARY_KEYS, confusion, image_metrics, score_image, summarize


def _case():
    """4x4 truth with 6 car pixels; prediction with 4 hits, 2 false alarms (so 2 misses)."""
    t = np.zeros((4, 4), np.uint8)
    t[0, :4] = 1
    t[1, :2] = 1
    p = np.zeros((4, 4), np.uint8)
    p[0, :4] = 1
    p[3, :2] = 1
    return p, t


def test_confusion_and_metrics_by_hand():
    p, t = _case()
    assert confusion(p, t) == (4, 2, 2, 8)
    m = image_metrics(4, 2, 2, 8)
    assert m["dice"] == pytest.approx(8 / 12)
    assert m["iou"] == pytest.approx(4 / 8)
    assert m["pixel_accuracy"] == pytest.approx(12 / 16)
    assert m["precision"] == pytest.approx(4 / 6)
    assert m["recall"] == pytest.approx(4 / 6)


def test_perfect_and_empty_predictions():
    _, t = _case()
    perfect = score_image(t, t)
    assert [perfect[k] for k in ("dice", "iou", "pixel_accuracy", "precision", "recall")] == [1, 1, 1, 1, 1]
    empty = score_image(np.zeros_like(t), t)
    assert (empty["dice"], empty["iou"], empty["precision"], empty["recall"]) == (0, 0, 0, 0)
    assert empty["pixel_accuracy"] == pytest.approx(10 / 16)
    nothing = score_image(np.zeros_like(t), np.zeros_like(t))  # no car, none predicted: all correct
    assert (nothing["dice"], nothing["iou"], nothing["precision"], nothing["recall"]) == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="shape"):
        confusion(t, t[:2])


def test_summary_has_exactly_the_documented_keys_percentiles_and_worst():
    rows = [score_image(*_case()), score_image(_case()[1], _case()[1])] * 3
    df = pd.DataFrame(rows).assign(img=[f"im{i}.jpg" for i in range(6)])
    s = summarize(df, n_worst=2)
    assert tuple(s) == SUMMARY_KEYS
    d = df.dice.to_numpy()
    assert s["n_images"] == 6 and s["mean_dice"] == pytest.approx((8 / 12 + 1) / 2)
    assert s["dice_p5"] == pytest.approx(np.percentile(d, 5)) and s["dice_p50"] == pytest.approx(np.median(d))
    assert s["worst"] == [
        {"img": "im0.jpg", "dice": pytest.approx(8 / 12)},
        {"img": "im2.jpg", "dice": pytest.approx(8 / 12)},
    ]
