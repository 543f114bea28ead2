"""Active contours (pipeline/masks/snakes.py): uncertain stretches of the outline move onto the photo's edges,
certain ones stay, and the step's parameters are checked wherever a recipe is read."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from pipeline.data.layout import DataError
from pipeline.inference.recipe import Recipe
from pipeline.masks import snakes
from pipeline.masks.postprocess import apply
from pipeline.masks.probability import HALF

H, W = 120, 160


def _scene(offset: int, soft_right: bool = True):
    """A dark 60x80 'car' (rows 30..89, columns 40..119) on a light floor, and a prediction whose right
    side is ``offset`` px off with a wide (uncertain) transition there; elsewhere sharp and right."""
    photo = np.full((H, W, 3), 200, np.uint8)
    photo[30:90, 40:120] = 60
    truth = np.zeros((H, W), np.uint8)
    truth[30:90, 40:120] = 1
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    dist = np.maximum.reduce([30 - yy, yy - 89, 40 - xx, xx - (119 + offset)])
    prob = 1 / (1 + np.exp(dist / 0.7))
    if soft_right:
        right = xx > 100
        prob[right] = 1 / (1 + np.exp(dist[right] / 4))
    blended = np.round(prob * 255).astype(np.uint8)
    return photo, truth, blended, (blended >= 128).astype(np.uint8)


@pytest.mark.parametrize("offset", [3, -3])
def test_uncertain_side_moves_onto_the_photo_edge(offset):
    photo, truth, blended, mask = _scene(offset)
    assert (mask != truth).sum() == 180  # 60 rows, 3 px each
    out = snakes.refine(mask, blended, photo)
    rows = slice(40, 80)  # away from the corners, where the clamped ends of the stretch are
    assert (np.flatnonzero(out[60]) == np.arange(40, 120)).all()
    assert (out[rows] == truth[rows]).all()
    assert (out != truth).sum() <= 10
    # The certain sides (left, top, bottom) are pixel-identical to the input.
    assert (out[:, :95] == mask[:, :95]).all()


def test_certain_outline_is_left_alone_and_without_an_edge_a_straight_side_stays():
    photo, _, blended, mask = _scene(3, soft_right=False)
    assert (snakes.refine(mask, blended, photo) == mask).all()  # sharp transition: nothing is uncertain
    photo, _, blended, mask = _scene(3)
    flat = np.full_like(photo, 128)  # an uncertain outline, but no edge in the photo to move to
    out = snakes.refine(mask, blended, flat)
    assert (out[40:80] == mask[40:80]).all()  # only the snake's own stiffness acts: it rounds corners, no more
    outline = mask - cv2.erode(mask, np.ones((3, 3), np.uint8))
    near = cv2.distanceTransform(1 - outline, cv2.DIST_L2, 5) <= snakes.DEFAULTS["max_shift"] + 1
    assert (out != mask).any() and not ((out != mask) & ~near).any()


def test_points_move_at_most_max_shift_and_the_ends_stay():
    start = np.stack([np.full(30, 10.0), np.arange(30.0)], axis=1)  # a vertical line x = 10
    ramp = np.tile(np.arange(40.0), (40, 1)) / 4  # the energy grows to the right everywhere: a constant pull
    p = {**snakes.DEFAULTS, "max_shift": 2.5}
    moved = snakes.snake(start, ramp, p)
    assert (moved[:, 0] <= 12.5 + 1e-9).all()
    np.testing.assert_allclose(moved[6:-6, 0], 12.5)  # clamped at max_shift (nearer the ends, rigidity holds back)
    np.testing.assert_allclose(moved[2:-2, 1], start[2:-2, 1], atol=1e-9)
    np.testing.assert_array_equal(moved[[0, 1, -2, -1]], start[[0, 1, -2, -1]])  # clamped ends


def test_stretches_merge_close_runs_wrap_round_and_keep_certain_ends():
    flags = np.zeros(100, bool)
    flags[10:40] = True
    flags[43:48] = True  # 3 points after the first run: joined to it (gap <= 2 pad)
    flags[90:] = True
    flags[:3] = True  # wraps round the start of the contour
    got = snakes.uncertain_stretches(flags, min_points=5, pad=2)
    assert [s.tolist() for s in got] == [list(range(8, 50)), [88, 89, *range(90, 100), 0, 1, 2, 3, 4]]
    assert snakes.uncertain_stretches(np.ones(50, bool), 5, 2) == []  # no certain end to hold on to
    assert snakes.uncertain_stretches(flags, min_points=40, pad=2) == []


def test_apply_runs_the_step_only_with_the_photo_and_the_blend():
    photo, _, blended, mask = _scene(3)
    with pytest.raises(ValueError, match="'active_contour' needs the blended probabilities and the photo"):
        apply(mask, ["active_contour"])
    params = {"active_contour": snakes.DEFAULTS}
    got = apply(mask, ["fill_holes", "active_contour"], blended, photo, params)
    assert (got == snakes.refine(mask, blended, photo)).all() and (got != mask).any()


def _recipe(path, **over):
    member = {"name": "m", "weight": 1, "checkpoints": ["c.pt"], "checkpoint_sha256": ["0"], "tta": []}
    path.write_text(json.dumps({"threshold": HALF, "members": [{**member, "height": 32, "width": 48}], **over}))
    return path


def test_recipe_with_the_step_needs_valid_parameters(tmp_path):
    good = {"postprocess": ["active_contour"], "postprocess_params": {"active_contour": dict(snakes.DEFAULTS)}}
    assert Recipe.load(_recipe(tmp_path / "ok.json", **good)).postprocess == ("active_contour",)
    bad = {
        "no parameters": ({"postprocess": ["active_contour"]}, "has no parameters for it"),
        "unknown key": ({**good, "postprocess_params": {"active_contour": {**snakes.DEFAULTS, "x": 1}}}, "unknown"),
        "wrong type": (
            {**good, "postprocess_params": {"active_contour": {**snakes.DEFAULTS, "alpha": "0.1"}}},
            "alpha='0.1' is not a number",
        ),
        "fractional count": (
            {**good, "postprocess_params": {"active_contour": {**snakes.DEFAULTS, "iterations": 2.5}}},
            "iterations=2.5 is not a whole number",
        ),
        "unknown step params": ({"postprocess_params": {"snake": {}}}, "postprocess_params for ['snake']"),
    }
    for what, (over, message) in bad.items():
        with pytest.raises(DataError, match="malformed recipe") as e:
            Recipe.load(_recipe(tmp_path / "bad.json", **over))
        assert message in str(e.value), what


def test_stretches_of_several_outlines_move_together_each_onto_its_own_edge():
    """Two cars in one photo, each predicted 3 px off on one soft side (the right of one, the left of
    the other): all stretches are solved as one system, and each lands on its own car's edge."""
    photo = np.full((H, 2 * W, 3), 200, np.uint8)
    truth = np.zeros((H, 2 * W), np.uint8)
    yy, xx = np.mgrid[:H, : 2 * W].astype(np.float64)
    prob = np.zeros((H, 2 * W))
    for x0, x1, soft_left in ((40, 119, False), (200, 279, True)):
        photo[30:90, x0 : x1 + 1] = 60
        truth[30:90, x0 : x1 + 1] = 1
        left, right = (x0 - 3, x1) if soft_left else (x0, x1 + 3)
        dist = np.maximum.reduce([30 - yy, yy - 89, left - xx, xx - right])
        p = 1 / (1 + np.exp(dist / 0.7))
        side = (xx < x0 + 20) if soft_left else (xx > x1 - 20)
        p[side] = 1 / (1 + np.exp(dist[side] / 4))
        near = (xx >= x0 - 20) & (xx <= x1 + 20)
        prob[near] = p[near]
    blended = np.round(prob * 255).astype(np.uint8)
    mask = (blended >= 128).astype(np.uint8)
    assert (mask != truth).sum() == 2 * 180
    out = snakes.refine(mask, blended, photo)
    rows = slice(40, 80)
    assert (out[rows] == truth[rows]).all()
    assert (out != truth).sum() <= 20
