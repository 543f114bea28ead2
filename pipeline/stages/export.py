"""``make export``: a trained model as one folder a user can load anywhere.

``python -m pipeline export --checkpoint runs/cpu/full/final.pt --out models/NAME`` writes
segmentation-models-pytorch's own format, so ``smp.from_pretrained(folder)`` loads the U-Net with no
import of this package:

- ``config.json`` + ``model.safetensors``: smp's ``save_pretrained`` (safetensors: loading never unpickles);
- ``pipeline.json``: what this pipeline's inference needs to give the same masks (input size,
  normalisation, TTA, threshold, post-processing, precision), the sha256 of the two files above, and
  where the model came from (its checkpoint, the split it was trained on, the recipe whose
  out-of-fold figures stand for it);
- ``README.md``: the model card (pipeline/inference/model_card.py).

Such folders are read back, checked, by pipeline/inference/model_folder.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.config import Config, run_name_problem
from ..core.errors import ModelFolderError
from ..core.identity import code_version, file_sha256
from ..core.io_utils import OutputLock, check_writable, resolve_stored, stored_path, write_json, write_text
from ..inference.model_card import render_card
from ..inference.model_folder import (
    CARD,
    CONFIG_JSON,
    FILES,
    FORMAT,
    INT8_RE,
    PIPELINE_JSON,
    SHIPPED,
    WEIGHTS,
    check_folder,
    fetch,
    folder_sha256,
)
from ..inference.recipe import RECIPE_FORMAT, Recipe
from ..lineage.provenance import load_recipe, recipe_hash, trained_cars
from ..lineage.runs import same_recipe
from ..masks.probability import HALF, probability
from ..models.unet import IMAGENET_MEAN, IMAGENET_STD, load_checkpoint, read_checkpoint


# -- export ------------------------------------------------------------------------------------------
@dataclass
class Inference:
    """How the exported model is applied: the settings of the recipe that stands for it."""

    tta: list[str]
    threshold: int = HALF
    postprocess: list[str] = field(default_factory=list)
    postprocess_params: dict = field(default_factory=dict)
    precision: str = "fp32"


def _inference_from(cfg: Config, recipe: Recipe | None) -> Inference:
    if recipe is None:
        return Inference(tta=list(cfg.predict.tta))
    (member,) = recipe.active
    return Inference(
        tta=list(member.tta),
        threshold=recipe.threshold,
        postprocess=list(recipe.postprocess),
        postprocess_params=dict(recipe.postprocess_params) if recipe.postprocess else {},
        precision=member.precision or "fp32",
    )


def _standing_recipe(recipe_path: Path, cfg: dict) -> tuple[Recipe, dict]:
    """The recipe whose out-of-fold figures stand for the exported model: checked (its checkpoints and
    out-of-fold summaries are the ones it was tuned on), one member with weight, of the same config."""
    recipe, _ = load_recipe(recipe_path)
    active = recipe.active
    if len(active) != 1 or not active[0].checkpoints:
        raise ModelFolderError(
            f"{recipe_path}: blends {len(active)} members; a single model's threshold and figures come from a recipe "
            "of that model's folds alone: `make ensemble ARGS='--members NAME' RECIPE=submissions/recipe-NAME.json`"
        )
    fold_cfg = read_checkpoint(active[0].checkpoints[0], mmap=True)["config"]
    differ = same_recipe(fold_cfg, cfg)
    if differ:
        raise ModelFolderError(
            f"{recipe_path}: its member {active[0].name!r} was trained with another {', '.join(differ)} than the "
            "model to export; its figures do not stand for it"
        )
    per_fold, tuned_on = {}, set()
    for ckpt in active[0].checkpoints:
        oof = json.loads((Path(ckpt).parent / "oof.json").read_text())
        per_fold[str(oof["fold"])] = {"dice_at_0.5": oof["mean_dice"], "n_images": oof["n_images"]}
        # The cars whose out-of-fold maps chose the threshold and post-processing.
        tuned_on |= set((read_checkpoint(ckpt, mmap=True).get("folds") or {}).get("held_out_cars", []))
    figures = {
        "recipe_hash": recipe_hash(recipe),
        "member": active[0].name,
        "folds": list(active[0].folds) if active[0].folds is not None else None,
        "threshold": recipe.threshold,
        "postprocess": list(recipe.postprocess),
        "n_images": recipe.oof.get("n_images"),
        "mean_dice": recipe.oof.get("dice"),
        "dice_p5": recipe.oof.get("dice_percentiles", {}).get("p5"),
        "per_fold": per_fold,
        "tuned_on_cars": sorted(tuned_on),
    }
    return recipe, figures


def _add_refiner(inference: Inference, path: Path) -> dict:
    """Put the outline refiner at ``path`` (safetensors, or a torch state dict, loaded without unpickling
    code) first among the post-processing steps, its weights in the step's parameters; returns its record.
    Its architecture comes from the file (the tensors' shapes, and a safetensors file's metadata) and goes
    into the weights' blob; weights that are not finite are refused here as every reader refuses them."""
    from ..masks.outline_refiner import params_from_state

    if not path.is_file():
        raise ModelFolderError(f"--refiner {path}: no such file")
    try:
        meta = None
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            state = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        params = params_from_state(state, meta)
    except Exception as e:  # another network, non-finite weights, a pickle with code, a broken file: one line
        raise ModelFolderError(
            f"--refiner {path}: not an outline refiner's weights that can be applied "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    steps = [s for s in inference.postprocess if s != "refine_outline"]
    inference.postprocess = ["refine_outline", *steps]
    inference.postprocess_params = {**inference.postprocess_params, "refine_outline": params}
    return {"file": path.name, "sha256": file_sha256(path, 64)}


# -- the paths a model folder records ---------------------------------------------------------------------
# A model folder travels: its records name the data, runs and weights it came from relative to the project
# root when they were inside it, else relative to the data root, else by their name alone, never as one
# machine's absolute paths. (A relative path in a config is relative to where the command ran: the project.)
PROJECT_ROOT = SHIPPED.parents[1]
PATHS_RULE = "relative to the project root when inside it, else to the data root (config.data_dir), else the name alone"
PROJECT, DATA_ROOT, NAME = "project root", "data root", "name only"


def portable_path(value: str, project: Path, data_root: Path | None) -> tuple[str, str]:
    """``value``, a path a record holds, as a model folder records it, and which base it is relative to
    (PROJECT, DATA_ROOT or NAME). Lexical only: the files need not exist on this machine."""
    p = Path(os.path.normpath(Path(project) / value))  # an absolute value stays itself
    for base, kind in ((Path(project), PROJECT), (data_root, DATA_ROOT)):
        if base is not None and p != base and p.is_relative_to(base):
            return p.relative_to(base).as_posix(), kind
    if p == Path(project):
        return ".", PROJECT
    return p.name, NAME


def _is_path_setting(key: str, value) -> bool:
    return isinstance(value, str) and value != "" and (key != "encoder_weights" or value not in ("imagenet", "none"))


def portable_source(source: dict, trained_record: Path | None, project: Path = PROJECT_ROOT) -> dict:
    """The ``source`` record of pipeline.json with every path made portable (``portable_path``): the training
    config's data, folds, runs, test split and encoder weights, the full run's folds CSV and runs (stored
    relative to its full.json at ``trained_record``) and the paths in its command. ``source["paths"]`` says
    the rule and which base each one took."""
    out = json.loads(json.dumps(source))
    config, trained = out.get("config") or {}, out.get("trained")
    data = config.get("data_dir")
    data_root = Path(os.path.normpath(Path(project) / data)) if isinstance(data, str) and data else None
    bases: dict[str, str] = {}

    def record(holder: dict, key: str, where: str, value: str) -> None:
        holder[key], bases[where] = portable_path(value, project, data_root)

    for key in ("data_dir", "folds_csv", "runs_dir", "test_split"):
        if _is_path_setting(key, config.get(key)):
            record(config, key, f"config.{key}", config[key])
    model = config.get("model") or {}
    if _is_path_setting("encoder_weights", model.get("encoder_weights")):
        record(model, "encoder_weights", "config.model.encoder_weights", model["encoder_weights"])
    if isinstance(trained, dict):
        here = trained_record if trained_record is not None else Path(project) / "full.json"
        on, cv = trained.get("trained_on") or {}, trained.get("cross_validation") or {}
        if isinstance(on.get("folds_csv"), str):
            record(on, "folds_csv", "trained.trained_on.folds_csv", str(resolve_stored(on["folds_csv"], here)))
        if isinstance(cv.get("runs"), str):
            record(cv, "runs", "trained.cross_validation.runs", str(resolve_stored(cv["runs"], here)))
        if isinstance(trained.get("command"), str):
            trained["command"] = _portable_command(trained["command"], project, data_root, bases)
        if "paths" in trained:
            trained["paths"] = "as source.paths says"
    out["paths"] = {"rule": PATHS_RULE, **dict(sorted(bases.items()))}
    return out


def _portable_command(command: str, project: Path, data_root: Path | None, bases: dict[str, str]) -> str:
    """A recorded command line with each absolute path in it (an argument, or the value of ``--set key=PATH``)
    made portable."""
    try:
        words = shlex.split(command)
    except ValueError:  # not a shell line: its absolute paths cut to names
        return " ".join(Path(w).name if w.startswith("/") else w for w in command.split())
    kinds = set()
    for i, word in enumerate(words):
        key, eq, value = word.partition("=") if not word.startswith("/") else ("", "", word)
        if value.startswith("/"):
            new, kind = portable_path(value, project, data_root)
            words[i] = f"{key}{eq}{new}"
            kinds.add(kind)
    if kinds:
        bases["trained.command"] = ", ".join(sorted(kinds))
    return shlex.join(words)


STAGE_MARK = "export-"  # a folder being written: .<name>.export-XXXX beside the model folder
OURS = (PIPELINE_JSON, CONFIG_JSON, WEIGHTS, CARD)


def _out_folder(out: Path) -> Path:
    """``--out`` as the folder it names, refused where writing there would mean something else."""
    if out.is_symlink():
        raise ModelFolderError(f"{out}: a symbolic link; give the folder itself (export swaps folders by renaming)")
    resolved = out.resolve()
    if out.name in ("", ".", "..") or resolved == Path.cwd().resolve() or resolved == resolved.parent:
        raise ModelFolderError(f"--out {out}: name a folder of its own for the model, e.g. models/NAME")
    return resolved


def _ours(name: str) -> bool:
    """A file an export writes into its folders: one of OURS, or one being written under a temporary name
    (``atomic_path``'s ``.<name>.<random>.tmp``), which a kill leaves behind."""
    if INT8_RE.fullmatch(name) or (name.startswith(".network-int8-") and name.endswith(".tmp")):
        return True  # a former quantization's networks (`make quantize`): of the old model, never the new one
    return name in OURS or any(name.startswith(f".{f}.") and name.endswith(".tmp") for f in OURS)


def _remove_stale_stages(out: Path) -> None:
    """Folders a killed export left beside ``out`` (it holds the lock, so none is being written). The
    export's own files in them are removed; a file of the user's found there (moved from ``out`` by a swap
    the kill interrupted) goes back into ``out``; a folder left with anything else is named for the user.
    A previous model set aside by an interrupted swap (``.old-``) is put back when ``out`` is missing."""
    # The set-aside model first: once it is back in place, the stage's user files can go back into it.
    for d in sorted(
        out.parent.glob(f".{out.name}.*"), key=lambda d: (d.name.startswith(f".{out.name}.{STAGE_MARK}"), d.name)
    ):
        stage = d.name.startswith(f".{out.name}.{STAGE_MARK}")
        if not d.is_dir() or d.is_symlink() or not (stage or d.name.startswith(f".{out.name}.old-")):
            continue
        if not stage and not out.exists() and (d / PIPELINE_JSON).is_file():
            d.rename(out)  # killed between setting the old model aside and moving the new one in
            continue
        for f in list(d.iterdir()):
            if _ours(f.name) and (f.is_file() or f.is_symlink()):
                f.unlink()
            elif out.is_dir() and not (out / f.name).exists():
                f.rename(out / f.name)  # the user's, moved out of the model folder by the swap
        left = sorted(f.name for f in d.iterdir())
        if left:
            print(
                f"warning: {d}: left by a stopped export; it still holds {', '.join(left[:5])} (not an export's "
                f"files, and {out} has files of those names); look inside, then remove it",
                file=sys.stderr,
            )
        else:
            d.rmdir()


def _swap_in(stage: Path, out: Path) -> None:
    """The complete new folder in place of ``out`` by renames: a user's own files in ``out`` (notes, an
    onnx/ folder) move into the new one first; the old model's files are removed last."""
    if not out.exists():
        stage.rename(out)
        return
    for f in out.iterdir():
        if not _ours(f.name) and not (stage / f.name).exists():
            f.rename(stage / f.name)
    old = out.with_name(f".{out.name}.old-{time.time_ns()}")
    out.rename(old)
    stage.rename(out)
    shutil.rmtree(old)


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    *,
    recipe: str | Path | None = None,
    dtype: str = "fp16",
    name: str | None = None,
    notes: dict | None = None,
    quiet: bool = False,
    refiner: str | Path | None = None,
) -> dict:
    """Write the model folder ``out`` from ``checkpoint`` (a full run's final.pt, or any best.pt); return
    its pipeline.json. ``recipe``: a recipe of the same config's folds, whose threshold, TTA,
    post-processing and precision the folder takes, and whose out-of-fold figures its card quotes.
    ``dtype``: the weights as stored, fp16 (half the size) or fp32. ``notes``: measured figures for the
    card (e.g. ``{"fp16_oof_dice_change": ...}``, ``{"predict_seconds_per_photo": ...}``). ``refiner``: the
    weights of an outline refiner (pipeline/masks/outline_refiner.py), applied first after the threshold."""
    import segmentation_models_pytorch as smp

    start = time.time()
    checkpoint, out = Path(checkpoint), Path(out)
    if dtype not in ("fp16", "fp32"):
        raise ModelFolderError(f"--dtype {dtype!r}: fp16 or fp32")
    out = _out_folder(out)
    name = name or out.name
    problem = run_name_problem(name)
    if problem:  # the name goes into the card's load line and into tables beside runs
        raise ModelFolderError(f"--name: {problem}")
    model, cfg, ckpt_sha, meta = load_checkpoint(checkpoint)  # the hash of the very bytes exported
    if model.refine is not None:
        raise ModelFolderError(
            f"{checkpoint}: has the refinement block (model.refine={cfg.model.refine}), which "
            "segmentation-models-pytorch's format cannot hold; export a model trained without it"
        )
    saved = meta["config"]  # as trained (the rebuilt cfg says encoder_weights none: the weights are loaded)
    standing, figures = _standing_recipe(Path(recipe), saved) if recipe else (None, None)
    inference = _inference_from(cfg, standing)
    refiner_source = _add_refiner(inference, Path(refiner)) if refiner else None
    full = checkpoint.parent / "full.json"
    trained = json.loads(full.read_text()) if checkpoint.name == "final.pt" and full.is_file() else None
    if trained is not None and trained.get("checkpoint_sha256") != ckpt_sha:
        raise ModelFolderError(f"{full}: records another final.pt than {checkpoint} (retrained since?)")
    # Every export says which cars its weights saw and which tuned its settings, so that no stage scores it
    # on them: a full run's record, or a fold checkpoint's own split.
    cars_trained = ((trained or {}).get("trained_on") or {}).get("cars")
    if cars_trained is None:
        cars_trained = trained_cars(meta, checkpoint)
    if cars_trained is None:
        raise ModelFolderError(
            f"{checkpoint}: does not record the cars it was trained on, and the folds CSV it names is gone or "
            "no longer its split; an exported model must say which cars it saw (restore that folds CSV, or train "
            "it again with this version)"
        )
    cars = {"trained_on": sorted(cars_trained), "tuned_on": sorted((figures or {}).get("tuned_on_cars", []))}

    # The bare smp network, built without encoder weights so that its config.json never asks a user's
    # machine to download them (the trained weights are all in model.safetensors).
    kwargs = {"decoder_channels": cfg.model.decoder_channels} if cfg.model.decoder_channels else {}
    net = smp.create_model(cfg.model.arch, encoder_name=cfg.model.encoder, encoder_weights=None, classes=1, **kwargs)
    net.load_state_dict(model.net.state_dict())
    if dtype == "fp16":
        # fp16 holds magnitudes up to 65504: a larger weight or statistic would be stored as infinity
        # and change the masks. Refused, naming the tensor: such a model is exported in fp32.
        limit = torch.finfo(torch.float16).max
        for key, t in net.state_dict().items():
            if t.is_floating_point() and t.numel() and float(t.abs().max()) > limit:
                raise ModelFolderError(
                    f"{checkpoint}: {key} holds {float(t.abs().max()):.4g}, beyond fp16's range ({limit:.0f}): "
                    "stored as fp16 it would become infinity; export with --dtype fp32"
                )
        net = net.half()
    out_parent = check_writable(out.parent, "model folder")
    with OutputLock(out_parent / f".{out.name}.export", "exporting a model there", remove=True):
        if out.exists() and not (out / PIPELINE_JSON).is_file():
            raise ModelFolderError(f"{out}: exists and is not an exported model folder; refusing to write into it")
        _remove_stale_stages(out)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.{STAGE_MARK}", dir=out_parent))
        try:
            write_text(stage / CARD, "")  # smp writes its own card only where none is: ours replaces it below
            net.save_pretrained(stage)
            spec = {
                "format": FORMAT,
                "name": name,
                "library": "segmentation-models-pytorch",
                "load": f"smp.from_pretrained('{name}')",
                "model": {
                    "arch": cfg.model.arch,
                    "encoder": cfg.model.encoder,
                    "decoder_channels": cfg.model.decoder_channels,
                    "weights_dtype": dtype,
                },
                "input": {
                    "height": cfg.image.height,
                    "width": cfg.image.width,
                    "channels": "RGB",
                    "range": [0, 255],
                    "mean": [round(m * 255, 6) for m in IMAGENET_MEAN],
                    "std": [round(s * 255, 6) for s in IMAGENET_STD],
                    "pad_to_multiple": model.stride,
                    "pad_mode": "replicate",
                    "resize": "the photo resized to height x width (pipeline.data.layout.read_image); "
                    "probabilities resized back bilinearly",
                },
                "output": "one channel of logits; probability = sigmoid, averaged over the TTA views",
                "tta": inference.tta,
                "threshold": inference.threshold,
                "threshold_probability": probability(inference.threshold),
                "postprocess": inference.postprocess,
                "postprocess_params": inference.postprocess_params,
                "precision": inference.precision,
                "files": {f: file_sha256(stage / f, 64) for f in FILES},
                "source": portable_source(
                    {
                        "checkpoint": checkpoint.name,
                        "checkpoint_sha256": ckpt_sha,
                        "epoch": meta.get("epoch"),
                        "config": saved,
                        "trained": trained,
                        "recipe": figures,
                        "refiner": refiner_source,
                        "cars": cars,
                    },
                    full.absolute(),
                ),
                "notes": notes or {},
                "code": code_version(),
                "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            write_json(stage / PIPELINE_JSON, spec)
            write_text(stage / CARD, render_card(spec))
            umask = os.umask(0)
            os.umask(umask)
            for f in stage.iterdir():  # mkdtemp and safetensors make private files: give them the usual mode
                f.chmod(0o666 & ~umask)
            stage.chmod(0o777 & ~umask)
            _swap_in(stage, out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    if not quiet:
        size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
        print(
            f"{out}: {cfg.model.arch}/{cfg.model.encoder} at {cfg.image.height}x{cfg.image.width}, {dtype} weights, "
            f"{size:.1f} MB; threshold {inference.threshold}/255, TTA {inference.tta}, postprocess "
            f"{inference.postprocess} ({time.time() - start:.1f} s)"
        )
    return spec


PRETRAINED_RECIPE = "recipe-pretrained-{sha}.json"


def pretrained_recipe(source: str | Path, out_dir: str | Path) -> Path:
    """The recipe of one member, the exported model ``source`` (a folder or hub id), with its own
    threshold, TTA, post-processing and precision: what ``make submission PRETRAINED=...`` runs. It is
    ``out_dir/recipe-pretrained-<folder hash>.json``: named by the folder's content, never by its name
    (which could be a path or another recipe's), written once and then kept, so two folders never share
    one and a submission's lineage reaches the model card's record as long as the folder is the same."""
    folder = fetch(source)
    spec = check_folder(folder, str(source))
    sha = folder_sha256(folder)
    out = Path(out_dir) / PRETRAINED_RECIPE.format(sha=sha)
    if out.is_file() or out.is_symlink():
        try:
            kept = json.loads(out.read_text()) if not out.is_symlink() else None
        except (ValueError, UnicodeDecodeError, OSError):
            kept = None
        members = (kept or {}).get("members") if isinstance(kept, dict) else None
        if not (isinstance(members, list) and len(members) == 1 and members[0].get("model_sha256") == sha):
            raise ModelFolderError(
                f"{out}: exists and is not the recipe of {source} this pipeline wrote; move it away to continue"
            )
        return out
    hub = not Path(str(source)).is_dir()
    name = spec["name"] if not run_name_problem(spec["name"]) else "pretrained"
    figures = (spec.get("source") or {}).get("recipe") or {}
    own = Recipe.of_model(spec)
    recipe = {
        "format": RECIPE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "threshold": own.threshold,
        "threshold_probability": own.threshold_probability,
        "postprocess": list(own.postprocess),
        "postprocess_params": dict(own.postprocess_params),
        "weight_total": 1,
        "members": [
            {
                "name": name,
                "weight": 1,
                "model": str(source) if hub else stored_path(folder, out),
                "model_hub": hub,
                "model_sha256": sha,
                "tta": list(spec["tta"]),
                "height": int(spec["input"]["height"]),
                "width": int(spec["input"]["width"]),
                "precision": spec.get("precision", "fp32"),
            }
        ],
        "oof": {
            "n_images": figures.get("n_images"),
            "dice": figures.get("mean_dice"),
            "dice_percentiles": {"p5": figures.get("dice_p5")},
        },
        "code": code_version(),
    }
    check_writable(out.parent, "recipe")
    write_json(out, recipe)
    return out
