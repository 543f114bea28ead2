"""An exported model folder (``make export``), or a Hugging Face hub id of one, checked and loaded.

The folder is segmentation-models-pytorch's own format (``config.json`` + ``model.safetensors``)
plus ``pipeline.json``: what this pipeline's inference needs to give the same masks, the sha256 of
the two files above and where the model came from. Loading refuses a folder whose files are not the
ones its ``pipeline.json`` names by hash (tampered, or half copied), that holds pickled weights, or
whose format this code does not know. The folder's identity (``folder_sha256``) is the hash of its
``pipeline.json``, which holds the others' hashes: what a recipe and a submission record.
pipeline/stages/export.py writes such folders.

A folder may also hold the network quantized to INT8 for OpenVINO on CPUs (``make quantize``,
pipeline/stages/quantize.py): one OpenVINO model per input size the TTA views meet
(``network-int8-<h>x<w>.xml`` and ``.weights``), named in ``pipeline.json``'s ``int8`` and bound by hash in
its ``files`` like the weights. They are optional: a folder without them runs in bf16 or fp32.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.config import run_name_problem
from ..core.errors import LineageError, ModelFolderError
from ..core.identity import file_sha256
from ..masks.postprocess import chain_problem
from ..models.unet import SegModel
from .engine import Member
from .recipe import Recipe
from .tta import TTAS

FORMAT = 1
PIPELINE_JSON, CONFIG_JSON, WEIGHTS, CARD = "pipeline.json", "config.json", "model.safetensors", "README.md"
FILES = (CONFIG_JSON, WEIGHTS)  # bound by hash in pipeline.json
INT8_RE = re.compile(r"network-int8-(\d+)x(\d+)\.(xml|weights)")  # the INT8 networks' files, per input size
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

    @property
    def label(self) -> str:
        """Its row in tables beside runs, ``recipe`` and ``blend``: no run name has a colon, so a folder
        named like a run never takes that run's row."""
        return f"model:{self.name}"

    @property
    def seen_cars(self) -> set[str] | None:
        """Every car it was trained or tuned on, as its record says; None where the record does not say."""
        seen = cars_seen(self.spec)
        if any(cars is None for cars in seen.values()):
            return None
        return set().union(*seen.values())

    @functools.cached_property
    def int8_networks(self) -> dict[tuple[int, int], tuple[bytes, bytes]]:
        """Per input size (h, w): the INT8 network's OpenVINO model (xml, weights) as bytes, each checked
        against the hash ``pipeline.json`` holds as it is read (once: 16 MB for the shipped model); empty
        when the folder has none."""
        return read_int8_networks(self.folder, self.spec)

    @property
    def recipe(self) -> Recipe:
        """Its threshold and post-processing, as every stage applies them (``Recipe.mask``)."""
        return Recipe.of_model(self.spec)

    def member(self, precision: str | None = None):
        """The engine's member for this model: its input size and TTA, in ``precision`` or its own."""
        inp = self.spec["input"]
        own = precision or self.spec.get("precision", "fp32")
        return Member(
            self.name, [self.model], inp["height"], inp["width"], list(self.spec["tta"]), own, self.int8_networks
        )


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

        local = snapshot_download(
            text,
            allow_patterns=[PIPELINE_JSON, CONFIG_JSON, WEIGHTS, CARD, "network-int8-*.xml", "network-int8-*.weights"],
        )
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
    problem = _int8_problem(spec)
    if problem:
        raise ModelFolderError(f"{spec_path}: {problem}; quantize the model again (`make quantize`)")
    for f in (*FILES, *int8_files(spec)):
        want = (spec.get("files") or {}).get(f)
        if not (folder / f).is_file():
            raise ModelFolderError(f"{where}: {f} missing (half copied?)")
        if file_sha256(folder / f, 64) != want:
            raise ModelFolderError(
                f"{folder / f}: not the file {PIPELINE_JSON} names (sha256 differs): changed after export "
                "(tampered, or replaced); export the model again"
            )
    problem = _spec_problem(spec)
    if problem:
        raise ModelFolderError(f"{spec_path}: {problem}; export the model again (`make export`)")
    try:
        config = json.loads((folder / CONFIG_JSON).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{folder / CONFIG_JSON}: not valid JSON ({str(e)[:120]})") from None
    model = spec["model"]
    if not isinstance(config, dict) or (
        str(config.get("_model_class", "")).lower() != model["arch"].lower()
        or config.get("encoder_name") != model["encoder"]
    ):
        raise ModelFolderError(f"{where}: {CONFIG_JSON} describes another model than {PIPELINE_JSON}")
    return spec


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _whole(x, low: int, high: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and low <= x <= high


def _spec_problem(spec: dict) -> str | None:
    """What in pipeline.json this pipeline cannot apply as it is, or None: every value a stage uses,
    checked once here where the folder is read, so predict, evaluate, report and submission agree."""
    problem = run_name_problem(spec.get("name"))
    if problem:  # the name labels its rows beside the runs and its recipe's member
        return f"name: {problem}"
    model, inp = spec.get("model"), spec.get("input")
    if not isinstance(model, dict) or not all(isinstance(model.get(k), str) and model[k] for k in ("arch", "encoder")):
        return "model: needs 'arch' and 'encoder' names"
    if not isinstance(inp, dict):
        return "input: missing"
    for key in ("height", "width"):
        if not _whole(inp.get(key), 32, 8192):
            return f"input.{key} {inp.get(key)!r}: a whole number of pixels, 32 to 8192"
    if not _whole(inp.get("pad_to_multiple"), 32, 1024) or inp["pad_to_multiple"] % 32:
        return f"input.pad_to_multiple {inp.get('pad_to_multiple')!r}: a multiple of 32 (the U-Net's stride)"
    for key, low in (("mean", -1e9), ("std", 0)):
        v = inp.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(_number(x) and x > low for x in v)):
            return f"input.{key} {v!r}: three numbers, one per RGB channel on the 0..255 scale" + (
                ", each above 0" if key == "std" else ""
            )
    tta = spec.get("tta")
    if not isinstance(tta, list) or not all(isinstance(t, str) and t in TTAS for t in tta):
        return f"tta {tta!r}: a list of {', '.join(sorted(TTAS))}"
    if not _whole(spec.get("threshold"), 1, 255):
        return f"threshold {spec.get('threshold')!r}: a whole number 1..255 (probability x 255)"
    problem = chain_problem(spec.get("postprocess", []), spec.get("postprocess_params", {}))
    if problem:  # the same check as a recipe's
        return problem
    if spec.get("precision", "fp32") not in ("fp32", "fp16", "bf16"):
        return f"precision {spec.get('precision')!r}: fp32, fp16 or bf16"
    if not isinstance(spec.get("source", {}), dict):
        return "source: a mapping"
    cars = (spec.get("source") or {}).get("cars")
    if cars is not None and not (
        isinstance(cars, dict)
        and all(
            isinstance(cars.get(k), list) and all(isinstance(c, str) for c in cars[k])
            for k in ("trained_on", "tuned_on")
        )
    ):
        return "source.cars: the cars it was trained and tuned on, two lists 'trained_on' and 'tuned_on'"
    return None


def int8_files(spec: dict) -> list[str]:
    """The INT8 networks' file names ``pipeline.json`` lists (none when the folder has no INT8 network)."""
    networks = (spec.get("int8") or {}).get("networks") or {}
    return [net[k] for net in networks.values() for k in ("xml", "weights")]


def int8_sizes(spec: dict) -> set[tuple[int, int]]:
    """The input sizes (h, w) the folder has an INT8 network for."""
    return {tuple(int(v) for v in size.split("x")) for size in ((spec.get("int8") or {}).get("networks") or {})}


def _int8_problem(spec: dict) -> str | None:
    """What in ``pipeline.json``'s ``int8`` is not as ``make quantize`` writes it, or None (also when absent)."""
    if "int8" not in spec:
        return None
    networks = spec["int8"].get("networks") if isinstance(spec["int8"], dict) else None
    if not isinstance(networks, dict) or not networks:
        return "int8.networks: a mapping of input sizes ('320x480') to their files"
    for size, net in networks.items():
        if not (isinstance(size, str) and re.fullmatch(r"\d+x\d+", size)):
            return f"int8.networks: {size!r} is not an input size such as '320x480'"
        want = {k: f"network-int8-{size}.{k}" for k in ("xml", "weights")}
        if net != want:  # fixed names: nothing in pipeline.json can point a load outside the folder
            return f"int8.networks[{size!r}]: {net!r}, expected {want}"
    return None


def read_int8_networks(folder: Path, spec: dict) -> dict[tuple[int, int], tuple[bytes, bytes]]:
    """``Pretrained.int8_networks``: each file's bytes, refused when they are not those ``pipeline.json``
    names by hash (the bytes used are the bytes checked: one read)."""
    import hashlib

    out = {}
    for size, net in ((spec.get("int8") or {}).get("networks") or {}).items():
        data = []
        for k in ("xml", "weights"):
            path = folder / net[k]
            raw = path.read_bytes()
            if hashlib.sha256(raw).hexdigest() != (spec.get("files") or {}).get(net[k]):
                raise ModelFolderError(
                    f"{path}: not the file {PIPELINE_JSON} names (sha256 differs): changed after `make quantize`"
                )
            data.append(raw)
        h, w = (int(v) for v in size.split("x"))
        out[(h, w)] = (data[0], data[1])
    return out


def cars_seen(spec: dict) -> dict[str, set[str] | None]:
    """The cars an exported model was trained on and those whose out-of-fold maps tuned its threshold
    and post-processing, as its pipeline.json records them (None where a folder does not record them)."""
    source = spec.get("source") or {}
    if isinstance(source.get("cars"), dict):  # every export since it was recorded: both lists, explicitly
        return {"trained on": set(source["cars"]["trained_on"]), "tuned on": set(source["cars"]["tuned_on"])}
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
    inp = spec["input"]
    model = SegModel(net.float(), stride=inp["pad_to_multiple"], mean=inp["mean"], std=inp["std"])
    return Pretrained(folder, str(source), spec, sha, model.to(device).eval())
