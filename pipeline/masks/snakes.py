"""Active contours on the uncertain stretches of a car's outline (Heitzinger & Kampel, section 4.4).

The adaptive smoothing (``postprocess.smooth_contour``) treats every contour point alike. The paper
also refines the *uncertain* stretches, where the network's probability changes slowly across the
outline instead of jumping from 0 to 1, with a snake (Kass, Witkin and Terzopoulos, 1988) that is
pulled onto the photo's edges. Here, for every contour of the thresholded mask:

1. Uncertainty of a contour point: the width in pixels of the probability's transition across it,
   HALF / |grad blend| (half the uint8 scale over the slope: the distance over which the probability
   would go from 0.25 to 0.75 at the local slope). A network's sharp step, bilinearly upsampled from its
   input size, is a few pixels wide at full resolution; a model trained briefly is blurrier everywhere.
2. Uncertain stretches: runs of at least ``min_points`` contour points whose width is at least
   ``min_width`` px and at least ``width_ratio`` times the median width of the image's outline (what
   is unusually uncertain for this model on this image), joined across short gaps and extended by
   ``pad`` points on each side so that both ends sit on certain outline; the first and last two
   points of a stretch stay fixed (clamped ends), and stretches touching the image frame are left.
3. Each stretch is an open snake: internal energy with elasticity ``alpha`` and rigidity ``beta``,
   external energy ``-E`` with E = g^2 / (g^2 + edge_scale^2), g^2 the squared colour gradient of
   the photo smoothed with a Gaussian of ``sigma`` pixels (a saturating edge strength in [0, 1), so
   no per-image normalisation is needed). Semi-implicit steps (A + gamma I) x' = gamma x + kappa dE,
   ``iterations`` times, each point kept within ``max_shift`` pixels of where it started.
4. The moved stretches replace their points and every contour is rasterised back
   (``contours.rasterize_contours``): the rest of the outline stays pixel-identical.

The step needs the photo and the blended probabilities, not only the mask, so it is not one of the
mask-only steps of ``postprocess.POSTPROCESS``: ``postprocess.apply(..., blended=, image=, params=)``
runs it. Its parameters are written into the recipe (``postprocess_params``).
Written with NumPy, SciPy and OpenCV (scikit-image's ``active_contour`` has no per-point clamping
and is not a dependency here).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.linalg import get_lapack_funcs

from .contours import find_contours, rasterize_contours
from .probability import HALF

STEP = "active_contour"
# Chosen on the out-of-fold maps of fold 0 of quick real-car models and checked on folds 1-4
# (docs/record/post-processing.md, "Active contours"; docs/scripts/active_contour_sweep.py).
DEFAULTS: dict[str, float] = {
    "min_width": 4.0,  # px of transition width from which a contour point may be uncertain...
    "width_ratio": 0.8,  # ...if also this many times the image's median width along its outline
    "min_points": 20,  # shortest uncertain stretch refined (contour points, about px)
    "pad": 5,  # certain points added at both ends of a stretch; runs closer than 2 pad are joined
    "sigma": 1.5,  # Gaussian smoothing of the photo before its gradient (px)
    "edge_scale": 20.0,  # gradient (grey levels / px) at which the edge strength is 1/2
    "alpha": 0.1,  # elasticity
    "beta": 1.0,  # rigidity
    "gamma": 1.0,  # inverse step size
    "kappa": 8.0,  # weight of the photo's edges
    "iterations": 200,
    "max_shift": 8.0,  # px a point may move from where it started
}
_INTEGER = {"min_points", "pad", "iterations"}


def params_problem(params) -> str | None:
    """What is wrong with a parameter dict (as a recipe holds it), or None: every key of DEFAULTS, a number each."""
    if not isinstance(params, dict):
        return f"{params!r} is not an object of parameters"
    missing, unknown = sorted(set(DEFAULTS) - set(params)), sorted(set(params) - set(DEFAULTS))
    if missing or unknown:
        return f"missing {missing}, unknown {unknown}; expected exactly {sorted(DEFAULTS)}"
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            return f"{key}={value!r} is not a number"
        if key in _INTEGER and value != int(value):
            return f"{key}={value!r} is not a whole number"
        if value < 0:
            return f"{key}={value!r} is negative"
    if params["gamma"] <= 0 or params["edge_scale"] <= 0:
        return "gamma and edge_scale must be positive"
    return None


def transition_width(blended: np.ndarray, points: np.ndarray) -> np.ndarray:
    """At (x, y) integer ``points``: HALF / |grad blend| in px, the Sobel gradient of the uint8 blend over
    its 3x3 neighbourhood (capped at 1e4 px where the blend is flat)."""
    x, y = points[:, 0].astype(int), points[:, 1].astype(int)
    h, w = blended.shape
    pad = np.pad(blended.astype(np.float32), 1, mode="edge")
    win = np.stack([pad[y + dy, x + dx] for dy in range(3) for dx in range(3)]).reshape(3, 3, -1)
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)[..., None] / 8
    gx, gy = (win * kx).sum((0, 1)), (win * kx.transpose(1, 0, 2)).sum((0, 1))
    return HALF / np.maximum(np.hypot(gx, gy), HALF / 1e4)


def uncertain_stretches(flags: np.ndarray, min_points: int, pad: int) -> list[np.ndarray]:
    """Index arrays (in contour order, wrapping round) of the stretches to refine on a closed contour.

    Runs of True closer than ``2 pad`` points are joined (so extended stretches never overlap), kept
    if at least ``min_points`` long and extended by ``pad`` points each side. A stretch that would
    cover the whole contour is dropped: a snake needs certain ends to hold on to.
    """
    flags = np.asarray(flags, dtype=bool)
    n = len(flags)
    if n == 0 or flags.all() or not flags.any():
        return []
    edges = np.flatnonzero(np.diff(np.r_[0, flags.astype(np.int8), 0]))
    runs = [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2])]  # [begin, end)
    merged: list[list[int]] = []
    for a, b in runs:
        if merged and a - merged[-1][1] <= 2 * pad:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    if len(merged) > 1 and merged[0][0] + n - merged[-1][1] <= 2 * pad:  # the contour is closed
        merged[-1][1] = merged.pop(0)[1] + n
    return [np.arange(a - pad, b + pad) % n for a, b in merged if b - a >= min_points and b - a + 2 * pad < n]


def edge_energy(image: np.ndarray, sigma: float, edge_scale: float) -> np.ndarray:
    """E = g^2 / (g^2 + edge_scale^2) of an RGB (or grey) uint8 image; g^2 summed over channels."""
    img = image.astype(np.float32)
    if sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8
    g2 = gx * gx + gy * gy
    if g2.ndim == 3:
        g2 = g2.sum(axis=2)
    return g2 / (g2 + np.float32(edge_scale) ** 2)


def _banded_system(n: int, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """(A + gamma I) of an open snake with clamped ends (first and last two points fixed), banded (5, n)."""
    ab = np.zeros((5, n))
    ab[2] = gamma  # fixed rows: gamma x' = gamma x
    stencil = (beta, -alpha - 4 * beta, 2 * alpha + 6 * beta + gamma, -alpha - 4 * beta, beta)
    for i in range(2, n - 2):
        for offset, w in zip(range(-2, 3), stencil):
            ab[2 - offset, i + offset] = w  # LAPACK band layout: ab[u + i - j, j] = a[i, j]
    return ab


class _BandedSolver:
    """Solves (A + gamma I) x' = rhs for many right-hand sides: the matrix is LU-factored once.

    LAPACK's gbtrf/gbtrs directly: scipy's solve_banded re-checks and re-factors on every call,
    which was most of the step's time (a snake solves the same system once per iteration).
    """

    def __init__(self, ab: np.ndarray):
        self.gbtrf, self.gbtrs = get_lapack_funcs(("gbtrf", "gbtrs"), (ab,))
        work = np.zeros((7, ab.shape[1]))  # kl extra rows on top for the fill-in of the pivoting
        work[2:] = ab
        self.lu, self.piv, info = self.gbtrf(work, 2, 2)
        if info != 0:
            raise np.linalg.LinAlgError(f"snake system is singular (gbtrf info {info})")

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        x, info = self.gbtrs(self.lu, 2, 2, rhs, self.piv)
        if info != 0:
            raise np.linalg.LinAlgError(f"gbtrs info {info}")
        return x


def _bilinear(gx: np.ndarray, gy: np.ndarray, offset: np.ndarray, w: np.ndarray, h: np.ndarray, x: np.ndarray):
    """Bilinear samples (n, 2) of the gradient at the points x (n, 2) of (x, y), edges extended (clamped).

    ``gx``, ``gy``: the gradient crops of all snakes, each flattened and concatenated; point k reads
    its snake's crop, which starts at ``offset[k]`` and is ``w[k]`` x ``h[k]``. 1-D takes: about
    twice as fast as gathering rows of an (M, 2) array.
    """
    px = np.minimum(np.maximum(x[:, 0], 0), w - 1.001)  # 1.001: the corner at +1 stays inside
    py = np.minimum(np.maximum(x[:, 1], 0), h - 1.001)
    x0, y0 = px.astype(np.intp), py.astype(np.intp)
    fx, fy = px - x0, py - y0
    i = offset + y0 * w + x0
    j = i + w
    out = np.empty_like(x)
    for c, g in enumerate((gx, gy)):
        a, b = g.take(i), g.take(j)
        top = a + (g.take(i + 1) - a) * fx
        bottom = b + (g.take(j + 1) - b) * fx
        out[:, c] = top + (bottom - top) * fy
    return out


# The snakes have converged when no point moved more than this (px) in an iteration.
CONVERGED = 1e-3


def snakes(curves: list[tuple[np.ndarray, np.ndarray]], p: dict) -> list[np.ndarray]:
    """Move open curves (n, 2) of (x, y) points onto the ridges of their ``energy`` crops, all at once.

    ``curves``: (points, energy) pairs, points in the crop's coordinates. The curves are independent:
    one block-diagonal banded system (factored once) and one gather per iteration serve them all,
    so an image's dozen stretches cost one snake's Python overhead. At most ``iterations`` steps;
    it stops early once no point moves more than ``CONVERGED`` px.
    """
    out = [pts.astype(np.float64) for pts, _ in curves]
    live = [k for k, (pts, e) in enumerate(curves) if len(pts) >= 5 and min(e.shape) >= 2]
    if not live:
        return out
    sizes = [len(curves[k][0]) for k in live]
    system = _BandedSolver(np.concatenate([_banded_system(n, p["alpha"], p["beta"], p["gamma"]) for n in sizes], 1))
    grads, offset, w, h, fixed = [], [], [], [], []
    rows = 0
    for k, n in zip(live, sizes):
        energy = curves[k][1].astype(np.float64)
        dy, dx = np.gradient(energy)
        grads.append((dx.ravel(), dy.ravel()))
        offset.append(np.full(n, rows))
        w.append(np.full(n, energy.shape[1]))
        h.append(np.full(n, energy.shape[0]))
        f = np.zeros(n, bool)
        f[:2] = f[n - 2 :] = True  # clamped ends
        fixed.append(f)
        rows += energy.size
    gx, gy = (np.concatenate(g) for g in zip(*grads))
    offset, w, h, fixed = (np.concatenate(a) for a in (offset, w, h, fixed))
    start = np.concatenate([out[k] for k in live])
    x = start.copy()
    pull = p["kappa"] * ~fixed[:, None]
    for _ in range(int(p["iterations"])):
        new = system.solve(p["gamma"] * x + pull * _bilinear(gx, gy, offset, w, h, x))
        shift = new - start
        dist = np.hypot(shift[:, 0], shift[:, 1])
        over = dist > p["max_shift"]
        if over.any():
            new[over] = start[over] + shift[over] * (p["max_shift"] / dist[over])[:, None]
        new[fixed] = start[fixed]
        moved = np.abs(new - x).max()
        x = new
        if moved < CONVERGED:
            break
    for k, part in zip(live, np.split(x, np.cumsum(sizes)[:-1])):
        out[k] = part
    return out


def snake(points: np.ndarray, energy: np.ndarray, p: dict) -> np.ndarray:
    """One open curve (n, 2) moved onto the ridges of ``energy`` (see ``snakes``)."""
    return snakes([(points, energy)], p)[0]


def outward_normals(contour: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unit normals (n, 2) of a closed contour of ``mask`` pointing away from the car (to the background).

    Tangents by central differences over 2 points each side (8-connected chains turn in 45 degree
    steps); the side is chosen per contour by where the mask is background one pixel away.
    """
    t = np.roll(contour, -2, axis=0) - np.roll(contour, 2, axis=0)
    n = np.stack([t[:, 1], -t[:, 0]], axis=1)
    n /= np.maximum(np.hypot(n[:, 0], n[:, 1]), 1e-9)[:, None]
    h, w = mask.shape
    probe = np.round(contour + n).astype(int)
    inside = mask[np.clip(probe[:, 1], 0, h - 1), np.clip(probe[:, 0], 0, w - 1)] > 0
    return -n if inside.mean() > 0.5 else n


def refine(mask: np.ndarray, blended: np.ndarray, image: np.ndarray, params: dict | None = None) -> np.ndarray:
    """The step: the mask with its uncertain contour stretches moved onto the photo's edges (uint8 0/1)."""
    p = {**DEFAULTS, **(params or {})}
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    h, w = mask.shape
    if blended.shape != mask.shape or image.shape[:2] != mask.shape:
        raise ValueError(f"active_contour: mask {mask.shape}, blend {blended.shape}, photo {image.shape[:2]} differ")
    contours, depth = find_contours(mask)
    if not contours:
        return mask
    widths = [transition_width(blended, c) for c in contours]
    limit = max(p["min_width"], p["width_ratio"] * float(np.median(np.concatenate(widths))))
    jobs = []  # (contour, its point indices, crop origin, outward normals, start points, energy)
    for c, width in zip(contours, widths):
        xi, yi = c[:, 0].astype(int), c[:, 1].astype(int)
        on_frame = (xi == 0) | (yi == 0) | (xi == w - 1) | (yi == h - 1)
        flags = (width >= limit) & ~on_frame
        stretches = uncertain_stretches(flags, int(p["min_points"]), int(p["pad"]))
        stretches = [s for s in stretches if not on_frame[s].any()]  # its ends must be on certain outline
        if not stretches:
            continue
        normal = outward_normals(c, mask)
        for idx in stretches:
            # Contour points are the centres of the car's outermost pixels, half a pixel inside the
            # photo's edge: the snake runs on the pixel edges and its result is moved back by as much.
            start = c[idx] + 0.5 * normal[idx]
            # The photo's edges only in the stretch's box, with a margin the blur and the moves cannot cross.
            margin = int(np.ceil(p["max_shift"] + 4 * p["sigma"])) + 3
            x0, y0 = np.maximum(np.floor(start.min(0)).astype(int) - margin, 0)
            x1, y1 = np.minimum(np.ceil(start.max(0)).astype(int) + margin + 1, [w, h])
            energy = edge_energy(image[y0:y1, x0:x1], p["sigma"], p["edge_scale"])
            jobs.append((c, idx, np.array([x0, y0]), normal[idx], start - [x0, y0], energy))
    if not jobs:
        return mask
    moved = snakes([(start, energy) for *_, start, energy in jobs], p)
    for (c, idx, origin, normal, *_), points in zip(jobs, moved):
        c[idx] = points + origin - 0.5 * normal
    return rasterize_contours(contours, depth, mask.shape)
