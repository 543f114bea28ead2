"""The recipe: how a blend of probability maps becomes a mask, read and checked once.

A ``recipe.json`` (``make ensemble``; ``make submission PRETRAINED=...`` writes one for a model folder)
names its members (fold checkpoints, or an exported model folder) and their integer weights, the
threshold on the engine's uint8 scale (pipeline/masks/probability.py) and the mask post-processing
(pipeline/masks/postprocess.py). An exported model folder's ``pipeline.json`` holds the same threshold
and post-processing (``Recipe.of_model``); one checkpoint, and a run's out-of-fold maps, are read at
probability 0.5 with none (``Recipe()``).

Every stage turns probabilities into a mask through ``Recipe.mask``: the threshold, then the
post-processing (with the photo where a step needs it), so that a photo gets the same mask from the
submission, ``predict``, ``serve``, ``evaluate`` and the report.

``Recipe.load`` checks the whole file before any model loads (a DataError naming the file and the first
problem) and makes the paths it records usable from the working directory. That its checkpoints are still
the ones it was tuned for is pipeline/lineage/provenance.py's check (``load_recipe``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import run_name_problem
from ..core.errors import DataError
from ..core.io_utils import resolve_stored
from ..masks.postprocess import apply as postprocess
from ..masks.postprocess import chain_problem, needs_photo
from ..masks.probability import HALF, probability
from .tta import TTAS

# Recipe formats this code reads: 2, paths relative to the working directory `make ensemble` ran in;
# 3, paths relative to the recipe's own folder (a copied or read-only project keeps its links).
RECIPE_FORMATS = (2, 3)
RECIPE_FORMAT = 3  # what `make ensemble` writes
RECIPE_KEYS = {
    "format",
    "created",
    "runs_dir",
    "threshold",
    "threshold_probability",
    "postprocess",
    "postprocess_gain",
    "postprocess_guard",
    "postprocess_params",
    "weight_total",
    "members",
    "oof",
    "code",
    "seconds",
}
MEMBER_KEYS = {
    "name",
    "weight",
    "folds",
    "checkpoints",
    "checkpoint_sha256",
    "oof_sha256",
    "tta",
    "height",
    "width",
    "precision",
    "oof_dice_at_0.5",
    "oof_dice_best_threshold",
    # a member that is an exported model folder (pipeline/stages/export.py) instead of fold checkpoints
    "model",
    "model_sha256",
    "model_hub",
}
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class RecipeMember:
    """One model of the blend: fold checkpoints (``checkpoints``), or an exported model folder (``model``)."""

    name: str
    weight: int
    tta: tuple[str, ...]
    height: int
    width: int
    precision: str | None = None  # that of its out-of-fold maps; None in recipes written before it was recorded
    folds: tuple[int, ...] | None = None  # one per checkpoint, as recorded (None: not recorded, 0, 1, ... implied)
    checkpoints: tuple[str, ...] = ()  # usable paths
    checkpoint_sha256: tuple[str, ...] = ()
    oof_sha256: tuple[str, ...] | None = None  # each fold's oof.json, as tuned on
    model: str | None = None  # an exported model folder (a usable path) or hub id
    model_sha256: str | None = None
    model_hub: bool = False

    @classmethod
    def from_dict(cls, m: dict) -> RecipeMember:
        ckpts = tuple(m.get("checkpoints", ()))
        return cls(
            name=m["name"],
            weight=int(m["weight"]),
            tta=tuple(m["tta"]),
            height=int(m["height"]),
            width=int(m["width"]),
            precision=m.get("precision"),
            folds=tuple(m["folds"]) if "folds" in m else None,
            checkpoints=ckpts,
            checkpoint_sha256=tuple(m.get("checkpoint_sha256", ())),
            oof_sha256=tuple(m["oof_sha256"]) if m.get("oof_sha256") else None,
            model=m.get("model"),
            model_sha256=m.get("model_sha256"),
            model_hub=bool(m.get("model_hub")),
        )


@dataclass(frozen=True)
class Recipe:
    """A threshold and post-processing, and for a recipe file its members: loaded and checked once.

    ``record`` is the file's JSON as read (its paths made usable): what the recipe's hash is taken of
    (pipeline/lineage/provenance.py), so that a re-read recipe keeps the key of the rows made from it.
    """

    threshold: int = HALF  # on the uint8 scale: car where the blend >= threshold
    postprocess: tuple[str, ...] = ()  # pipeline/masks/postprocess.py's steps, in order
    postprocess_params: Mapping[str, dict] = field(default_factory=dict)  # the photo steps' parameters
    members: tuple[RecipeMember, ...] = ()
    runs_dir: str | None = None  # where the members' runs were (a usable path), for their out-of-fold maps
    oof: Mapping = field(default_factory=dict)  # the out-of-fold figures it was tuned to
    path: Path | None = None  # the file it was read from
    record: Mapping = field(default_factory=dict, repr=False, compare=False)

    # -- reading -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """A recipe.json that the submission can follow, checked completely before any model loads.

        DataError naming the file and the first problem. The paths it records (``runs_dir``, each
        member's ``checkpoints`` or ``model``) come back usable: a format-3 recipe stores them relative
        to its own folder. (That its checkpoints' configs match the recorded input sizes is checked as
        they load.)
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: recipe not found; run `make ensemble` first")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not valid JSON ({e}); re-run `make ensemble` to rewrite it") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data, path: str | Path) -> Recipe:
        """The recipe that ``data`` (a recipe.json's content, read from ``path``) describes, checked."""
        path = Path(path)
        problem = recipe_problem(data)
        if problem:
            raise DataError(f"{path}: malformed recipe: {problem}; re-run `make ensemble` to rewrite it")
        data = _resolve_paths(data, path)
        return cls(
            threshold=data["threshold"],
            postprocess=tuple(data.get("postprocess", ())),
            postprocess_params=data.get("postprocess_params", {}),
            members=tuple(RecipeMember.from_dict(m) for m in data["members"]),
            runs_dir=data.get("runs_dir"),
            oof=data.get("oof") or {},
            path=path,
            record=data,
        )

    @classmethod
    def of_model(cls, spec: dict) -> Recipe:
        """The threshold and post-processing of an exported model folder's pipeline.json, as checked when
        the folder was read (pipeline/inference/model_folder.py)."""
        return cls(
            threshold=int(spec["threshold"]),
            postprocess=tuple(spec.get("postprocess", ())),
            postprocess_params=spec.get("postprocess_params", {}),
        )

    def to_dict(self) -> dict:
        """A copy of the recipe file's JSON as read, its paths usable from here (to write an edited copy)."""
        return json.loads(json.dumps(self.record))

    # -- what it says --------------------------------------------------------------------------------
    @property
    def threshold_probability(self) -> float:
        return probability(self.threshold)

    @property
    def active(self) -> tuple[RecipeMember, ...]:
        """The members with a positive weight: the ones a submission runs (a zero weight costs time for nothing)."""
        return tuple(m for m in self.members if m.weight > 0)

    @property
    def weights(self) -> list[int]:
        return [m.weight for m in self.members]

    @property
    def needs_photo(self) -> bool:
        """Whether ``mask`` needs the photo (a step such as ``active_contour`` or ``refine_outline``)."""
        return needs_photo(self.postprocess)

    # -- applying it ---------------------------------------------------------------------------------
    def compile_steps(self, openvino: tuple[str, int] | None) -> None:
        """Compile the steps that run a network (``refine_outline``) in the CPU runtime ``openvino``
        ((precision, threads), ``Engine.openvino``) now, on this thread, before photo threads use them
        (a runtime compiles with the process's environment pointed at a scratch folder). None: nothing."""
        if openvino and "refine_outline" in self.postprocess:
            from ..masks.outline_refiner import openvino_runner  # torch: only when the step is used

            openvino_runner(self.postprocess_params["refine_outline"], *openvino)

    def mask(
        self,
        blended: np.ndarray,
        photo: np.ndarray | Callable[[], np.ndarray] | None = None,
        openvino: tuple[str, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(raw, final) of one image's uint8 blend (H, W): ``raw`` the blend at or above the threshold
        (bool), ``final`` the mask after the post-processing (uint8 0/1; ``raw`` itself where there is none).

        ``photo``: the RGB photo, or a function that decodes it, called only where a step needs it.
        ``openvino``: (precision, threads) for a step's network to run as the model runs (``Engine.openvino``).
        """
        raw = blended >= self.threshold
        return raw, self.postprocessed(raw, blended, photo, openvino)

    def postprocessed(
        self,
        raw: np.ndarray,
        blended: np.ndarray | None = None,
        photo: np.ndarray | Callable[[], np.ndarray] | None = None,
        openvino: tuple[str, int] | None = None,
    ) -> np.ndarray:
        """``mask``'s ``final`` of ``raw``, the blend already thresholded at ``threshold`` (as the engine does
        on the device where no step needs the probabilities: ``needs_photo`` False, ``blended`` not needed)."""
        if not self.postprocess:
            return raw
        image = (photo() if callable(photo) else photo) if self.needs_photo else None
        return postprocess(raw, self.postprocess, blended, image, self.postprocess_params, openvino=openvino)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def recipe_problem(recipe) -> str | None:
    """The first thing that makes ``recipe`` (a recipe.json's content) unusable, or None: checked before
    any checkpoint is read."""
    if not isinstance(recipe, dict) or not isinstance(recipe.get("members"), list) or not recipe["members"]:
        return "no 'members' list"
    fmt = recipe.get("format", 2)
    if fmt not in RECIPE_FORMATS:
        return (
            f"format {fmt!r}, which this version of the pipeline does not know (it reads formats "
            f"{', '.join(map(str, RECIPE_FORMATS))}): written by a newer version? Update the code, or tune a recipe "
            "with this one"
        )
    unknown = sorted(set(recipe) - RECIPE_KEYS)
    if unknown:
        return f"unknown key(s) {unknown} (a newer or hand-edited recipe): this version would ignore them"
    for i, m in enumerate(recipe["members"]):
        extra = sorted(set(m) - MEMBER_KEYS) if isinstance(m, dict) else []
        if extra:
            return f"member {i} has unknown key(s) {extra} (a newer or hand-edited recipe)"
    t = recipe.get("threshold")
    if not _int(t) or not 1 <= t <= 255:
        return f"'threshold' {t!r} is not an integer in 1..255 (probability t/255 in (0, 1])"
    p = recipe.get("threshold_probability", t / 255)
    if not isinstance(p, (int, float)) or not 0 <= p <= 1 or abs(p - t / 255) > 1e-6:
        return f"'threshold_probability' {p!r} is not in [0, 1] or disagrees with 'threshold' {t}/255"
    problem = chain_problem(recipe.get("postprocess", []), recipe.get("postprocess_params", {}))
    if problem:  # the same check as a model folder's pipeline.json
        return problem
    need = {"name": str, "weight": int, "tta": list, "height": int, "width": int}
    names = set()
    for i, m in enumerate(recipe["members"]):
        bad = [k for k, typ in need.items() if not isinstance(m, dict) or not isinstance(m.get(k), typ)]
        if bad or isinstance(m.get("weight"), bool):
            return f"member {i} lacks or has a wrong type for {bad or ['weight']}"
        name = m["name"]
        if name in names:
            return f"member {i} has a repeated name {name!r}"
        if run_name_problem(name):
            return f"member {i}: name {run_name_problem(name)}"
        names.add(name)
        if m["weight"] < 0:
            return f"member {name!r} has a negative weight {m['weight']}"
        if m["height"] < 1 or m["width"] < 1:
            return f"member {name!r} has input size {m['height']}x{m['width']}; both must be at least 1"
        if m.get("precision", "fp32") not in PRECISIONS:
            return f"member {name!r}: 'precision' {m['precision']!r} is not one of {', '.join(PRECISIONS)}"
        unknown = [v for v in m["tta"] if not isinstance(v, str) or (v not in TTAS and v != "none")]
        if unknown:
            return f"member {name!r}: unknown TTA {unknown}; available: {sorted(TTAS)}"
        if "model" in m:  # an exported model folder (or hub id), bound by the hash of its pipeline.json
            if "checkpoints" in m or not isinstance(m["model"], str) or not isinstance(m.get("model_sha256"), str):
                return f"member {name!r}: an exported model needs 'model' (its folder) and 'model_sha256', alone"
            continue
        ckpts = m.get("checkpoints")
        if not isinstance(ckpts, list) or not ckpts or any(not isinstance(c, str) or not c for c in ckpts):
            return f"member {name!r}: 'checkpoints' must be a non-empty list of paths"
        shas = m.get("checkpoint_sha256")
        if not isinstance(shas, list) or len(shas) != len(ckpts) or any(not isinstance(h, str) for h in shas):
            return (
                f"member {name!r}: no content hash for each checkpoint ('checkpoint_sha256'): written by an "
                "older version or by hand, so nothing binds it to the checkpoints it was tuned for"
            )
        folds = m.get("folds", list(range(len(ckpts))))
        if not isinstance(folds, list) or len(folds) != len(ckpts) or not all(_int(f) for f in folds):
            return f"member {name!r}: 'folds' must list one fold number per checkpoint"
    if sum(m["weight"] for m in recipe["members"]) <= 0:
        return "no member has a positive weight"
    return None


def _resolve_paths(recipe: dict, path: Path) -> dict:
    """A copy of ``recipe`` whose recorded paths are usable from the working directory."""
    relative = recipe.get("format", 2) >= 3
    out = dict(recipe)
    if isinstance(recipe.get("runs_dir"), str):
        out["runs_dir"] = str(resolve_stored(recipe["runs_dir"], path, relative))
    out["members"] = [
        {**m, "model": m["model"] if m.get("model_hub") else str(resolve_stored(m["model"], path, relative))}
        if "model" in m
        else {**m, "checkpoints": [str(resolve_stored(c, path, relative)) for c in m["checkpoints"]]}
        for m in recipe["members"]
    ]
    return out
