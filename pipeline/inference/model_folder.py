"""An exported model folder (``make export``), or a Hugging Face hub id of one, checked and loaded.

The folder is segmentation-models-pytorch's own format (``config.json`` + ``model.safetensors``)
plus ``pipeline.json``: what this pipeline's inference needs to give the same masks, the sha256 of
the two files above and where the model came from. Loading refuses a folder whose files are not the
ones its ``pipeline.json`` names by hash (tampered, or half copied), that holds pickled weights, or
whose format this code does not know. The folder's identity (``folder_sha256``) is the hash of its
``pipeline.json``, which holds the others' hashes: what a recipe and a submission record.
pipeline/stages/export.py writes such folders.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import LineageError, ModelFolderError
from ..core.identity import file_sha256
from ..models.unet import SegModel
from .engine import Member

FORMAT = 1
PIPELINE_JSON, CONFIG_JSON, WEIGHTS, CARD = "pipeline.json", "config.json", "model.safetensors", "README.md"
FILES = (CONFIG_JSON, WEIGHTS)  # bound by hash in pipeline.json
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# The model this project ships (trained on the 60 real cars; its card says how): what predict uses when
# there is no recipe.
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "carvana-unet-mobilenetv2"


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


def cars_seen(spec: dict) -> dict[str, set[str] | None]:
    """The cars an exported model was trained on and those whose out-of-fold maps tuned its threshold
    and post-processing, as its pipeline.json records them (None where a folder does not record them)."""
    source = spec.get("source") or {}
    trained = ((source.get("trained") or {}).get("trained_on") or {}).get("cars")
    tuned = (source.get("recipe") or {}).get("tuned_on_cars")
    return {"trained on": None if trained is None else set(trained), "tuned on": None if tuned is None else set(tuned)}


def load_pretrained(
    source: str | Path, device: torch.device | str = "cpu", expect_sha: str | None = None
) -> Pretrained:
    """An exported model folder (or hub id) checked, then built with ``smp.from_pretrained``."""
    import segmentation_models_pytorch as smp

    folder = fetch(source)
    sha = folder_sha256(folder) if (folder / PIPELINE_JSON).is_file() else None
    if expect_sha is not None and sha != expect_sha:
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
