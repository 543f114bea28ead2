"""A trained model as one folder a user can load anywhere, and such folders loaded back, checked.

``python -m pipeline export --checkpoint runs/cpu/full/final.pt --out models/NAME`` writes
segmentation-models-pytorch's own format, so ``smp.from_pretrained(folder)`` loads the U-Net with no
import of this package:

- ``config.json`` + ``model.safetensors``: smp's ``save_pretrained`` (safetensors: loading never unpickles);
- ``pipeline.json``: what this pipeline's inference needs to give the same masks (input size,
  normalisation, TTA, threshold, post-processing, precision), the sha256 of the two files above, and
  where the model came from (its checkpoint, the split it was trained on, the recipe whose
  out-of-fold figures stand for it);
- ``README.md``: the model card (pipeline/model_card.py).

Loading (``load_pretrained``) takes a folder or a Hugging Face hub id (``owner/name``, downloaded with
huggingface_hub, as ``smp.from_pretrained`` does) and refuses a folder whose files are not the ones
its ``pipeline.json`` names by hash (tampered, or half copied), that holds pickled weights, or whose
format this code does not know. The folder's identity (``folder_sha256``) is the hash of its
``pipeline.json``, which holds the others' hashes: what a recipe and a submission record.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config
from .errors import PipelineError
from .io_utils import check_writable, plain_name, write_json, write_text
from .models import IMAGENET_MEAN, IMAGENET_STD, SegModel, load_checkpoint
from .provenance import code_version, file_sha256

FORMAT = 1
PIPELINE_JSON, CONFIG_JSON, WEIGHTS, CARD = "pipeline.json", "config.json", "model.safetensors", "README.md"
FILES = (CONFIG_JSON, WEIGHTS)  # bound by hash in pipeline.json
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# The model this project ships (trained on the 60 real cars; its card says how): what predict uses when
# there is no recipe.
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "carvana-unet-mobilenetv2"


class ModelFolderError(PipelineError, ValueError):
    """An exported model folder that cannot be used as it is; names the folder and the problem."""


# -- export ------------------------------------------------------------------------------------------
@dataclass
class Inference:
    """How the exported model is applied: the settings of the recipe that stands for it."""

    tta: list[str]
    threshold: int = 128
    postprocess: list[str] = field(default_factory=list)
    postprocess_params: dict = field(default_factory=dict)
    precision: str = "fp32"


def _inference_from(cfg: Config, recipe: dict | None) -> Inference:
    if recipe is None:
        return Inference(tta=list(cfg.predict.tta))
    (member,) = [m for m in recipe["members"] if m["weight"] > 0]
    return Inference(
        tta=list(member["tta"]),
        threshold=int(recipe["threshold"]),
        postprocess=list(recipe.get("postprocess", [])),
        postprocess_params=dict(recipe.get("postprocess_params", {})) if recipe.get("postprocess") else {},
        precision=member.get("precision", "fp32"),
    )


def _standing_recipe(recipe_path: Path, cfg: dict) -> tuple[dict, dict]:
    """The recipe whose out-of-fold figures stand for the exported model: checked (its checkpoints and
    out-of-fold summaries are the ones it was tuned on), one member with weight, of the same config."""
    from .provenance import load_recipe, recipe_hash
    from .runs import same_recipe

    recipe, _ = load_recipe(recipe_path)
    active = [m for m in recipe["members"] if m["weight"] > 0]
    if len(active) != 1 or "checkpoints" not in active[0]:
        raise ModelFolderError(
            f"{recipe_path}: blends {len(active)} members; a single model's threshold and figures come from a recipe "
            "of that model's folds alone: `make ensemble ARGS='--members NAME' RECIPE=submissions/recipe-NAME.json`"
        )
    from .models import read_checkpoint

    fold_cfg = read_checkpoint(active[0]["checkpoints"][0], mmap=True)["config"]
    differ = same_recipe(fold_cfg, cfg)
    if differ:
        raise ModelFolderError(
            f"{recipe_path}: its member {active[0]['name']!r} was trained with another {', '.join(differ)} than the "
            "model to export; its figures do not stand for it"
        )
    per_fold = {}
    for ckpt in active[0]["checkpoints"]:
        oof = json.loads((Path(ckpt).parent / "oof.json").read_text())
        per_fold[str(oof["fold"])] = {"dice_at_0.5": oof["mean_dice"], "n_images": oof["n_images"]}
    figures = {
        "recipe_hash": recipe_hash(recipe),
        "member": active[0]["name"],
        "folds": active[0].get("folds"),
        "threshold": recipe["threshold"],
        "postprocess": recipe.get("postprocess", []),
        "n_images": recipe.get("oof", {}).get("n_images"),
        "mean_dice": recipe.get("oof", {}).get("dice"),
        "dice_p5": recipe.get("oof", {}).get("dice_percentiles", {}).get("p5"),
        "per_fold": per_fold,
    }
    return recipe, figures


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    recipe: str | Path | None = None,
    dtype: str = "fp16",
    name: str | None = None,
    notes: dict | None = None,
    quiet: bool = False,
) -> dict:
    """Write the model folder ``out`` from ``checkpoint`` (a full run's final.pt, or any best.pt); return
    its pipeline.json. ``recipe``: a recipe of the same config's folds, whose threshold, TTA,
    post-processing and precision the folder takes, and whose out-of-fold figures its card quotes.
    ``dtype``: the weights as stored, fp16 (half the size) or fp32. ``notes``: measured figures for the
    card (e.g. ``{"fp16_oof_dice_change": ...}``, ``{"predict_seconds_per_photo": ...}``)."""
    import segmentation_models_pytorch as smp

    from .model_card import render_card

    start = time.time()
    checkpoint, out = Path(checkpoint), Path(out)
    if dtype not in ("fp16", "fp32"):
        raise ModelFolderError(f"--dtype {dtype!r}: fp16 or fp32")
    name = name or out.name
    plain_name(name, "--name")
    model, cfg, ckpt_sha, meta = load_checkpoint(checkpoint)  # the hash of the very bytes exported
    if model.refine is not None:
        raise ModelFolderError(
            f"{checkpoint}: has the refinement block (model.refine={cfg.model.refine}), which "
            "segmentation-models-pytorch's format cannot hold; export a model trained without it"
        )
    saved = meta["config"]  # as trained (the rebuilt cfg says encoder_weights none: the weights are loaded)
    standing, figures = _standing_recipe(Path(recipe), saved) if recipe else (None, None)
    inference = _inference_from(cfg, standing)
    full = checkpoint.parent / "full.json"
    trained = json.loads(full.read_text()) if checkpoint.name == "final.pt" and full.is_file() else None
    if trained is not None and trained.get("checkpoint_sha256") != ckpt_sha:
        raise ModelFolderError(f"{full}: records another final.pt than {checkpoint} (retrained since?)")

    # The bare smp network, built without encoder weights so that its config.json never asks a user's
    # machine to download them (the trained weights are all in model.safetensors).
    kwargs = {"decoder_channels": cfg.model.decoder_channels} if cfg.model.decoder_channels else {}
    net = smp.create_model(cfg.model.arch, encoder_name=cfg.model.encoder, encoder_weights=None, classes=1, **kwargs)
    net.load_state_dict(model.net.state_dict())
    if dtype == "fp16":
        net = net.half()
    out_parent = check_writable(out.absolute().parent, "model folder")
    if out.exists() and not (out / PIPELINE_JSON).is_file():
        raise ModelFolderError(f"{out}: exists and is not an exported model folder; refusing to write into it")
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out_parent))
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
                "resize": "the photo resized to height x width (pipeline.data.read_image); "
                "probabilities resized back bilinearly",
            },
            "output": "one channel of logits; probability = sigmoid, averaged over the TTA views",
            "tta": inference.tta,
            "threshold": inference.threshold,
            "threshold_probability": round(inference.threshold / 255, 6),
            "postprocess": inference.postprocess,
            "postprocess_params": inference.postprocess_params,
            "precision": inference.precision,
            "files": {f: file_sha256(stage / f, 64) for f in FILES},
            "source": {
                "checkpoint": checkpoint.name,
                "checkpoint_sha256": ckpt_sha,
                "epoch": meta.get("epoch"),
                "config": saved,
                "trained": trained,
                "recipe": figures,
            },
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
        if out.exists():  # an earlier export: swapped out only once the new one is complete
            old = out.with_name(f".{out.name}.old-{time.time_ns()}")
            out.rename(old)
            stage.rename(out)
            shutil.rmtree(old)
        else:
            stage.rename(out)
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


# -- load --------------------------------------------------------------------------------------------
@dataclass
class Pretrained:
    """An exported model, checked and loaded: the engine's model and the settings to apply it with."""

    folder: Path
    source: str  # the folder or hub id as given
    spec: dict  # pipeline.json
    sha: str  # folder_sha256: the hash of its pipeline.json
    model: SegModel

    @property
    def name(self) -> str:
        return self.spec["name"]

    def member(self, precision: str | None = None):
        """The engine's member for this model: its input size and TTA, in ``precision`` or its own."""
        from .engine import Member

        inp = self.spec["input"]
        own = precision or self.spec.get("precision", "fp32")
        return Member(self.name, [self.model], inp["height"], inp["width"], list(self.spec["tta"]), own)


def is_hub_id(text: str) -> bool:
    """``owner/name``, and not a path here: neither it nor its first folder exists (``models/typo`` is a
    missing folder, not a hub id)."""
    return bool(HUB_ID_RE.fullmatch(text)) and not Path(text).exists() and not Path(text).parent.is_dir()


def fetch(source: str | Path) -> Path:
    """A local folder for ``source``: the folder itself, or a hub id's files downloaded (huggingface_hub,
    cached as it caches them; only the four files of the format, never pickled weights)."""
    path = Path(source)
    if path.is_dir():
        return path
    text = str(source)
    if not is_hub_id(text):
        raise ModelFolderError(f"{source}: no such model folder, and not a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(text, allow_patterns=[PIPELINE_JSON, CONFIG_JSON, WEIGHTS, CARD])
    except Exception as e:  # offline, no such repo, no access: one line saying so
        raise ModelFolderError(
            f"{text}: could not download it from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}); "
            "offline? Download the folder where you have internet and pass its path"
        ) from None
    return Path(local)


def folder_sha256(folder: Path) -> str:
    return file_sha256(folder / PIPELINE_JSON)


def check_folder(folder: Path, source: str | None = None) -> dict:
    """pipeline.json of a model folder that can be loaded as it is; ModelFolderError naming the problem."""
    where = source or str(folder)
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise ModelFolderError(
            f"{where}: holds pickled weights ({', '.join(pickled)}); loading them could run code, and this pipeline "
            "loads only model.safetensors. Remove them, or export the model again with `make export`"
        )
    spec_path = folder / PIPELINE_JSON
    if not spec_path.is_file():
        raise ModelFolderError(f"{where}: no {PIPELINE_JSON}, so not a model folder of this pipeline (`make export`)")
    try:
        spec = json.loads(spec_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{spec_path}: not valid JSON ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        fmt = spec.get("format") if isinstance(spec, dict) else None
        raise ModelFolderError(
            f"{spec_path}: format {fmt!r}; this version of the pipeline reads format {FORMAT} (written by a newer one?)"
        )
    for f in FILES:
        want = (spec.get("files") or {}).get(f)
        if not (folder / f).is_file():
            raise ModelFolderError(f"{where}: {f} missing (half copied?)")
        if file_sha256(folder / f, 64) != want:
            raise ModelFolderError(
                f"{folder / f}: not the file {PIPELINE_JSON} names (sha256 differs): changed after export "
                "(tampered, or replaced); export the model again"
            )
    config = json.loads((folder / CONFIG_JSON).read_text())
    model = spec.get("model") or {}
    if config.get("_model_class", "").lower() != str(model.get("arch", "")).lower() or config.get(
        "encoder_name"
    ) != model.get("encoder"):
        raise ModelFolderError(f"{where}: {CONFIG_JSON} describes another model than {PIPELINE_JSON}")
    return spec


def load_pretrained(
    source: str | Path, device: torch.device | str = "cpu", expect_sha: str | None = None
) -> Pretrained:
    """An exported model folder (or hub id) checked, then built with ``smp.from_pretrained``."""
    import segmentation_models_pytorch as smp

    folder = fetch(source)
    sha = folder_sha256(folder) if (folder / PIPELINE_JSON).is_file() else None
    if expect_sha is not None and sha != expect_sha:
        from .provenance import LineageError

        raise LineageError(
            f"{source}: not the model folder the recipe was made for (hash {expect_sha} then, {sha} now); "
            "re-run `make submission PRETRAINED=...` to make a recipe for it"
        )
    spec = check_folder(folder, str(source))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # huggingface_hub prints "Loading weights from ..."
            net = smp.from_pretrained(str(folder))
    except Exception as e:
        raise ModelFolderError(f"{source}: segmentation-models-pytorch could not load it ({str(e)[:200]})") from None
    model = SegModel(net.float(), stride=int(spec["input"].get("pad_to_multiple", 32)))
    return Pretrained(folder, str(source), spec, sha, model.to(device).eval())


def pretrained_recipe(source: str | Path, out: str | Path, device: torch.device | str = "cpu") -> Path:
    """Write ``out``: a recipe of one member, the exported model ``source`` (a folder or hub id), with its
    own threshold, TTA, post-processing and precision; what ``make submission PRETRAINED=...`` runs.
    The recipe holds the folder's hash, so a submission's lineage reaches the model card's record."""
    from .checks import RECIPE_FORMAT
    from .config import run_name_problem
    from .io_utils import stored_path

    out = Path(out)
    folder = fetch(source)
    spec = check_folder(folder, str(source))
    hub = not Path(str(source)).is_dir()
    name = spec["name"] if not run_name_problem(spec["name"]) else "pretrained"
    figures = (spec.get("source") or {}).get("recipe") or {}
    recipe = {
        "format": RECIPE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "threshold": int(spec["threshold"]),
        "threshold_probability": round(int(spec["threshold"]) / 255, 6),
        "postprocess": list(spec.get("postprocess", [])),
        "postprocess_params": dict(spec.get("postprocess_params", {})),
        "weight_total": 1,
        "members": [
            {
                "name": name,
                "weight": 1,
                "model": str(source) if hub else stored_path(folder, out),
                "model_hub": hub,
                "model_sha256": folder_sha256(folder),
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
    write_json(out, recipe)
    return out
