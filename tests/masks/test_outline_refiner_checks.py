"""The outline refiner is checked like the network's weights wherever it is read: finite weights, its
architecture bound to the weights (the blob's tensors and metadata, never pipeline.json's say), applied only
at about the scale it was trained at, and a tiling whose memory is bounded."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.masks import outline_refiner as R
from pipeline.masks.postprocess import apply, chain_problem, params_problem

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "carvana-unet-mobilenetv2"
H, W = 96, 144


def _net(dilations=(1, 2), **change) -> R.OutlineRefiner:
    torch.manual_seed(0)
    net = R.OutlineRefiner(width=4, dilations=dilations)
    with torch.no_grad():
        for key, value in change.items():
            *path, last = key.split(".")
            module = net
            for p in path:
                module = module[int(p)] if p.isdigit() else getattr(module, p)
            getattr(module, last).view(-1)[0] = value
    return net.eval()


def _case():
    mask = np.zeros((H, W), np.uint8)
    mask[30:61, 40:101] = 1
    blended = np.where(mask == 1, 230, 20).astype(np.uint8)
    photo = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return mask, blended, photo


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"body.0.weight": float("nan")}, "body.0.weight holds 1 non-finite"),
        ({"head.bias": float("inf")}, "head.bias holds 1 non-finite"),
        ({"body.1.running_var": -0.5}, "body.1.running_var holds a negative variance"),
        ({"body.4.running_mean": float("-inf")}, "body.4.running_mean holds 1 non-finite"),
    ],
)
def test_weights_that_are_not_finite_are_refused_wherever_the_step_is_read(change, problem):
    params = R.params_for(_net(**change), (H, W), core=16, band=1, margin=4)
    assert problem in params_problem("refine_outline", params)
    assert problem in chain_problem(["refine_outline"], {"refine_outline": params})  # recipes and pipeline.json
    mask, blended, photo = _case()
    with pytest.raises(ValueError, match="non-finite|negative variance"):
        apply(mask, ["refine_outline"], blended=blended, image=photo, params={"refine_outline": params})
    with pytest.raises(ValueError, match="non-finite|negative variance"):
        R.params_from_state(_net((1, 2, 4, 8), **change).state_dict())  # how `export --refiner` reads a file


def _reblob(params: dict, state: dict, meta: dict | None) -> dict:
    """``params`` with another blob, its sha256 recomputed (an edited folder)."""
    from safetensors.torch import save

    text = base64.b64encode(save(state, metadata=meta)).decode()
    return dict(params, weights=text, sha256=hashlib.sha256(text.encode()).hexdigest())


def test_the_architecture_is_the_one_bound_to_the_weights():
    params = R.params_for(_net(), (H, W))
    assert params["width"] == 4 and params["dilations"] == [1, 2]
    assert params_problem("refine_outline", params) is None
    for edit in ({"dilations": [2, 4]}, {"dilations": [1, 2, 4]}, {"width": 8}):
        assert "disagree with its weights" in params_problem("refine_outline", dict(params, **edit))
    # Without the two keys, the blob alone says what to run.
    bare = {k: v for k, v in params.items() if k not in ("width", "dilations")}
    assert params_problem("refine_outline", bare) is None and R.architecture_of(R.network(bare)) == (4, (1, 2))
    state = {k: v.float() for k, v in _net().state_dict().items()}
    meta = R._metadata(base64.b64decode(params["weights"]))
    lying = _reblob(params, state, {**meta, "dilations": "1,2,4"})  # the metadata is not the tensors'
    assert "dilations for 2 dilated layers" in params_problem("refine_outline", lying)
    # A blob without metadata (written before it was recorded) is read as the default network, and only as it.
    legacy_net = R.OutlineRefiner(width=4)
    legacy = _reblob(R.params_for(legacy_net), {k: v.float() for k, v in legacy_net.state_dict().items()}, None)
    assert params_problem("refine_outline", legacy) is None
    assert "disagree" in params_problem("refine_outline", dict(legacy, dilations=[2, 4, 8, 16]))
    short = _reblob(params, state, None)  # two dilated layers and no record of their dilations
    assert "no record of their dilations" in params_problem("refine_outline", short)


def test_the_shipped_folder_s_refiner_is_the_network_its_blob_implies():
    spec = json.loads((SHIPPED / "pipeline.json").read_text())
    params = spec["postprocess_params"]["refine_outline"]
    assert R._metadata(base64.b64decode(params["weights"])) == {}  # written before the metadata was recorded
    assert params_problem("refine_outline", params) is None
    assert R.architecture_of(R.network(params)) == (16, (1, 2, 4, 8)) and R.trained_size(params) == (1280, 1918)
    for dilations in ([2, 4, 8, 16], [1, 1, 1, 1], [1, 2, 4]):
        assert "disagree with its weights" in params_problem("refine_outline", dict(params, dilations=dilations))
    assert "disagree" in params_problem("refine_outline", dict(params, width=8))


def test_a_portrait_or_squeezed_photo_is_off_its_scale():
    params = R.params_for(_net(), (1280, 1918))
    assert R.scale_problem((1280, 1918), params) is None and R.scale_problem((1792, 2685), params) is None
    assert "1280x1918 is 0.67 times the width and 1.50 times the height" in R.scale_problem((1918, 1280), params)
    assert R.scale_problem((640, 1918), params) is not None  # squeezed to half the height


def test_it_is_applied_only_near_the_scale_it_was_trained_at(capsys):
    mask, blended, photo = _case()
    erase = R.params_for(_net(**{"head.bias": -20.0}), (H, W), core=16, band=1, margin=4)
    assert R.scale_problem((H, W), erase) is None
    assert (R.refine_outline(mask, blended, photo, erase) != mask).any()  # applied: the outline's tiles redrawn
    lo, hi = R.SCALE_BAND
    for size in ((round(H / lo) + 2, round(W / lo) + 2), (round(H * lo) - 2, round(W * lo) - 2)):
        params = R.params_for(_net(**{"head.bias": -20.0}), size, core=16, band=1, margin=4)
        assert "times the width" in R.scale_problem((H, W), params)
        capsys.readouterr()
        for _ in range(3):  # a note once, not once per photo
            assert np.array_equal(R.refine_outline(mask, blended, photo, params), mask)
        err = capsys.readouterr().err
        assert err.count("note: refine_outline skipped") == 1 and f"{W}x{H} is" in err


@pytest.mark.parametrize(
    "geometry, problem",
    [
        ({"core": 4096}, "core 4096"),
        ({"margin": 4000}, "margin 4000"),
        ({"batch": 4096}, "batch 4096"),
        ({"band": 900}, "band 900"),
        ({"core": 256, "margin": 64, "batch": 256}, "MiB per layer"),
        ({"dilations": [1] * 40}, "dilations"),
    ],
)
def test_a_tiling_that_would_allocate_gigabytes_is_refused(geometry, problem):
    params = dict(R.params_for(_net(), (H, W)), **geometry)
    assert problem in params_problem("refine_outline", params)
