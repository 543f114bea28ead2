"""Losses: weight maps and the Gradient Loss on constructed masks (known values, zero where the mask
is constant), composition by name, and gradients that reach the logits."""

import math

import pytest
import torch

from pipeline.models.losses import BOUNDARY_C, RATIO_C, RATIO_EPS, TERMS, GaussianGradient, Loss, get_loss


def _step(h=12, w=16, col=8) -> torch.Tensor:
    """(1,1,h,w) target: car (1) in the columns >= col."""
    t = torch.zeros(1, 1, h, w)
    t[..., col:] = 1
    return t


def _edge_response(sigma: float = 1.0) -> float:
    """d/dx of the normalised Gaussian at the pixel just left of a rising unit step, by hand:
    sum over k >= 1 of k/sigma^2 g(k) / sum_k g(k), with g(k) = exp(-k^2 / (2 sigma^2)), |k| <= 2 sigma."""
    r = math.ceil(2 * sigma)
    g = {k: math.exp(-(k**2) / (2 * sigma**2)) for k in range(-r, r + 1)}
    return sum(k / sigma**2 * g[k] for k in range(1, r + 1)) / sum(g.values())


def test_gaussian_gradient_of_a_step_has_the_known_value_and_is_zero_where_constant():
    g = GaussianGradient(1.0)(_step())  # (1, 2, h, w): d/dy, d/dx
    assert g.shape == (1, 2, 12, 16)
    assert torch.allclose(g[0, 1, 6, 7], torch.tensor(_edge_response()), atol=1e-6)
    assert torch.allclose(g[0, 1, 6, 8], torch.tensor(_edge_response()), atol=1e-6)  # symmetric step
    assert g[0, 1, 6, 7] > 0  # a real derivative: positive on a rising edge
    assert g[0, 0].abs().max() < 1e-7  # no vertical change
    assert g[0, 1, :, :5].abs().max() < 1e-7 and g[0, 1, :, 11:].abs().max() < 1e-7  # flat far from the edge
    assert g.shape[1] == 2 and GaussianGradient(1.0)(torch.rand(2, 3, 8, 8)).shape == (2, 6, 8, 8)


def test_mfb_weights_balance_the_classes_per_sample():
    t = torch.zeros(2, 1, 4, 4)
    t[0, 0, :2, :2] = 1  # 4 of 16 pixels
    t[1, 0] = 1  # all car: one class only, weight 1
    w = Loss("bce_mfb").weights("mfb", t, None)
    assert torch.allclose(w[0, 0][t[0, 0] == 1], torch.tensor(16 / (2 * 4)))
    assert torch.allclose(w[0, 0][t[0, 0] == 0], torch.tensor(16 / (2 * 12)))
    assert torch.allclose(w[0].sum(), torch.tensor(16.0))  # both classes weigh N/2
    assert torch.all(w[1] == 1)


def test_boundary_weights_known_value_and_one_where_the_mask_is_constant():
    t = _step()
    w = Loss("bce_boundary").weights("boundary", t, None)
    assert torch.allclose(w[0, 0, 6, 7], torch.tensor(1 + BOUNDARY_C * _edge_response() ** 2), atol=1e-6)
    assert torch.allclose(w[..., :5], torch.tensor(1.0)) and torch.allclose(w[..., 11:], torch.tensor(1.0))
    assert torch.allclose(Loss("bce_boundary").weights("boundary", torch.ones(1, 1, 8, 8), None), torch.tensor(1.0))


def test_ratio_weights_are_high_where_the_photo_has_no_edge_and_low_where_it_has_one():
    t = _step()
    flat = torch.full((1, 3, 12, 16), 128.0)
    edged = flat.clone()
    edged[..., 8:] = 255.0  # the photo shows the same edge as the mask
    loss = Loss("bce_ratio")
    w_flat = loss.weights("ratio", t, flat)
    w_edged = loss.weights("ratio", t, edged)
    assert torch.allclose(w_flat[0, 0, 6, 7], torch.tensor(1 + RATIO_C * _edge_response() ** 2 / RATIO_EPS), atol=1e-4)
    gx2 = 3 * (_edge_response() * 127 / 255) ** 2  # 3 channels, each a step of 127/255
    assert torch.allclose(w_edged[0, 0, 6, 7], torch.tensor(1 + RATIO_C * _edge_response() ** 2 / (gx2 + RATIO_EPS)))
    assert torch.allclose(w_flat[..., :5], torch.tensor(1.0))
    with pytest.raises(ValueError, match="image"):
        loss(torch.zeros(1, 1, 12, 16), t)


def test_gradient_loss_is_zero_for_a_perfect_prediction_and_where_the_mask_is_constant():
    t = _step()
    perfect = torch.where(t > 0, torch.tensor(50.0), torch.tensor(-50.0))  # sigmoid = t to float precision
    assert Loss("gradient")(perfect, t) < 1e-12
    # A constant prediction on a constant target: no gradient anywhere, however wrong the values are.
    assert Loss("gradient")(torch.full((1, 1, 8, 8), 3.0), torch.zeros(1, 1, 8, 8)) < 1e-12
    # A blurred prediction of the step is penalised.
    assert Loss("gradient")(torch.zeros(1, 1, 12, 16), t) > 0


def test_composites_add_their_terms_and_bce_dice_is_bce_plus_dice():
    torch.manual_seed(0)
    logits, t, x = torch.randn(2, 1, 12, 16), _step().repeat(2, 1, 1, 1), torch.rand(2, 3, 12, 16) * 255
    parts = [Loss(n)(logits, t, x) for n in ("dice", "mse", "gradient")]
    assert torch.allclose(Loss("dice+mse+gradient")(logits, t, x), sum(parts))
    assert torch.allclose(Loss("bce_dice")(logits, t), Loss("bce+dice")(logits, t))
    with pytest.raises(ValueError, match="unknown loss term"):
        get_loss("dice+focal")


@pytest.mark.parametrize("name", sorted(TERMS) + ["dice+mse+gradient", "dice+bce_boundary+gradient"])
def test_gradients_flow_to_the_logits(name):
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 12, 16, requires_grad=True)
    loss = get_loss(name)(logits, _step().repeat(2, 1, 1, 1), torch.rand(2, 3, 12, 16) * 255)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
