"""Test-time augmentation (pipeline/inference/tta.py): scaled views come back to the input's frame."""

import pytest
import torch

from pipeline.inference.engine import Engine, Member
from pipeline.inference.tta import TTAS, resolve


@pytest.mark.parametrize("name", ["scale0.75", "scale1.25"])
def test_scale_views_come_back_to_the_input_size(name):
    forward, inverse = TTAS[name]
    x = torch.rand(2, 3, 320, 480)
    y = forward(x)
    assert y.shape[-2:] != x.shape[-2:]
    assert inverse(y).shape == x.shape


def test_multi_scale_views_are_averaged_in_the_original_frame():
    # A per-pixel model on a left-to-right ramp: every view, brought back, sees the same ramp, so the
    # average matches the plain prediction; a view left flipped or shifted would not.
    model = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        model.weight.fill_(4.0)
        model.bias.fill_(-6.0)
    ramp = torch.linspace(0, 1, 48).expand(1, 3, 32, 48).clone()
    cpu = torch.device("cpu")
    one, multi = Member("a", [model], 32, 48, []), Member("b", [model], 32, 48, ["hflip", "scale0.75", "scale1.25"])
    p0 = Engine([one], cpu).member_probs(one, ramp)
    p1 = Engine([multi], cpu).member_probs(multi, ramp)
    assert p1.shape == p0.shape == (1, 1, 32, 48)
    inner = (..., slice(2, -2), slice(2, -2))
    assert (p1[inner] - p0[inner]).abs().max() < 0.01
    assert (p1[inner] - p0[inner].flip(-1)).abs().max() > 0.5  # the check can fail
    assert len(resolve(multi.tta)) == 4
