"""``make serve``: cut-outs over HTTP and in a web page, the model loaded once.

``python -m pipeline serve`` (``--pretrained DIR_OR_HUB_ID``, default: the model this project ships)
listens on 127.0.0.1:7000 and answers:

- ``GET /``: a page (``serve_page/``, no CDN, no build step) to drop photos on and download cut-outs;
- ``POST /api/remove``: multipart field ``file`` -> the cut-out (PNG with alpha at the photo's size),
  ``format=png|jpg|webp``, ``bg=#rrggbb`` (a composite), ``mask=1`` (the mask alone); the review signal
  of ``predict``'s review list for the photo alone in the headers ``X-Review-Score`` and ``X-Review-Why``;
- ``GET /api/health``, ``GET /api/model`` (name, card, figures), OpenAPI docs at ``/docs``.

The mask is ``predict``'s for the same photo: ``Predictor.photo`` (pipeline/stages/predict.py) is the one
function both call. Inference runs in one worker thread, one photo at a time, behind a bounded queue: a
photo that finds it full gets 503 with Retry-After before its body is read. An upload over the size limit
gets 413 and is read no further; a header claiming more pixels than the limit (a decompression bomb) gets
413 before any decoding. The upload lives in memory; the engine reads photos from files, so each one is
written to a private folder (mode 700) inside the server's own temporary folder and removed before the
answer is sent: nothing of a photo stays on disk, and no log line carries its bytes or its name.
docs/serve.md documents the endpoints, limits and security.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import ipaddress
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from fastapi import Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from ..core.config import ConfigError
from ..core.errors import DataError
from ..inference.review import REVIEW_FEATURES, review_table
from .predict import JPEG_PARAMS, Predictor, choose_model, composite, cutout, fit_background, load_predictor

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7000
MAX_UPLOAD_MB = 30.0
MAX_MEGAPIXELS = 50.0  # a 48-megapixel phone photo passes; its decoded pixels take 150 MB, the model's maps more
QUEUE = 4  # photos waiting behind the one being cut out
API_KEY_ENV = "PIPELINE_API_KEY"
PAGE = Path(__file__).with_name("serve_page")
PAGE_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# What the body may hold beyond the photo: the multipart boundaries and headers, and the small fields.
MULTIPART_SLACK = 64 * 1024
UPLOAD_SECONDS = 120.0  # a slow upload holds a queue place; past this it gets 408
# PIL's names of the formats predict reads (pipeline.stages.predict.IMAGE_EXTENSIONS); MPO: phones' JPEG.
READABLE = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
FORMATS = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
# A body of one of these types is the photo itself (curl --data-binary @photo.jpg -H "Content-Type: image/jpeg").
RAW_TYPES = {"image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "application/octet-stream"}
WEBP_QUALITY = 90  # lossy colour; libwebp keeps the alpha plane lossless, so alpha == mask still holds
_COLOUR = re.compile(r"#?([0-9a-fA-F]{6})")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
REVIEW_HEADERS = ("X-Review-Score", "X-Review-Why", "X-Review-Look", "X-Image-Size", "Server-Timing", "Retry-After")
# X-Review-Look is 1 where the review score (the expected number of wrong pixels) reaches this share of the
# car's area, or no car was found. On 108 photos of the test split's 27 cars (views 1, 5, 9, 13; Dice 0.984 to
# 0.997) the share was 0.009 to 0.023 and the score tracked the true error count (docs/scripts/serve_review_flag.py,
# docs/serve.md): 0.025 flags a photo whose mask is expected to be worse than any of those.
LOOK_SHARE = 0.025
# The page's Content-Security-Policy: its own files only (no CDN), images from blob: URLs it makes.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Refused(Exception):
    """A request answered with ``status`` and one line of JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, " ".join(message.split()), headers or {}


@dataclass(frozen=True)
class Limits:
    max_upload_mb: float = MAX_UPLOAD_MB
    max_megapixels: float = MAX_MEGAPIXELS
    queue: int = QUEUE

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass(frozen=True)
class Options:
    """What ``POST /api/remove`` was asked for."""

    format: str = "png"
    bg: tuple[int, int, int] | None = None
    mask: bool = False

    @classmethod
    def parse(cls, fmt: str | None, bg: str | None, mask: str | None) -> Options:
        fmt = (fmt or "png").lower()
        fmt = {"jpeg": "jpg"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise Refused(422, f"format={fmt[:20]}: use png, jpg or webp")
        colour = None
        if bg:
            m = _COLOUR.fullmatch(bg.strip())
            if not m:
                raise Refused(422, f"bg={bg[:20]}: a colour #rrggbb (e.g. %23ffffff in a URL, or ffffff)")
            h = m.group(1)
            colour = (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
        flag = (mask or "0").lower()
        if flag not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
            raise Refused(422, f"mask={mask[:20]}: 1 (the mask alone) or 0")
        as_mask = flag in ("1", "true", "yes", "on")
        if as_mask and colour is not None:
            raise Refused(422, "mask=1 and bg each say what to send back: give one of them")
        return cls(fmt, colour, as_mask)


def lone_review(name: str, features: list[int]) -> tuple[float, str]:
    """(score, why) that predict's review list gives the photo ``name`` when it is the only one: the
    expected number of wrong pixels and the evidence in words (pipeline/inference/review.py). A lone photo
    has no other view of its car to compare with, so its shape is judged against all train cars'."""
    import pandas as pd

    row = review_table(pd.DataFrame([[name, *features]], columns=["img", *REVIEW_FEATURES])).iloc[0]
    return float(row["score"]), str(row["why"])


def header_text(text: str, limit: int = 500) -> str:
    """``text`` as an HTTP header value: one line of ASCII (others as \\uXXXX escapes), at most ``limit``."""
    one = " ".join(text.split()).encode("ascii", "backslashreplace").decode("ascii")
    return one if len(one) <= limit else one[: limit - 3] + "..."


def upload_name(filename: str | None) -> str:
    """The upload's own name (never a path), as the review and the download name use it."""
    name = Path((filename or "").replace("\\", "/")).name.strip()
    return name[:200] or "photo.jpg"


def check_header(data: bytes, name: str, limits: Limits) -> str:
    """The photo's format (READABLE) from its header, read without decoding the pixels: 422 for an empty
    file or one no image reader knows, 415 for a format predict does not read, 413 for more pixels than
    the limit (a decompression bomb: a PNG of a few KB can claim 30000x30000 pixels)."""
    from PIL import Image

    if not data:
        raise Refused(422, f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # the header only
                fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError as e:  # PIL's own limit (about 179 megapixels), checked in open
        claimed = re.search(r"\((\d+) pixels\)", str(e))
        what = f"{int(claimed.group(1)) / 1e6:.1f} megapixels" if claimed else "its size"
        raise Refused(413, f"{name}: {what} is over the limit of {limits.max_megapixels:g} megapixels") from None
    except Exception:  # PIL raises several types for what is not an image
        raise Refused(422, f"{name}: not an image (or its header is broken)") from None
    if fmt not in READABLE:
        raise Refused(415, f"{name}: {fmt} images are not read here; send JPEG, PNG, WebP, BMP or TIFF")
    if w * h > limits.max_megapixels * 1e6:
        raise Refused(
            413,
            f"{name}: {w}x{h} pixels ({w * h / 1e6:.1f} megapixels) is over the limit of "
            f"{limits.max_megapixels:g} megapixels",
        )
    return fmt


# -- the worker: one inference at a time, a bounded queue ----------------------------------------------
class Worker:
    """Runs jobs one at a time in its own thread. At most ``waiting + 1`` jobs are admitted at once (one
    running, the rest waiting): a request reserves its place before its upload is read (``reserve``), so a
    full queue answers at once and holds no upload in memory; the place is freed when its job ends (or
    when the request ends without one)."""

    def __init__(self, waiting: int):
        self.capacity = waiting + 1
        self._admitted = 0
        self._running = False
        self._lock = threading.Lock()
        self._jobs: deque[tuple[Future, object]] = deque()
        self._ready = threading.Condition(self._lock)
        self._stopped = False
        self.seconds: deque[float] = deque(maxlen=20)  # the last jobs' durations, for Retry-After
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    def reserve(self) -> bool:
        with self._lock:
            if self._stopped or self._admitted >= self.capacity:
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def submit(self, fn) -> Future:
        """Queue ``fn`` on a place ``reserve`` gave; the place is freed when it ends or is cancelled."""
        fut: Future = Future()
        fut.add_done_callback(lambda _: self.release())
        with self._ready:
            self._jobs.append((fut, fn))
            self._ready.notify()
        return fut

    def state(self) -> dict:
        with self._lock:
            return {"running": self._running, "waiting": len(self._jobs), "admitted": self._admitted}

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the recent mean job time for every job ahead, at least 1."""
        with self._lock:
            recent, ahead = list(self.seconds), self._admitted
        mean = sum(recent) / len(recent) if recent else 2.0
        return max(1, math.ceil(mean * max(1, ahead)))

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._stopped:
                    self._ready.wait()
                if self._stopped and not self._jobs:
                    return
                fut, fn = self._jobs.popleft()
                if not fut.set_running_or_notify_cancel():  # its request went away while it waited
                    continue
                self._running = True
            start = time.perf_counter()
            try:
                fut.set_result(fn())
            except BaseException as e:  # handed to the request that waits for it
                fut.set_exception(e)
            finally:
                with self._lock:
                    self.seconds.append(time.perf_counter() - start)
                    self._running = False


# -- one photo ----------------------------------------------------------------------------------------
@dataclass
class Answer:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def encode(image: np.ndarray, fmt: str, exact: bool = False) -> bytes:
    """RGB, RGBA or grey uint8 -> the bytes of a PNG, JPEG (quality 95, 4:4:4 as predict's) or WebP
    (lossless where ``exact``: a mask)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    params = {
        "png": [cv2.IMWRITE_PNG_COMPRESSION, 1],  # zlib level 1: the fastest, 5 % larger than level 3
        "jpg": JPEG_PARAMS,
        "webp": [cv2.IMWRITE_WEBP_QUALITY, 101 if exact else WEBP_QUALITY],
    }[fmt]
    ok, buf = cv2.imencode("." + fmt, image, params)
    if not ok:
        raise RuntimeError(f"could not encode the answer as {fmt}")
    return buf.tobytes()


class Service:
    """The model, the server's temporary folder, and what a request does with one photo."""

    def __init__(self, predictor: Predictor, model: dict, limits: Limits, temp_root: str | Path | None = None):
        self.predictor, self.model, self.limits = predictor, model, limits
        if temp_root is None:
            self.temp_root = Path(tempfile.mkdtemp(prefix="pipeline-serve-"))
            self._own_root = True
        else:
            self.temp_root = Path(temp_root)
            self.temp_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._own_root = False
        self.worker = Worker(limits.queue)

    def close(self) -> None:
        self.worker.stop()
        if self._own_root:
            shutil.rmtree(self.temp_root, ignore_errors=True)

    def cut(self, data: bytes, name: str, fmt: str, options: Options) -> Answer:
        """The answer for one photo (in the worker thread): predict's mask, then the asked output."""
        start = time.perf_counter()
        scratch = Path(tempfile.mkdtemp(prefix="photo-", dir=self.temp_root))  # mode 700: this process's own
        try:
            path = scratch / f"upload{READABLE[fmt]}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                image, mask, features = self.predictor.photo(path, scratch)
            except DataError as e:  # a truncated or undecodable photo: named as the user named it
                message = str(e).replace(str(path), name).replace(str(scratch), "").replace(str(self.temp_root), "")
                raise Refused(422, message) from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        inferred = time.perf_counter() - start
        score, why = lone_review(name, features)
        area = features[REVIEW_FEATURES.index("area")]  # the car's pixels, as the review counts them
        look = area == 0 or score >= LOOK_SHARE * area
        h, w = mask.shape
        stem = _SAFE_NAME.sub("_", Path(name).stem).strip("._")[:100] or "photo"
        if options.mask:
            body, what = encode(mask, options.format, exact=True), "mask"
        elif options.bg is not None or options.format == "jpg":  # JPEG has no alpha: white unless bg says
            background = fit_background(options.bg or (255, 255, 255), h, w)
            body, what = encode(composite(image, mask, background), options.format), "composite"
        else:
            body, what = encode(cutout(image, mask), options.format), "cutout"
        total = time.perf_counter() - start
        headers = {
            "X-Review-Score": f"{score:.1f}",
            "X-Review-Why": header_text(why) or "-",
            "X-Review-Look": "1" if look else "0",
            "X-Image-Size": f"{w}x{h}",
            "Server-Timing": f"infer;dur={inferred * 1000:.0f}, total;dur={total * 1000:.0f}",
            "Content-Disposition": f'inline; filename="{stem}_{what}.{options.format}"',
            "Cache-Control": "no-store",
        }
        return Answer(body, FORMATS[options.format], headers)


def model_info(recipe, checkpoint, pretrained, predictor: Predictor) -> dict:
    """What ``GET /api/model`` says: the model's name, what runs it (``runtime``: the start line's words, such as
    ``OpenVINO int8 (the rest in bf16) on the CPU (2 threads)``), its card and its figures (test split, out of fold)."""
    info: dict = {"name": predictor.source, "source": predictor.source, "threshold": predictor.recipe.threshold}
    info["runtime"] = predictor.runtime.removeprefix("inference: ").split(";")[0]
    info["postprocess"] = list(predictor.recipe.postprocess)
    if pretrained is None:
        return {**info, "card": None, "test_split": None, "out_of_fold": None}
    from ..inference.model_folder import CARD, check_folder, fetch

    folder = fetch(pretrained)
    spec = check_folder(folder, str(pretrained))
    card = (folder / CARD).read_text(errors="replace") if (folder / CARD).is_file() else None
    figures = (spec.get("source") or {}).get("recipe") or {}
    return {
        **info,
        "name": spec["name"],
        "input": {"height": spec["input"]["height"], "width": spec["input"]["width"]},
        "tta": spec["tta"],
        "card": card,
        "test_split": card_test_split(card),
        "out_of_fold": {k: figures[k] for k in ("mean_dice", "dice_p5", "n_images") if k in figures} or None,
    }


def card_test_split(card: str | None) -> dict | None:
    """The test-split row of a model card (its table's first row after "On the test split"): mean Dice,
    5th percentile and minimum (and the row's name); None where the card has none."""
    if not card or "On the test split" not in card:
        return None
    after = card.split("On the test split", 1)[1]
    for line in after.splitlines():
        cells = [c.replace("**", "").strip() for c in line.strip().strip("|").split("|")]
        numbers = [c for c in cells[1:] if re.fullmatch(r"0\.\d+", c.split(" ")[0] or "")]
        if line.startswith("|") and len(numbers) >= 2:
            keys = ("mean_dice", "dice_p5", "min_dice")
            return {k: float(v.split(" ")[0]) for k, v in zip(keys, numbers)} | {"row": cells[0]}
    return None


# -- the app ------------------------------------------------------------------------------------------
def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


REMOVE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the photo"},
                        "format": {"type": "string", "enum": list(FORMATS), "description": "as the query's"},
                        "bg": {"type": "string", "description": "as the query's"},
                        "mask": {"type": "string", "description": "as the query's"},
                    },
                }
            }
        },
    }
}


def create_app(
    predictor: Predictor,
    model: dict | None = None,
    limits: Limits | None = None,
    api_key: str | None = None,
    cors_origins: list[str] | tuple[str, ...] = (),
    temp_root: str | Path | None = None,
):
    """The ASGI app. ``app.state.service`` holds the model, the worker and the temporary folder (closed,
    the folder removed, when the app shuts down)."""
    limits = limits or Limits()
    model = model or {"name": predictor.source}
    service = Service(predictor, model, limits, temp_root)
    key = api_key.encode() if api_key else None  # UTF-8: the raw bytes a client sends for it (headers read as Latin-1)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            service.close()

    # FastAPIOffline: the OpenAPI docs at /docs from files installed with the package (no CDN).
    app = FastAPIOffline(
        title="Car cut-outs",
        version="1",
        summary="Cut the car out of a photo: the pipeline's predict, over HTTP. Guide: docs/serve.md",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.service = service
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
            expose_headers=list(REVIEW_HEADERS),
        )
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's --api-key")

    def guard(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        # Constant time: how much of a guess matches never shows in the answer's timing.
        if given is None or not hmac.compare_digest(given.encode("latin-1", "replace"), key):
            raise Refused(
                401,
                "missing API key: send the header X-API-Key" if given is None else "wrong API key",
                {"WWW-Authenticate": 'Bearer realm="api"'},
            )

    @app.exception_handler(Refused)
    async def refused(request, e: Refused):
        return _error(e.status, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or "request"
        return _error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def bug(request, e: Exception):  # a bug: logged with its traceback by uvicorn, one line of JSON here
        return _error(500, f"internal error ({type(e).__name__}); the server's log has the details")

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        return _error(e.status_code, str(e.detail), dict(e.headers or {}))

    page = (PAGE / "index.html").read_text()
    assets = {name: (PAGE / name).read_bytes() for name in PAGE_FILES}

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str):
        if name not in assets:
            raise Refused(404, f"/static/{name[:50]}: no such file")
        return Response(assets[name], media_type=PAGE_FILES[name], headers=PAGE_HEADERS)

    @app.get("/api/health", summary="Is it up, and how busy (no API key needed)")
    async def health():
        state = service.worker.state()
        return {
            "status": "ok",
            "model": model.get("name"),
            "running": state["running"],
            "waiting": state["waiting"],
            "queue": limits.queue,
            "max_upload_mb": limits.max_upload_mb,
            "max_megapixels": limits.max_megapixels,
            "api_key_required": key is not None,
        }

    @app.get("/api/model", summary="The model: name, card, figures")
    async def model_route(request: Request, _key: str | None = _security(key_header)):
        guard(request)
        return model

    async def read_body(request: Request, limit: int) -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise Refused(413, f"upload over the limit of {limits.max_upload_mb:g} MB; not read further")
        return bytes(body)

    @app.post(
        "/api/remove",
        summary="Cut the car out of a photo",
        description=(
            "Multipart field `file`: a JPEG, PNG, WebP, BMP or TIFF photo. Answers the cut-out at the photo's own "
            "size (PNG with alpha by default), with the review signal in the headers `X-Review-Score` (expected "
            "wrong pixels) and `X-Review-Why`. format, bg and mask may also be sent as form fields."
        ),
        response_class=Response,
        responses={
            200: {"content": {t: {} for t in FORMATS.values()}, "description": "the cut-out, composite or mask"},
            401: {"description": "API key missing or wrong"},
            413: {"description": "over the size or pixel limit"},
            415: {"description": "not a format read here"},
            422: {"description": "empty, truncated or not an image; a bad parameter"},
            503: {"description": "the queue is full: retry after Retry-After seconds"},
        },
        openapi_extra=REMOVE_BODY,
    )
    async def remove(
        request: Request,
        format: str | None = Query(
            None, description="png (default, with alpha), jpg (no alpha: on white or bg) or webp"
        ),
        bg: str | None = Query(None, description="a background colour #rrggbb (%23rrggbb in a URL, or rrggbb)"),
        mask: str | None = Query(None, description="1: the mask alone (0/255), not the cut-out"),
        _key: str | None = _security(key_header),
    ):
        guard(request)
        Options.parse(format, bg, mask)  # a bad parameter is refused before the upload is read
        limit = limits.max_bytes + MULTIPART_SLACK
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise Refused(
                413, f"upload of {int(length) / 2**20:.1f} MB is over the limit of {limits.max_upload_mb:g} MB"
            )
        content_type = request.headers.get("content-type", "")
        multipart = content_type.lower().startswith("multipart/form-data")
        raw = content_type.lower().split(";")[0].strip() in RAW_TYPES  # the photo's bytes as the whole body
        if not (multipart or raw):
            raise Refused(
                415,
                "send the photo as multipart/form-data, field 'file' (curl -F file=@photo.jpg), or as the body "
                "with Content-Type image/jpeg (png, webp, ...)",
            )
        if not service.worker.reserve():
            wait = service.worker.retry_after()
            raise Refused(
                503,
                f"busy: {service.worker.capacity} photos are being cut out or waiting; retry in {wait} s",
                {"Retry-After": str(wait)},
            )
        submitted = False
        try:
            try:
                body = await asyncio.wait_for(read_body(request, limit), UPLOAD_SECONDS)
            except asyncio.TimeoutError:
                raise Refused(408, f"upload took longer than {UPLOAD_SECONDS:g} s") from None
            if raw:
                data, name, fields = body, upload_name(request.headers.get("x-filename")), {}
            else:
                data, name, fields = await _multipart(body, content_type)
            options = Options.parse(fields.get("format") or format, fields.get("bg") or bg, fields.get("mask") or mask)
            if len(data) > limits.max_bytes:
                raise Refused(
                    413, f"{name}: {len(data) / 2**20:.1f} MB is over the limit of {limits.max_upload_mb:g} MB"
                )
            fmt = check_header(data, name, limits)
            fut = service.worker.submit(partial(service.cut, data, name, fmt, options))
            submitted = True
            answer = await asyncio.wrap_future(fut)
        finally:
            if not submitted:
                service.worker.release()
        return Response(answer.body, media_type=answer.media_type, headers=answer.headers)

    return app


async def _multipart(body: bytes, content_type: str) -> tuple[bytes, str, dict[str, str]]:
    """(the photo's bytes, its name, the other fields) of a multipart body held in memory."""

    async def once():
        yield body

    parser = MultiPartParser(Headers({"content-type": content_type}), once(), max_files=1, max_fields=8)
    parser.spool_max_size = len(body) + 1  # the upload stays in memory: never a file in the system temp
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise Refused(422, f"malformed multipart body ({e.message})") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Refused(422, "no photo: send it in the multipart field 'file' (curl -F file=@photo.jpg)")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return upload.file.read(), upload_name(upload.filename), fields
    finally:
        await form.close()


def _security(scheme):
    """``Security(scheme)``: the API key shows in the OpenAPI docs (their Authorize button); the check
    itself is ``guard``'s, which also takes ``Authorization: Bearer``."""
    return Security(scheme)


# -- the command --------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is this machine's own (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The loud warning printed when the server listens beyond this machine; None on loopback."""
    if is_loopback(host):
        return None
    bar = "!" * 78
    lines = [
        bar,
        f"WARNING: --host {host} listens beyond this machine: anyone who can reach it on the network can send",
        "photos and use its CPU. It speaks plain HTTP: put it behind a reverse proxy with HTTPS.",
        "No API key is set: ANYONE can use the API. Set --api-key or PIPELINE_API_KEY."
        if not api_key
        else "The API needs the key (--api-key / PIPELINE_API_KEY); the page at / asks for it.",
        bar,
    ]
    return "\n".join(lines)


def served_predictor(
    recipe, checkpoint, device: str, pretrained, backend: str = "auto", precision: str | None = None
) -> Predictor:
    """The predictor the server runs: ``predict``'s, one photo at a time as its worker hands them over, so that
    on a CPU a photo's network runs on all the cores in one stream, not on one of the streams that photos in
    flight would share (the shipped model, 2 cores: a lone photo 0.13 s against 0.18 s, the same mask).
    ``backend``/``precision``: as ``predict``'s (``--precision fp32``: PyTorch fp32, the exact masks)."""
    return load_predictor(
        recipe, checkpoint=checkpoint, device=device, pretrained=pretrained, backend=backend, precision=precision,
        jobs=1,
    )  # fmt: skip


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one); ConfigError when it cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there ({e.strerror}); another server on that port? "
            f"Try another: make serve PORT={port + 1}"
        ) from None
    sock.listen(128)
    return sock


def run_serve(
    pretrained: str | Path | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: str | None = None,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_megapixels: float = MAX_MEGAPIXELS,
    queue: int = QUEUE,
    cors_origins: list[str] | tuple[str, ...] = (),
    device: str = "auto",
    backend: str = "auto",
    precision: str | None = None,
) -> None:
    """The CLI stage: load the model once, then serve until Ctrl+C."""
    import logging

    import uvicorn

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: 0..65535 (0: a free port)")
    for option, value in (("--max-upload-mb", max_upload_mb), ("--max-megapixels", max_megapixels)):
        if not value > 0:
            raise ConfigError(f"{option} {value}: must be more than 0")
    if queue < 0:
        raise ConfigError(f"--queue {queue}: 0 or more photos waiting")
    for origin in cors_origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(f"--cors-origin {origin}: an origin like https://example.com (scheme and host, no path)")
    from ..inference.backends import check_backend

    check_backend(backend)  # an unusable runtime fails before anything listens
    warning = exposure_warning(host, api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    recipe, checkpoint, pretrained = choose_model(None, None, pretrained)
    if pretrained is not None:
        from ..inference.model_folder import fetch

        fetch(pretrained)  # a missing folder fails here, before anything listens
    sock = bind(host, port)  # before the model loads: a port in use fails at once
    try:
        print(f"loading the model ({pretrained or recipe}) ...", flush=True)
        predictor = served_predictor(recipe, checkpoint, device, pretrained, backend, precision)
        print(predictor.runtime, flush=True)
        predictor.warm_up()  # the first cut-out does not wait for a runtime to compile
        info = model_info(recipe, checkpoint, pretrained, predictor)
    except BaseException:
        sock.close()
        raise
    limits = Limits(max_upload_mb, max_megapixels, queue)
    app = create_app(predictor, info, limits, api_key=api_key, cors_origins=cors_origins)
    bound = sock.getsockname()[1]
    address = f"http://{f'[{host}]' if ':' in host else host}:{bound}/"
    if warning:
        address += f" (from this machine: http://127.0.0.1:{bound}/)"
    print(
        f"serving {info['name']}: open {address}\n  API: POST /api/remove, docs: /docs; queue {queue}, uploads up "
        f"to {max_upload_mb:g} MB{', API key required' if api_key else ''}. Ctrl+C stops.",
        flush=True,
    )
    config = uvicorn.Config(app, log_level="warning", access_log=True, limit_concurrency=64, timeout_keep_alive=5)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO)  # method, path, status: never a photo or its name
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C once it has shut down cleanly
        print("stopped", flush=True)
    finally:
        sock.close()
