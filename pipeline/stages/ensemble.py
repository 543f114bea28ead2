"""Tune the ensemble on out-of-fold predictions: per-member weights and the threshold.

Every trained run (``<runs_dir>/<name>/fold*/oof.json``) is a member: one architecture/config,
whose out-of-fold maps (uint8 PNGs from the shared engine, with the member's TTA) cover the
images of its trained folds. For each image the blend of the members' maps is computed with
``engine.blend`` for every weight vector on a simplex grid, and Dice at full resolution against
the GIF mask is evaluated for all 255 thresholds at once from two histograms (car / background
pixels per blended value). Pixels where all members say 0 or all say 255 blend to the same value
for every weight vector, so only the uncertain band around the car outline is blended per
weight vector. The winner is written as the recipe the submission follows.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import delayed
from tqdm import tqdm

from ..core.identity import code_version
from ..core.io_utils import atomic_path, check_writable, stored_path, write_json
from ..core.parallel import parallel
from ..data.layout import DataError, Layout, read_image
from ..inference.engine import blend
from ..inference.recipe import RECIPE_FORMAT
from ..lineage.provenance import recipe_fold
from ..lineage.runs import discover, load_maps, member_images
from ..masks.metrics import dice, dice_from_counts
from ..masks.postprocess import apply as postprocess
from ..masks.postprocess import needs_photo, parse_steps
from ..masks.probability import HALF, probability
from ..masks.snakes import DEFAULTS as ACTIVE_CONTOUR_DEFAULTS
from ..masks.snakes import STEP as ACTIVE_CONTOUR
from ..masks.snakes import params_problem

MAX_COMBOS = 2000


def weight_grid(n_members: int, steps: int) -> np.ndarray:
    """All integer weight vectors with the given sum (a simplex grid); shape (n_combos, n_members)."""
    combos = [c for c in itertools.product(range(steps + 1), repeat=n_members) if sum(c) == steps]
    if len(combos) > MAX_COMBOS:
        raise ValueError(f"{len(combos)} weight vectors for {n_members} members at {steps} steps; use fewer steps")
    return np.array(combos, dtype=np.int64)


def image_histograms(maps: np.ndarray, mask: np.ndarray, combos: np.ndarray) -> np.ndarray:
    """(n_combos, 256, 2) counts of (blended value, mask value) for one image."""
    flat = maps.reshape(len(maps), -1)
    m = mask.reshape(-1).astype(bool)
    lo = (flat == 0).all(0)
    hi = (flat == 255).all(0)
    band = ~(lo | hi)
    hist = np.zeros((len(combos), 256, 2), dtype=np.int64)
    hist[:, 0, 1] = np.count_nonzero(lo & m)
    hist[:, 0, 0] = np.count_nonzero(lo) - hist[0, 0, 1]
    hist[:, 255, 1] += np.count_nonzero(hi & m)
    hist[:, 255, 0] += np.count_nonzero(hi) - np.count_nonzero(hi & m)
    q, mb = flat[:, band], m[band]
    if len(maps) == 2:
        # Two members (the usual two architectures): one joint histogram of (value 1, value 2, truth)
        # over the pixels, then each weight vector blends the at most 131,072 occupied bins instead
        # of every pixel. The same counts as the per-pixel loop below, about 5x faster.
        joint = np.bincount((q[0].astype(np.intp) << 9) | (q[1].astype(np.intp) << 1) | mb, minlength=1 << 17)
        bins = np.flatnonzero(joint)
        count, truth = joint[bins], bins & 1
        pair = np.stack([bins >> 9, (bins >> 1) & 255]).astype(np.uint8)
        for i, w in enumerate(combos):
            b = blend(pair, w.tolist()).astype(np.intp)
            hist[i] += np.bincount(b * 2 + truth, weights=count, minlength=512).astype(np.int64).reshape(256, 2)
        return hist
    mb = mb.astype(np.int64)
    for i, w in enumerate(combos):
        b = blend(q, w.tolist()).astype(np.int64)
        hist[i] += np.bincount(b * 2 + mb, minlength=512).reshape(256, 2)
    return hist


def dice_by_threshold(hist: np.ndarray) -> np.ndarray:
    """(..., 256, 2) histograms -> (..., 256) Dice of ``blend >= t`` for t = 0..255."""
    suffix = np.cumsum(hist[..., ::-1, :], axis=-2)[..., ::-1, :]  # counts with value >= t
    tp, fp = suffix[..., 1], suffix[..., 0]
    fn = hist[..., 1].sum(-1, keepdims=True) - tp
    return dice_from_counts(tp, fp, fn)


def _chunk_scores(layout: Layout, images: list[str], maps_of: list[dict], combos: np.ndarray) -> np.ndarray:
    total = np.zeros((len(combos), 256))
    for img in images:
        maps, mask = load_maps(layout, img, maps_of)
        total += dice_by_threshold(image_histograms(maps, mask, combos))
    return total


# Post-processing candidates tried on the tuned blend; one is kept only if it raises out-of-fold
# Dice by at least MIN_POSTPROCESS_GAIN: about 5 pixels per 1918x1280 car, less is noise that would
# still cost every one of the 100,064 test images its run time (up to ~60 ms each on one core).
MIN_POSTPROCESS_GAIN = 1e-5
POSTPROCESS_CANDIDATES = (
    ("largest_cc",),
    ("remove_small",),
    ("fill_holes",),
    ("smooth_contour",),
    ("remove_small", "fill_holes"),
    ("remove_small", "fill_holes", "smooth_contour"),
    (ACTIVE_CONTOUR,),  # needs the photo: scored on the train images' JPEGs
)


# Guards against rare, large failures (false blobs far from the car): a mean gain cannot choose them,
# since the failures they stop may not be among the out-of-fold images at all. One is kept when it
# changes no out-of-fold image for the worse (it costs nothing there); that it never removes a true car
# pixel is measured on every real train mask (docs/record/post-processing.md) and pinned by the tests.
GUARD_STEPS = ("remove_far_blobs",)


def _per_image(
    layout: Layout,
    img: str,
    maps_of: list[dict],
    weights: list[int],
    threshold: int,
    candidates: list[list[str]],
    params: dict | None = None,
) -> list[float]:
    """Dice of the blend, of the blend after each post-processing candidate, and of each member alone."""
    maps, mask = load_maps(layout, img, maps_of)
    blended = blend(maps, weights)
    photo = read_image(layout.train_image(img)) if any(needs_photo(c) for c in candidates) else None
    # Candidates share prefixes (remove_small, then + fill_holes, ...): each prefix is computed once.
    done: dict[tuple[str, ...], np.ndarray] = {(): (blended >= threshold).astype(np.uint8)}
    for steps in candidates:
        for i in range(len(steps)):
            key = tuple(steps[: i + 1])
            if key not in done:
                done[key] = postprocess(done[key[:-1]], [steps[i]], blended=blended, image=photo, params=params)
    return (
        [dice(done[()], mask)]
        + [dice(done[tuple(steps)], mask) for steps in candidates]
        + [dice(q >= threshold, mask) for q in maps]
    )


def _add_guards(layout, images, maps_of, weights, threshold, chosen, scores, params, n_jobs, quiet):
    """``chosen`` with each guard step put first where it lowers no out-of-fold image's Dice; and the
    record of what each guard did. ``scores`` gains the guarded column."""
    record = {}
    for step in GUARD_STEPS:
        if step in chosen:
            continue
        guarded = [step, *chosen]
        per_image = parallel(n_jobs)(
            delayed(_per_image)(layout, img, maps_of, weights, threshold, [guarded], params)
            for img in tqdm(images, desc=f"guard {step}", unit="img", disable=quiet)
        )
        name = "+".join(guarded)
        scores[f"blend+{name}"] = [row[1] for row in per_image]
        before = scores[f"blend+{'+'.join(chosen)}"] if chosen else scores["blend"]
        change = scores[f"blend+{name}"] - before
        kept = bool((change >= 0).all())
        record[step] = {
            "kept": kept,
            "gain": float(change.mean()),
            "images_improved": int((change > 0).sum()),
            "images_worse": int((change < 0).sum()),
            "worst_change": float(change.min()),
        }
        if kept:
            chosen = guarded
    return chosen, record


def _scores_path(out: Path) -> Path:
    return out.with_name(out.stem + "_oof_scores.csv")


def _check_replaceable(out: Path) -> None:
    """Before any work: ``--out`` and the scores beside it replace only a recipe and its scores (a folds CSV
    or a submission typed there is someone's hours of work), unless ``--force``."""

    def recipe_like(p: Path) -> bool:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return False
        return isinstance(data, dict) and isinstance(data.get("members"), list) and "threshold" in data

    def scores_like(p: Path) -> bool:
        try:
            with open(p, encoding="utf-8") as f:
                return f.readline().startswith("img,blend")
        except (OSError, UnicodeDecodeError):
            return False

    for path, own, what in ((out, recipe_like, "a recipe"), (_scores_path(out), scores_like, "a recipe's scores")):
        if path.is_dir():
            raise DataError(f"{path}: a folder; --out names the recipe file to write")
        if (path.exists() or path.is_symlink()) and not own(path):
            raise DataError(
                f"{path}: exists and is not {what} written by `make ensemble`; refusing to replace it. "
                "Choose another --out, or add --force"
            )


def tune(
    runs_dir: str | Path,
    data_dir: str | Path,
    out: str | Path,
    *,
    names: list[str] | None = None,
    steps: int = 10,
    n_jobs: int = -1,
    quiet: bool = False,
    postprocess_steps: str = "auto",
    allow_incomplete: bool = False,
    active_contour: dict | None = None,
    force: bool = False,
) -> dict:
    """Tune weights and threshold; then post-processing: ``"auto"`` tries POSTPROCESS_CANDIDATES and
    keeps the best only if it raises out-of-fold Dice by MIN_POSTPROCESS_GAIN, ``"none"`` skips it, anything else (e.g.
    ``"fill_holes,smooth_contour"``) is scored and applied as given. ``active_contour``: parameters of
    that step that differ from ``snakes.DEFAULTS``; the recipe records them all (``postprocess_params``)."""
    start = time.time()
    if steps < 1:
        raise DataError(f"--steps {steps}: the weight grid needs at least 1 step")
    if postprocess_steps == "auto":
        candidates = [list(c) for c in POSTPROCESS_CANDIDATES]
    else:
        given = [step for step in parse_steps(postprocess_steps) if step != "none"]
        candidates = [given] if given else []
    layout = Layout(data_dir)
    out = Path(out)
    check_writable(out.parent, "recipe")
    if not force:
        _check_replaceable(out)
    found = discover(runs_dir, names, allow_incomplete=allow_incomplete)
    members = []
    for name, folds in found.items():
        lineage = [recipe_fold(Path(f["run_dir"]), f) for f in folds]
        members.append({"name": name, "folds": folds, "by_image": member_images(folds), "lineage": lineage})
    maps_of = [m["by_image"] for m in members]
    common = sorted(set.intersection(*(set(m["by_image"]) for m in members)))
    if not common:
        raise DataError(f"{runs_dir}: the members' out-of-fold predictions share no image; train the same folds")
    for m in members:
        if len(m["by_image"]) != len(common) and not quiet:
            tqdm.write(
                f"warning: {m['name']} has out-of-fold maps for {len(m['by_image'])} images; "
                f"scoring on the {len(common)} all members share"
            )
    combos = weight_grid(len(members), steps if len(members) > 1 else 1)
    chunks = [common[i : i + 16] for i in range(0, len(common), 16)]
    parts = parallel(n_jobs, return_as="generator")(delayed(_chunk_scores)(layout, c, maps_of, combos) for c in chunks)
    total = np.zeros((len(combos), 256))
    for p in tqdm(parts, total=len(chunks), desc="ensemble search", unit="chunk", disable=quiet):
        total += p
    mean = total / len(common)
    mean[:, 0] = -1  # t = 0 would mark every pixel
    ci, threshold = np.unravel_index(np.argmax(mean), mean.shape)
    weights = combos[ci].tolist()

    params = {ACTIVE_CONTOUR: {**ACTIVE_CONTOUR_DEFAULTS, **(active_contour or {})}}
    problem = params_problem(params[ACTIVE_CONTOUR])
    if problem:
        raise DataError(f"{ACTIVE_CONTOUR} parameters: {problem}")
    per_image = parallel(n_jobs)(
        delayed(_per_image)(layout, img, maps_of, weights, int(threshold), candidates, params)
        for img in tqdm(common, desc="score recipe", unit="img", disable=quiet)
    )
    names = ["+".join(c) for c in candidates]
    cols = ["blend"] + [f"blend+{n}" for n in names] + [m["name"] for m in members]
    scores = pd.DataFrame(per_image, columns=cols)
    scores.insert(0, "img", common)
    base = float(scores.blend.mean())
    pp_gain = {n: float(scores[f"blend+{n}"].mean()) - base for n in names}
    if postprocess_steps == "auto":
        best = max(pp_gain, key=pp_gain.get, default=None)
        chosen = parse_steps(best) if best is not None and pp_gain[best] >= MIN_POSTPROCESS_GAIN else []
    else:
        chosen = candidates[0] if candidates else []
    guard = None
    if postprocess_steps == "auto":
        chosen, guard = _add_guards(
            layout, common, maps_of, weights, int(threshold), chosen, scores, params, n_jobs, quiet
        )
    if chosen:
        scores["blend"] = scores[f"blend+{'+'.join(chosen)}"]

    steps_total = int(combos[0].sum())
    vertex = {m["name"]: int(np.flatnonzero(combos[:, j] == steps_total)[0]) for j, m in enumerate(members)}
    recipe = {
        "format": RECIPE_FORMAT,  # paths relative to the recipe's folder: copies of the project keep every link
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "runs_dir": stored_path(runs_dir, out),
        "threshold": int(threshold),
        "threshold_probability": probability(threshold),
        "postprocess": chosen,
        # Mean out-of-fold Dice gained by each candidate over the thresholded blend (negative: it hurts).
        "postprocess_gain": pp_gain,
        # The guard steps tried on the chosen post-processing, and whether they were kept (GUARD_STEPS).
        "postprocess_guard": guard,
        # The parameters the photo steps were scored with (and run with, when chosen).
        "postprocess_params": params,
        "weight_total": int(sum(weights)),
        "members": [
            {
                "name": m["name"],
                "weight": int(w),
                "folds": [f["fold"] for f in m["folds"]],
                # Lineage (pipeline/lineage/provenance.py): each fold's checkpoint and out-of-fold summary by
                # content; submission and predict refuse checkpoints that changed since.
                "checkpoints": [stored_path(rf["checkpoint"], out) for rf in m["lineage"]],
                "checkpoint_sha256": [rf["checkpoint_sha256"] for rf in m["lineage"]],
                "oof_sha256": [rf["oof_sha256"] for rf in m["lineage"]],
                "tta": m["folds"][0]["tta"],
                "height": m["folds"][0]["height"],
                "width": m["folds"][0]["width"],
                # The inference precision its out-of-fold maps (and so the threshold) were made in:
                # the submission and predict apply the member in it (runs.discover: folds agree).
                **({"precision": m["folds"][0]["precision"]} if m["folds"][0].get("precision") else {}),
                "oof_dice_at_0.5": float(mean[vertex[m["name"]], HALF]),
                "oof_dice_best_threshold": float(mean[vertex[m["name"]]].max()),
            }
            for m, w in zip(members, weights)
        ],
        "oof": {
            "n_images": len(common),
            "dice": float(scores.blend.mean()),
            "dice_before_postprocess": float(mean[ci, threshold]),
            "dice_at_0.5": float(mean[ci, HALF]),
            "dice_percentiles": {f"p{p}": float(np.percentile(scores.blend, p)) for p in (1, 5, 25, 50)},
            "weight_step": 1 / steps,
        },
        "code": code_version(),
        "seconds": round(time.time() - start, 1),
    }
    write_json(out, recipe)
    with atomic_path(_scores_path(out)) as tmp:
        scores.to_csv(tmp, index=False, float_format="%.6f")
    if not quiet:
        tqdm.write(
            json.dumps({k: recipe[k] for k in ("threshold", "postprocess", "postprocess_gain", "oof")}, indent=1)
        )
        for m in recipe["members"]:
            tqdm.write(
                f"  {m['name']}: weight {m['weight']}/{recipe['weight_total']}, folds {m['folds']}, "
                f"alone {m['oof_dice_at_0.5']:.5f}"
            )
    return recipe
