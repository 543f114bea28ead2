"""Cut cars out of any photos: mask, transparent cut-out and a composite on a new background.

``python -m pipeline predict IMAGE_OR_DIR --out DIR`` runs the ensemble recipe (the same members,
engine, blend and threshold as the submission) or one checkpoint (threshold 0.5) on each image,
whatever its size: the engine resizes to the model size and the probabilities back to the image.

Per image ``<name>``: ``<name>_mask.png`` (0/255), ``<name>_cutout.png`` (RGBA, alpha = the mask,
optionally feathered), and with a background ``<name>_composite.jpg``. Unreadable files are named
and skipped; the command then ends with a non-zero exit. ``<out>/review.csv`` lists the images of
the run, the masks most likely wrong first (pipeline/inference/review.py).

Lineage: ``<out>/lineage.jsonl`` records every file predict writes there, with the key of what it
was made from (the recipe and its checkpoints' hashes, or the checkpoint's; precision; the
background; feather; the input file). ``--resume`` keeps only outputs of the same key, and
predict overwrites only files it wrote itself: a file of the user's in the way, an output that
would land on an input, or ``--out`` being the input folder (whose outputs the next run would read
as photos) stop the run before any work.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ..core.device import cpu_jobs, pick_device, resolve_precision
from ..core.errors import printable
from ..core.identity import text_sha
from ..core.io_utils import OutputLock, append_synced, atomic_path, check_writable
from ..data.layout import DataError, image_size, read_image
from ..inference.backends import resolve_runtime
from ..inference.engine import Engine, Member, blend
from ..inference.members import all_int8, load_members, member_precisions
from ..inference.recipe import Recipe
from ..inference.review import REVIEW_FEATURES, final_features, image_features, review_table, write_review
from ..inference.review import notes as review_notes
from ..lineage.provenance import load_recipe, rows_source
from ..models.unet import load_checkpoint

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_COLOUR_RE = re.compile(r"^#?([0-9a-fA-F]{6})$")
# Quality 95 without chroma subsampling: colour edges along the car's outline stay crisp.
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


@dataclass
class Predictor:
    engine: Engine
    weights: list[int]
    recipe: Recipe  # the threshold and post-processing (one checkpoint: 0.5, none)
    source: str
    batch_size: int = 4  # images decoded and handed to the engine at a time
    lineage: dict = field(default_factory=dict)  # what every mask depends on (provenance.rows_source or checkpoint)
    runtime: str = ""  # what runs the network, in words (backends.RuntimeChoice.describe)

    def mask(self, maps, image: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """One photo's mask (uint8 0/255 at the photo's size) and its review features from the engine's
        uint8 maps (M, H, W) of it: the blend, the review features, then the recipe's threshold and
        post-processing with the photo (``Recipe.mask``), as ``evaluate`` scores the recipe. predict and
        serve both call this, so that a photo gets the same mask from either."""
        blended = blend(maps, self.weights)
        features = image_features(maps[:, None], blended[None], self.recipe.threshold)[0].tolist()
        raw, car = self.recipe.mask(blended.cpu().numpy(), image, openvino=self.engine.openvino)
        features = final_features(features, raw, car).tolist()  # the review list describes the mask written
        return car.astype(np.uint8) * 255, features

    def warm_up(self) -> None:
        """Compile what a CPU runtime compiles on first use (the network at each view's size, the refiner),
        so that the first photo does not wait for it (a server, before it listens)."""
        self.engine.warm_up()
        self.recipe.compile_steps(self.engine.openvino)

    def photo(self, path: Path, scratch: Path) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """One photo file end to end, as ``predict`` does it: (the photo upright as RGB, its mask 0/255, its
        review features). The engine reads the file itself (a scaled JPEG decode at the model's size, as in
        training), not a resize of the full decode, whose pixels differ; an EXIF-rotated photo's upright
        copy goes to ``scratch``. DataError when the file is not a readable image."""
        image = read_image(path)
        ((_, maps),) = self.engine.predict([engine_input(path, image, Path(scratch), "0")])
        return (image, *self.mask(maps, image))


def engine_input(path: Path, image: np.ndarray, scratch: Path, name: str) -> Path:
    """The file the engine reads for the photo at ``path``, decoded upright as ``image``: the file itself, or,
    when its EXIF orientation turns it (phone photos: OpenCV decodes upright, the header has the stored
    size), an upright lossless copy ``scratch/<name>.png``, so that the engine's size and the photo's agree."""
    if (image.shape[1], image.shape[0]) == image_size(path):
        return path
    copy = scratch / f"{name}.png"
    cv2.imwrite(str(copy), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return copy


def choose_model(recipe: str | Path | None, checkpoint, pretrained) -> tuple:
    """(recipe, checkpoint, pretrained) as predict will use them: the one the user named, else the model
    this project ships (models/), so real photos get the model made for them, not whatever recipe was
    last tuned here (the demo's, say); without the shipped folder, submissions/recipe.json."""
    from ..inference.model_folder import SHIPPED

    given = [opt for opt, x in (("--recipe", recipe), ("--checkpoint", checkpoint), ("--pretrained", pretrained)) if x]
    if len(given) > 1:
        raise DataError(f"{' and '.join(given)} each name the model: give one of them")
    if recipe is not None:  # a recipe named by the user: it, or an error if it is not there
        return Path(recipe), None, None
    if checkpoint is not None or pretrained is not None:
        return None, checkpoint, pretrained
    if (SHIPPED / "pipeline.json").is_file():
        return None, None, SHIPPED
    return Path("submissions/recipe.json"), None, None


def load_predictor(
    recipe: str | Path | None = None,
    *,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int = 4,
    channels_last: bool | str = "auto",
    compile: bool | str = False,
    pretrained: str | Path | None = None,
    backend: str = "auto",
    jobs: int | None = None,
    photos: int | None = None,
) -> Predictor:
    """The recipe's ensemble, one checkpoint, or an exported model folder / hub id (``pretrained``).

    Each member runs in its recorded precision (a checkpoint: its config's ``predict.amp``, as its
    out-of-fold maps; an exported model: its pipeline.json's), or in ``precision`` for all when given;
    the outputs' key records it. ``backend``/``precision``: as ``backends.resolve_runtime`` decides (auto:
    OpenVINO on a CPU, int8 where the models have INT8 networks, else bf16 where the CPU has it); ``jobs``:
    photos in flight on the CPU (None: two per core, ``cpu_jobs``, but no more than ``photos`` when the
    count is known; 1: one at a time, its network on all the cores, as ``make serve`` runs).
    """
    dev = pick_device(device)
    # The models first: whether they have INT8 networks decides the runtime on a CPU.
    if pretrained is not None:
        from ..inference.model_folder import load_pretrained

        pre = load_pretrained(pretrained, dev)
        members, weights, recipe, source = [pre.member()], [1], pre.recipe, f"{pre.name} ({pretrained})"
        own_precision, lineage = pre.spec.get("precision", "fp32"), {"pretrained": pre.sha}
    elif checkpoint is not None:
        model, cfg, sha, _ = load_checkpoint(checkpoint, dev)  # the outputs' key holds the hash of what was loaded
        members = [Member(cfg.name, [model], cfg.image.height, cfg.image.width, list(cfg.predict.tta))]
        weights, recipe, source = [1], Recipe(), str(checkpoint)  # probability 0.5, as out-of-fold scoring uses
        own_precision, lineage = cfg.predict.amp, {"checkpoint": sha}
    else:
        path = Path(recipe or "submissions/recipe.json")
        if not path.is_file():
            raise DataError(
                f"{path}: recipe not found; run `make ensemble` first, or pass --checkpoint PATH or --pretrained DIR"
            )
        recipe, shas = load_recipe(path)  # checked exactly as the submission checks it
        members, weights = load_members(recipe, dev)
        source, own_precision = str(path), None
    choice = resolve_runtime(backend, precision, dev, int8=dev.type == "cpu" and all_int8(members))
    backend, precision = choice.backend, choice.precision
    jobs = cpu_jobs(jobs, dev, photos) if backend != "torch" else jobs or 1
    if own_precision is None:
        lineage = rows_source(recipe, shas, member_precisions(recipe, dev, precision), backend)
    else:  # one model: its recorded precision, or the one asked for
        own = "int8" if precision == "int8" else resolve_precision(precision or own_precision, dev)
        members[0].precision = own
        lineage = {**lineage, "tta": list(members[0].tta), "precision": own}
    # num_workers=0: images come in small batches that this process has just decoded (see predict_images).
    if backend != "torch":
        lineage = {**lineage, "backend": backend}
    engine = Engine(
        members, dev, precision, channels_last, batch_size=batch_size, num_workers=0, compile=compile, backend=backend,
        jobs=jobs,
    )  # fmt: skip
    return Predictor(engine, weights, recipe, source, batch_size, lineage, choice.describe(dev, jobs))


def list_inputs(path: str | Path) -> list[Path]:
    """An image file, or the image files of a folder (not recursive), sorted by name.

    A folder predict wrote into before (its ``lineage.jsonl``) holds masks, cut-outs and composites
    beside any photos: the files that log lists are predict's outputs, never photos to cut out.
    """
    path = Path(path)
    if path.is_dir():
        ours = set(OutputLog(path).files) if (path / LOG).is_file() else set()
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.name not in ours
        )
        if not files:
            what = " besides predict's own outputs" if ours else ""
            raise DataError(f"{path}: no image files{what} ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return files
    if not path.exists():
        raise DataError(f"{path}: not found")
    return [path]


def parse_background(spec: str) -> tuple[int, int, int] | np.ndarray:
    """``#rrggbb`` -> an RGB tuple; otherwise an image file -> RGB array (DataError if unreadable)."""
    m = _COLOUR_RE.match(spec)
    if m and not Path(spec).exists():
        h = m.group(1)
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    if not Path(spec).is_file():
        raise DataError(f"{spec}: background is neither a colour (#rrggbb) nor an image file")
    return read_image(spec)


def fit_background(background: tuple[int, int, int] | np.ndarray, height: int, width: int) -> np.ndarray:
    """The background at (height, width) RGB: a flat colour, or the image scaled to cover and centre-cropped."""
    if isinstance(background, tuple):
        return np.broadcast_to(np.array(background, dtype=np.uint8), (height, width, 3)).copy()
    bh, bw = background.shape[:2]
    scale = max(height / bh, width / bw)
    sh, sw = max(height, round(bh * scale)), max(width, round(bw * scale))
    resized = cv2.resize(background, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (sh - height) // 2, (sw - width) // 2
    return resized[top : top + height, left : left + width]


def feather_alpha(mask: np.ndarray, px: int) -> np.ndarray:
    """Alpha (uint8 0..255) from a 0/255 mask, its edge softened over about ``px`` pixels each side.

    A Gaussian with a (2px+1) kernel only changes pixels within ``px`` of the mask edge, so the
    car's interior and the far background stay exactly 255 and 0.
    """
    if px <= 0:
        return mask
    return cv2.GaussianBlur(mask, (2 * px + 1, 2 * px + 1), sigmaX=px / 2, borderType=cv2.BORDER_REPLICATE)


def cutout(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA: the image where the car is, transparent (and black) elsewhere."""
    rgba = np.dstack([image, alpha])
    rgba[alpha == 0, :3] = 0  # nothing of the old background is kept under full transparency
    return rgba


def composite(image: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Alpha-blend the car onto ``background`` (same size), rounded to uint8; exact where alpha is 0 or 255."""
    a = alpha.astype(np.uint32)[..., None]
    out = (image.astype(np.uint32) * a + background.astype(np.uint32) * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _write(path: Path, rgb_or_gray: np.ndarray, ext: str, params: list[int] | None = None) -> None:
    img = rgb_or_gray
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, img, params or [])
    if not ok:
        raise DataError(f"{path}: could not encode {ext}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


LOG = "lineage.jsonl"
REVIEW = "review.csv"  # the review list of the images in the folder, most likely wrong first


class OutputLog:
    """``<out>/lineage.jsonl``: every file predict wrote in the folder and the key of what made it.

    Append-only (a line per file and state), so it stays cheap for 100,000 images and survives a
    kill: a file is logged as ``claimed`` before it is written and ``done`` after, so a file left
    half-way is still known to be predict's own (overwritable) but never taken as finished.
    """

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOG
        self.files: dict[str, tuple[str, str]] = {}  # file name -> (key, state)
        self.review: dict[str, list[int]] = {}  # mask file name -> its review features (review.REVIEW_FEATURES)
        lines = self.path.read_text(errors="replace").splitlines() if self.path.is_file() else []
        for n, line in enumerate(lines, 1):
            try:
                rec = json.loads(line)
                self.files[str(rec["file"])] = (str(rec["key"]), str(rec["state"]))
                if "review" in rec:
                    self.review[str(rec["file"])] = rec["review"]
            except (ValueError, KeyError, TypeError):
                if n < len(lines):  # only the last line may be torn (a kill while appending)
                    raise DataError(f"{self.path}: line {n} is not a record of predict; remove the file") from None

    def ours(self, path: Path) -> bool:
        return path.name in self.files

    def done(self, path: Path, key: str) -> bool:
        return self.files.get(path.name) == (key, "done") and path.is_file()

    def mark(self, paths: list[Path], key: str, state: str, review: list[int] | None = None) -> None:
        """Log ``paths`` in ``state``; ``review``: the image's review features, kept with its first file (the mask)."""
        extra = [{"review": review}] + [{}] * (len(paths) - 1) if review is not None else [{}] * len(paths)
        lines = "".join(
            json.dumps({"file": p.name, "key": key, "state": state, **x}) + "\n" for p, x in zip(paths, extra)
        )
        append_synced(self.path, lines)
        self.files.update({p.name: (key, state) for p in paths})
        if review is not None:
            self.review[paths[0].name] = review


def _background_id(background) -> str | None:
    """A colour as #rrggbb; an image by its pixels' content hash."""
    if background is None:
        return None
    if isinstance(background, tuple):
        return "#{:02x}{:02x}{:02x}".format(*background)
    return f"{background.shape}:{hashlib.sha256(background.tobytes()).hexdigest()[:16]}"


def output_key(predictor: Predictor, image: Path, background_id: str | None, feather: int) -> str:
    """What an image's outputs depend on: the model(s) and settings, and the input file itself."""
    st = image.stat()
    return text_sha(
        json.dumps(
            {
                "source": predictor.lineage,
                "threshold": predictor.recipe.threshold,
                "postprocess": list(predictor.recipe.postprocess),
                "background": background_id,
                "feather": feather,
                "input": [image.name, st.st_size, st.st_mtime_ns],
            },
            sort_keys=True,
        )
    )


def check_outputs(inputs: list[Path], out_dir: Path, with_composite: bool, log: OutputLog) -> None:
    """Before any work: no output may land on an input or on a file predict did not write."""
    folders = {p.parent.resolve() for p in inputs}
    if len(inputs) > 1 and out_dir.resolve() in folders:
        raise DataError(
            f"{out_dir}: --out is the input folder; the outputs would be read as photos by the next run. "
            "Use another folder, e.g. --out predictions"
        )
    resolved_inputs = {p.resolve() for p in inputs}
    if (out_dir / REVIEW).exists() and not log.ours(out_dir / REVIEW):
        raise DataError(f"{out_dir / REVIEW}: exists and was not written by predict; move it, or use another --out")
    for p in inputs:
        for target in output_paths(out_dir, p, with_composite).values():
            if target.resolve() in resolved_inputs:
                raise DataError(f"{target}: is an input; writing {p.name}'s output there would overwrite it")
            if target.exists() and not log.ours(target):
                raise DataError(
                    f"{target}: exists and was not written by predict ({out_dir / LOG} does not list it); "
                    "refusing to overwrite it. Move it, or use another --out"
                )


def output_paths(out_dir: Path, image: Path, with_composite: bool) -> dict[str, Path]:
    stem = image.stem
    paths = {"mask": out_dir / f"{stem}_mask.png", "cutout": out_dir / f"{stem}_cutout.png"}
    if with_composite:
        paths["composite"] = out_dir / f"{stem}_composite.jpg"
    return paths


UPRIGHT = ".upright-"  # the scratch folder of upright copies, inside the output folder


def predict_images(
    predictor: Predictor,
    inputs: list[Path],
    out_dir: str | Path,
    *,
    background: tuple[int, int, int] | np.ndarray | None = None,
    feather: int = 0,
    resume: bool = False,
    quiet: bool = False,
) -> dict:
    """Write the outputs of every readable input; return {"written": [...], "skipped": {path: reason}}.

    ``background``: what ``parse_background`` returns, or None for no composite.
    """
    out_dir = check_writable(out_dir, "predictions")
    with OutputLock(
        out_dir / ".predict", "predicting into it", remove=True
    ):  # two runs would mix their outputs and log
        return _predict_locked(predictor, inputs, out_dir, background, feather, resume, quiet)


def _predict_locked(predictor, inputs, out_dir, background, feather, resume, quiet) -> dict:
    bg = background
    fitted: dict[tuple[int, int], np.ndarray] = {}  # the background per image size (folders are usually one size)
    stems: dict[str, Path] = {}
    for p in inputs:
        if p.stem in stems:
            raise DataError(f"{p}: same name as {stems[p.stem]}; their outputs would overwrite each other")
        stems[p.stem] = p
    log = OutputLog(out_dir)
    check_outputs(inputs, out_dir, bg is not None, log)
    bg_id = _background_id(bg)
    keys = {p: output_key(predictor, p, bg_id, feather) for p in inputs}
    todo = [
        p
        for p in inputs
        if not (resume and all(log.done(q, keys[p]) for q in output_paths(out_dir, p, bg is not None).values()))
    ]
    written: list[str] = []
    skipped: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc="predict", unit="img", disable=quiet or len(todo) < 2)
    batch = max(1, predictor.batch_size)
    # The upright copies of EXIF-rotated photos live in the output folder, a batch at a time: nothing goes
    # to the system temp folder, and what a killed run left is removed here (the lock says none is running).
    # Only the folders this pipeline made (its log lists each): a user's own `.upright-mine/` stays.
    for stale in out_dir.glob(f"{UPRIGHT}*"):
        if stale.is_dir() and not stale.is_symlink() and log.ours(stale):
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=UPRIGHT, dir=out_dir) as upright:
        log.mark([Path(upright)], "upright", "claimed")
        for start in range(0, len(todo), batch):
            images: dict[str, np.ndarray] = {}  # by the name the engine reports
            source: dict[str, Path] = {}
            engine_paths: list[Path] = []
            for p in todo[start : start + batch]:
                # Decode each image once at full size here: that is the readability check, and the
                # cut-out needs these pixels anyway. The engine re-reads at model size (a scaled decode).
                try:
                    image = read_image(p)
                    path = engine_input(p, image, Path(upright), f"{len(engine_paths)}_{p.stem}")
                except DataError as e:
                    skipped[str(p)] = str(e)
                    tqdm.write(printable(f"skipped {e}"))
                    bar.update(1)
                    continue
                engine_paths.append(path)
                images[path.name], source[path.name] = image, p
            for p in source.values():
                log.mark(list(output_paths(out_dir, p, bg is not None).values()), keys[p], "claimed")
            for name, q in predictor.engine.predict(engine_paths):
                (Path(upright) / name).unlink(missing_ok=True)  # an upright copy, read by the engine: not needed now
                image, p = images.pop(name), source[name]
                mask, features = predictor.mask(q, image)
                alpha = feather_alpha(mask, feather)
                targets = output_paths(out_dir, p, bg is not None)
                _write(targets["mask"], mask, ".png")
                _write(targets["cutout"], cutout(image, alpha), ".png")
                if bg is not None:
                    if mask.shape not in fitted:
                        fitted[mask.shape] = fit_background(bg, *mask.shape)
                    _write(targets["composite"], composite(image, alpha, fitted[mask.shape]), ".jpg", JPEG_PARAMS)
                log.mark(list(targets.values()), keys[p], "done", review=features)
                written.append(str(p))
                bar.update(1)
    bar.close()
    # The review list of this run's images (resumed ones included) from the features the log kept.
    rows = [
        [p.name, *log.review[mask.name]]
        for p in inputs
        if log.done(mask := output_paths(out_dir, p, bg is not None)["mask"], keys[p])
        and len(log.review.get(mask.name, ())) in (len(REVIEW_FEATURES), len(REVIEW_FEATURES) - 2)
    ]  # (an older version's log has no post-processing counts: read as none; older still, no review at all)
    review, notes = None, []
    if rows:
        review = out_dir / REVIEW
        log.mark([review], "review", "claimed")
        table = review_table(pd.DataFrame([r + [0] * (len(REVIEW_FEATURES) + 1 - len(r)) for r in rows],
                                          columns=["img", *REVIEW_FEATURES]))  # fmt: skip
        write_review(review, table)
        log.mark([review], "review", "done")
        notes = review_notes(table, review)
    return {
        "written": written, "skipped": skipped, "already_done": len(inputs) - len(todo), "review": review,
        "notes": notes,
    }  # fmt: skip


def run_predict(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    recipe: str | Path | None = None,
    checkpoint: str | Path | None = None,
    background: str | None = None,
    feather: int = 0,
    device: str = "auto",
    precision: str | None = None,
    batch_size: int = 4,
    resume: bool = False,
    quiet: bool = False,
    channels_last: bool | str = "auto",
    compile: bool | str = False,
    pretrained: str | Path | None = None,
    backend: str = "auto",
    jobs: int | None = None,
) -> dict:
    """The CLI stage; raises DataError at the end (non-zero exit) if any input was unreadable."""
    if feather < 0:
        raise DataError(f"--feather {feather}: must be 0 or more pixels")
    inputs = list_inputs(input_path)
    bg = parse_background(background) if background else None  # a bad background fails before any model loads
    asked = pretrained
    recipe, checkpoint, pretrained = choose_model(recipe, checkpoint, pretrained)
    from ..inference.backends import check_backend

    check_backend(backend)
    if pretrained is not None and asked is None and not quiet:
        print(f"no recipe (make ensemble) or --checkpoint: using the model this project ships, {pretrained}")
    predictor = load_predictor(
        recipe, checkpoint=checkpoint, device=device, precision=precision, batch_size=batch_size,
        channels_last=channels_last, compile=compile, pretrained=pretrained, backend=backend, jobs=jobs,
        photos=len(inputs),
    )  # fmt: skip
    if not quiet:
        print(predictor.runtime)
    result = predict_images(predictor, inputs, out_dir, background=bg, feather=feather, resume=resume, quiet=quiet)
    if not quiet:
        print(
            f"{out_dir}: {len(result['written'])} image(s) cut out with {predictor.source}"
            + (f", {result['already_done']} already done" if result["already_done"] else "")
        )
        for line in result["notes"]:
            print(line)
    if result["skipped"]:
        names = ", ".join(result["skipped"])
        raise DataError(f"{len(result['skipped'])} unreadable image(s) skipped: {names}")
    return result
