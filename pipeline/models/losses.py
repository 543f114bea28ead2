"""Losses by name (``train.loss``), composable by addition: ``"dice+mse+gradient"``.

Terms (each a mean over the batch; all computed in fp32 even under AMP):

- ``bce``, ``mse``: binary cross-entropy on the logits, squared error on the probabilities.
- ``bce_<w>``, ``mse_<w>``: the same, each pixel weighted by a map computed on the fly from the
  target (and image), after Heitzinger & Kampel, "Highly Accurate Binary Image Segmentation for
  Cars":
    * ``mfb``      median-frequency balancing per sample: car pixels N/(2 sum t), background
                   N/(2 sum (1-t)), so both classes weigh the same in every image;
    * ``boundary`` boundary proximity, w = 1 + 5 ||grad_sigma t||^2;
    * ``ratio``    gradient ratio, w = 1 + 0.1 ||grad_sigma t||^2 / (||grad_sigma x||^2 + eps):
                   heavy where the mask has an edge that the photo hardly shows (shadows, dark
                   tyres on dark floor), light where the photo's own edge gives it away.
- ``dice``: 1 - soft Dice per image (small epsilon), averaged over images.
- ``gradient``: the Gradient Loss, MSE between grad_sigma p and grad_sigma t (use it with others).
- ``bce_dice``: ``bce+dice``, the 2017 winners' loss.

grad_sigma is a frozen convolution with the two partial derivatives of a normalised 2-D Gaussian
(kernel 2*ceil(2 sigma)+1 wide); on the RGB image it gives 6 maps (3 channels x 2 derivatives).
Weights are computed without gradient. Images arrive as RGB in 0..255 and are scaled to 0..1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SIGMA = 1.0  # of grad_sigma, in pixels at training resolution
BOUNDARY_C = 5.0
RATIO_C = 0.1
RATIO_EPS = 1e-3  # ||grad x||^2 of a faint edge is ~1e-3 (0..1 RGB): bounds w near 17 on flat photo areas
DICE_EPS = 1e-3


def gaussian_derivative_kernels(sigma: float = SIGMA) -> torch.Tensor:
    """(2, 1, k, k): d/dy and d/dx of a 2-D Gaussian sampled on the integers and normalised to sum 1."""
    r = max(1, math.ceil(2 * sigma))
    ax = torch.arange(-r, r + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    g = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    g = g / g.sum()
    # F.conv2d is a cross-correlation: the kernel x/sigma^2 g (the flipped -x/sigma^2 g) gives +d/dx.
    dy, dx = yy / sigma**2 * g, xx / sigma**2 * g
    return torch.stack([dy, dx])[:, None].float()


class GaussianGradient(nn.Module):
    """grad_sigma as a frozen conv: (B, C, H, W) -> (B, 2C, H, W), replicate padding at the borders."""

    def __init__(self, sigma: float = SIGMA):
        super().__init__()
        self.register_buffer("kernel", gaussian_derivative_kernels(sigma), persistent=False)
        self.pad = self.kernel.shape[-1] // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x.float(), (self.pad,) * 4, mode="replicate")
        return F.conv2d(x, self.kernel.repeat(c, 1, 1, 1), groups=c)


def squared_norm(g: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) gradient maps -> (B, 1, H, W) sum of squares over the maps."""
    return (g * g).sum(1, keepdim=True)


class Loss(nn.Module):
    """A sum of named terms; ``forward(logits, target, image)`` with image RGB 0..255 (B,3,H,W)."""

    def __init__(self, name: str, sigma: float = SIGMA):
        super().__init__()
        self.name = name
        self.terms = [t.strip() for t in name.split("+")]
        unknown = [t for t in self.terms if t not in TERMS]
        if unknown or not name.strip():
            raise ValueError(
                f"unknown loss term(s) {unknown or [name]} in {name!r}; terms: {sorted(TERMS)}, joined by '+'"
            )
        self.grad = GaussianGradient(sigma)

    def weights(self, kind: str, t: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """Pixel weight map (B,1,H,W) of the given kind, without gradient."""
        with torch.no_grad():
            if kind == "mfb":
                n = t[0].numel()
                fg = t.sum((1, 2, 3), keepdim=True)
                bg = n - fg
                # A sample with one class only (no car, or all car) is left unweighted.
                both = (fg > 0) & (bg > 0)
                w_fg = torch.where(both, n / (2 * fg.clamp(min=1)), torch.ones_like(fg))
                w_bg = torch.where(both, n / (2 * bg.clamp(min=1)), torch.ones_like(bg))
                return t * w_fg + (1 - t) * w_bg
            gt = squared_norm(self.grad(t))
            if kind == "boundary":
                return 1 + BOUNDARY_C * gt
            if kind == "ratio":
                if image is None:
                    raise ValueError("the 'ratio' weighting needs the input image")
                gx = squared_norm(self.grad(image.float() / 255))
                return 1 + RATIO_C * gt / (gx + RATIO_EPS)
        raise ValueError(f"unknown weighting {kind!r}")

    def term(self, name: str, logits: torch.Tensor, t: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        base, _, kind = name.partition("_")
        if name == "dice":
            p = torch.sigmoid(logits).flatten(1)
            tf = t.flatten(1)
            dice = (2 * (p * tf).sum(1) + DICE_EPS) / (p.sum(1) + tf.sum(1) + DICE_EPS)
            return (1 - dice).mean()
        if name == "gradient":
            return F.mse_loss(self.grad(torch.sigmoid(logits)), self.grad(t))
        if base == "bce":
            per_pixel = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        else:  # mse
            per_pixel = (torch.sigmoid(logits) - t) ** 2
        if kind:
            per_pixel = per_pixel * self.weights(kind, t, image)
        return per_pixel.mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        return sum(self.term(n, logits, target, image) for n in _expand(self.terms))


def _expand(terms: list[str]) -> list[str]:
    return [x for t in terms for x in (("bce", "dice") if t == "bce_dice" else (t,))]


TERMS = {
    f"{base}{'_' + kind if kind else ''}" for base in ("bce", "mse") for kind in ("", "mfb", "boundary", "ratio")
} | {"dice", "gradient", "bce_dice"}


def get_loss(name: str) -> Loss:
    return Loss(name)
