"""The outline refiner (pipeline/masks/outline_refiner.py) as the post-processing
step ``refine_outline``: it redraws only the tiles along the outline, its weights travel checked inside
its parameters, and a step without them is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.masks import outline_refiner as R
from pipeline.masks.postprocess import apply, params_problem

H, W, CORE = 96, 144, 16  # 6 x 9 tiles


def _net(bias: float) -> R.OutlineRefiner:
    """A refiner whose correction is the constant ``bias`` (0: the coarse map unchanged)."""
    torch.manual_seed(0)
    net = R.OutlineRefiner(width=4, dilations=(1, 2))
    with torch.no_grad():
        net.head.bias.fill_(bias)
    return net.eval()


def _case():
    """A rectangle (rows 30..60, columns 40..100), its blend and a photo."""
    mask = np.zeros((H, W), np.uint8)
    mask[30:61, 40:101] = 1
    blended = np.where(mask == 1, 230, 20).astype(np.uint8)
    photo = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return mask, blended, photo


def _tiles(cells) -> np.ndarray:
    out = np.zeros((H, W), bool)
    for r, c in cells:
        out[r * CORE : (r + 1) * CORE, c * CORE : (c + 1) * CORE] = True
    return out


# With band 1 the outline's band is rows 29-30 and 60-61, columns 39-40 and 100-101: tile rows 1 and 3,
# tile columns 2 and 6.
OUTLINE_TILES = {(1, c) for c in range(2, 7)} | {(3, c) for c in range(2, 7)} | {(2, 2), (2, 6)}


def test_zero_correction_keeps_the_mask():
    mask, blended, photo = _case()
    params = R.params_for(_net(0.0), (H, W), core=CORE, band=1, margin=4)
    out = apply(mask, ["refine_outline"], blended=blended, image=photo, params={"refine_outline": params})
    assert out.dtype == np.uint8 and np.array_equal(out, mask)


@pytest.mark.parametrize("bias, value", [(20.0, 1), (-20.0, 0)])
def test_only_the_tiles_along_the_outline_are_redrawn(bias, value):
    mask, blended, photo = _case()
    params = R.params_for(_net(bias), (H, W), core=CORE, band=1, margin=4)
    assert {tuple(c) for c in R.outline_tiles(mask, CORE, 1)} == OUTLINE_TILES
    out = R.refine_outline(mask, blended, photo, params)
    tiles = _tiles(OUTLINE_TILES)
    assert (out[tiles] == value).all()  # every pixel of those tiles redrawn
    assert np.array_equal(out[~tiles], mask[~tiles])  # nothing else touched
    assert np.array_equal(mask, _case()[0])  # the input is not modified


def test_parameters_are_checked():
    params = R.params_for(_net(0.0))
    assert params_problem("refine_outline", params) is None
    assert params["sha256"] and len(params["weights"]) > 1000
    tampered = dict(params, weights=params["weights"][:-8] + "AAAAAAA=")
    assert "sha256" in params_problem("refine_outline", tampered)
    assert "missing" in params_problem("refine_outline", {k: v for k, v in params.items() if k != "weights"})
    assert "unknown key" in params_problem("refine_outline", dict(params, speed=2))
    assert "core" in params_problem("refine_outline", dict(params, core=0))
    assert "disagree with its weights" in params_problem("refine_outline", dict(params, dilations=[1, 2, 4]))
    assert "dilations" in params_problem("refine_outline", dict(params, dilations=[]))
    assert "cannot be loaded" in params_problem("refine_outline", dict(params, weights="AAAA", sha256=_sha("AAAA")))
    assert "object" in params_problem("refine_outline", None)


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def test_the_step_needs_its_parameters_the_photo_and_one_size():
    mask, blended, photo = _case()
    with pytest.raises(ValueError, match="refine_outline"):
        apply(mask, ["refine_outline"], blended=blended, image=photo, params={})
    with pytest.raises(ValueError, match="refine_outline"):
        apply(mask, ["refine_outline"], params={"refine_outline": R.params_for(_net(0.0))})
    with pytest.raises(ValueError, match="differ in size"):
        R.refine_outline(mask, blended[:-1], photo, R.params_for(_net(0.0), (H, W)))


def _gradient_tiles(mask: np.ndarray, core: int, band: int) -> set:
    """The tiles as the full-size morphological gradient marks them (the definition ``outline_tiles`` keeps)."""
    import cv2

    edge = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((2 * band + 1, 2 * band + 1), np.uint8))
    return {(y // core, x // core) for y, x in np.argwhere(edge)}


@pytest.mark.parametrize("shape, core, band", [((96, 144), 16, 1), ((50, 77), 16, 3), ((37, 23), 8, 5), ((5, 9), 8, 2)])
def test_outline_tiles_are_those_of_the_gradient(shape, core, band):
    rng = np.random.default_rng(sum(shape) + core + band)
    for density in (0.0, 0.002, 0.05, 0.5, 1.0):
        mask = (rng.random(shape) < density).astype(np.uint8)
        for m in (mask, mask.astype(bool), mask * 255):
            assert {tuple(c) for c in R.outline_tiles(m, core, band)} == _gradient_tiles(m, core, band)


@pytest.mark.parametrize(
    "shape, core, margin", [((96, 144), 16, 4), ((50, 77), 16, 8), ((5, 9), 8, 12), ((1, 3), 4, 6)]
)
def test_tiles_are_those_of_the_reflect_padded_photo(shape, core, margin):
    """Every tile, the border ones too (margins longer than the photo reflect again), is the window of the
    photo padded whole with cv2.copyMakeBorder's BORDER_REFLECT."""
    import cv2

    h, w = shape
    gh, gw, k = -(-h // core), -(-w // core), core + 2 * margin
    H, W = gh * core + 2 * margin, gw * core + 2 * margin
    photo = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cells = np.argwhere(np.ones((gh, gw), bool))
    ry, rx = R._reflected(h, H, margin), R._reflected(w, W, margin)
    for src in (photo, photo[..., 0].copy()):
        padded = cv2.copyMakeBorder(src, margin, H - h - margin, margin, W - w - margin, cv2.BORDER_REFLECT)
        expected = np.stack([padded[r * core : r * core + k, c * core : c * core + k] for r, c in cells])
        assert np.array_equal(R._tile_batch(src, cells, core, margin, ry, rx), expected)
