"""The Kaggle data layout, file readers, and the checks that name the bad file.

Layout under a data root (the Kaggle download, unzipped)::

    train/<car>_<NN>.jpg          train_masks/<car>_<NN>_mask.gif (palette values 0/1)
    test/<car>_<NN>.jpg           metadata.csv     sample_submission.csv (img,rle_mask)
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..core.errors import DataError, printable

# The Kaggle image size. Stages read real sizes from the files; these are the defaults and
# what the README documents.
CARVANA_WIDTH = 1918
CARVANA_HEIGHT = 1280

__all__ = ["DataError", "Layout", "parse_name", "image_size", "check_jpeg_complete", "read_image", "read_mask"]

# The most pixels an image may have to be read (photos, masks, `predict --background`): checked from the
# file's header before any decoding, so a 30000x30000 PNG of under a megabyte is refused in microseconds
# instead of allocating gigabytes. 50 megapixels (8660x5773; a 48-megapixel phone photo passes): `predict`'s
# peak memory grows by about 58 bytes per pixel of the photo (1.3 GB at 2.5 MP, 2.0 GB at 16.6 MP, 2.9 GB at
# 31.8 MP; docs/troubleshooting.md), so about 4 GB at the limit.
MAX_PIXELS = 50_000_000

# cv2 decodes JPEG with libjpeg-turbo; keep it to one thread per process (DataLoader workers
# provide the parallelism, and 2-core machines must not oversubscribe).
cv2.setNumThreads(1)

NAME_RE = re.compile(r"^(?P<car>[0-9a-f]{12})_(?P<view>\d{2})\.jpg$")


@dataclass(frozen=True)
class Layout:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def masks_dir(self) -> Path:
        return self.root / "train_masks"

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    @property
    def metadata_csv(self) -> Path:
        return self.root / "metadata.csv"

    @property
    def sample_submission(self) -> Path:
        return self.root / "sample_submission.csv"

    def train_image(self, img: str) -> Path:
        return self.train_dir / img

    def mask(self, img: str) -> Path:
        return self.masks_dir / f"{Path(img).stem}_mask.gif"

    def require(self, *paths: Path) -> None:
        for p in paths:
            if not p.exists():
                demo = Path("demo/data")
                hint = (
                    "the demo's data is in demo/data: add DATA=demo/data RUNS=demo/runs"
                    if (demo / "train").is_dir() and self.root.resolve() != demo.resolve()
                    else "run `make demo` for the demo data"
                )
                raise DataError(
                    f"{p}: not found. Expected the Kaggle layout under {self.root} "
                    f"(train/, train_masks/, test/, metadata.csv, sample_submission.csv); "
                    f"set DATA=/path/to/carvana, or {hint}."
                )


def parse_name(name: str) -> tuple[str, int]:
    """``"00087a6bd4dc_01.jpg"`` -> ``("00087a6bd4dc", 1)``; DataError for anything else."""
    m = NAME_RE.match(name)
    if not m:
        raise DataError(f"{name}: not a Carvana image name (<12 hex car id>_<2-digit view>.jpg)")
    return m["car"], int(m["view"])


def check_regular(path: str | Path) -> None:
    """DataError unless ``path`` is a regular file (links followed): a FIFO would block the first read
    forever, a device or a folder is no image. By its status, before it is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{shown(path)}: file not found") from None
    except OSError as e:
        raise DataError(f"{shown(path)}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a file"
        raise DataError(f"{shown(path)}: {kind}, not an image file")


def _check_pixels(path, size: tuple[int, int]) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise DataError(
            f"{shown(path)}: {w}x{h} is {w * h / 1e6:.0f} megapixels, more than the {MAX_PIXELS / 1e6:.0f} this "
            "pipeline reads (its memory grows with the pixels); resize it first"
        )


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels; DataError for a file that is not
    a regular file, or an image of more than MAX_PIXELS pixels."""
    check_regular(path)
    try:
        with warnings.catch_warnings():  # PIL warns about large images; the limit below is ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Image.DecompressionBombError:  # past twice PIL's own limit, far past ours: refused by PIL on open
        raise DataError(
            f"{shown(path)}: more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, more than the "
            f"{MAX_PIXELS / 1e6:.0f} this pipeline reads (its memory grows with the pixels); resize it first"
        ) from None
    except Exception as e:  # PIL raises several types for broken files
        raise DataError(f"{path}: cannot read image header ({e})") from None
    _check_pixels(path, size)
    return size


# Bytes a writer may leave after the end-of-image marker (padding); anything else there is data.
_JPEG_PADDING = b"\x00\xff\r\n\t "


def check_jpeg_complete(path: str | Path) -> None:
    """DataError unless a JPEG file ends with its end-of-image marker (FF D9).

    libjpeg decodes a truncated JPEG "successfully": it warns on stderr and fills the missing
    rows with grey, and OpenCV returns that image. A complete JPEG always ends with FF D9 (the
    byte pair cannot occur inside the entropy-coded data), so reading the file's last bytes
    catches truncation for ~8 us per image instead of a second, checked decode (~15 ms at
    1918x1280). Files that are not JPEG (no FF D8 start) are left to the decoder.
    """
    check_regular(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 256))
            tail = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if head == b"\xff\xd8" and not tail.rstrip(_JPEG_PADDING).endswith(b"\xff\xd9"):
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker FF D9 at the end); re-copy or re-download it")


# Decoded straight to RGB (libjpeg-turbo writes the same bytes in that order; other formats are converted
# by OpenCV as cvtColor would): a 1918x1280 photo's swap costs half a millisecond. The reduced flags are the
# scale bits of IMREAD_REDUCED_COLOR_* (whose colour bit means BGR) with RGB.
_RGB = cv2.IMREAD_COLOR_RGB
_REDUCED = (
    (8, cv2.IMREAD_REDUCED_GRAYSCALE_8 | _RGB),
    (4, cv2.IMREAD_REDUCED_GRAYSCALE_4 | _RGB),
    (2, cv2.IMREAD_REDUCED_GRAYSCALE_2 | _RGB),
)


def shown(path: str | Path) -> str:
    """A path as it can be printed: bytes of a file name that are not UTF-8 show as \\xNN escapes."""
    return printable(str(path))


def decode_file(path: str | Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """``cv2.imread`` from the file's bytes: OpenCV is never handed the name itself (a file name that is
    not valid UTF-8 crashes it), and DCT-scaled decoding (IMREAD_REDUCED_*) works the same. None if the
    bytes are not an image. The header is read first (``image_size``): a file that is not a regular file,
    or an image of more than MAX_PIXELS, is a DataError before any byte is decoded."""
    image_size(path)
    return _decode(path, flags)


def _decode(path: str | Path, flags: int) -> np.ndarray | None:
    """``decode_file`` once the header has been checked."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{shown(path)}: file not found") from None
    except OSError as e:
        raise DataError(f"{shown(path)}: cannot read ({e.strerror or e})") from None
    if data.size == 0:
        return None
    return cv2.imdecode(data, flags)


def read_image(path: str | Path, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Decode an RGB uint8 image, resized to (height, width) when given.

    When the target is at most half the size, libjpeg decodes directly at 1/2, 1/4 or 1/8
    scale (DCT scaling), which is several times faster than a full decode; training and every
    prediction go through this one function, so they see identical pixels.
    """
    path = str(path)
    w0, h0 = image_size(path)  # a regular file of at most MAX_PIXELS, from its header, before any decoding
    check_jpeg_complete(path)
    flag = _RGB
    if height and width:
        for f, reduced in _REDUCED:
            if -(-w0 // f) >= width and -(-h0 // f) >= height:
                flag = reduced
                break
    img = _decode(path, flag)  # the header was checked above
    if img is None:
        raise DataError(f"{shown(path)}: cannot decode image (missing, truncated or not an image)")
    if height and width and img.shape[:2] != (height, width):
        # After DCT scaling the remaining factor is usually in (0.5, 1]: bilinear is alias-free
        # enough there and ~5x faster than INTER_AREA at non-integer ratios (make bench).
        mild = height > img.shape[0] / 2 and width > img.shape[1] / 2
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR if mild else cv2.INTER_AREA)
    return img


def _shown_grey(im: Image.Image, path) -> np.ndarray:
    """The 2-D uint8 grey level each pixel shows (palette applied, colour converted to luma)."""
    if im.mode == "P":
        codes = np.asarray(im)
        # Entries missing from a short palette show as their index (a 0/1 indexed file without a
        # palette is the Kaggle convention, not black on black).
        palette = np.repeat(np.arange(256, dtype=np.int64)[:, None], 3, 1)
        rgb = np.array(im.getpalette() or [], np.int64).reshape(-1, 3)[:256]
        palette[: len(rgb)] = rgb
        lut = ((palette @ np.array([19595, 38470, 7471]) + 0x8000) >> 16).astype(np.uint8)  # ITU-R 601, as PIL
        return cv2.LUT(codes, lut)
    if im.mode in ("RGBA", "LA", "PA"):
        if np.asarray(im.getchannel("A")).min() < 255:
            raise DataError(f"{path}: mask has transparency; save it without an alpha channel (black background)")
    return np.asarray(im if im.mode == "L" else im.convert("L"))


def read_mask(path: str | Path, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Read a mask as uint8 0/1 (1 = car), resized to (height, width) when given.

    The mask is read as what it shows: palette GIFs through their palette (so a reversed palette
    order is not an inversion), greyscale or RGB GIF/PNG through their grey level. The shown
    levels must then be two at most, with a black (0) background; the car is the other level:
    1 (the Kaggle files, and 0/1 arrays saved as greyscale), 255, or any single bright level.
    Anything else (anti-aliased edges, two bright levels, transparency) is refused
    with a DataError naming the file rather than guessed. A white background with a black car
    reads as inverted by this rule: the car is always the bright level.
    """
    if not Path(path).exists():
        raise DataError(f"{path}: mask not found")
    image_size(path)  # a regular file of at most MAX_PIXELS, from its header, before the pixels are decoded
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                grey = _shown_grey(im, path)
    except FileNotFoundError:
        raise DataError(f"{path}: mask not found") from None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot decode mask ({e})") from None
    if grey.ndim != 2:
        raise DataError(f"{path}: mask has shape {grey.shape}, expected a single-channel image")
    top = grey.max(initial=0)
    mask = grey == top
    # Binary iff every pixel is black or the top level (min/max and counts: no full histogram).
    if top and cv2.countNonZero(grey) != np.count_nonzero(mask):
        levels = np.unique(grey)[:8].tolist()
        raise DataError(
            f"{path}: mask shows grey levels {levels}; expected a binary mask (black background 0, car 1 or 255)"
        )
    mask = mask.view(np.uint8) if top else np.zeros(grey.shape, np.uint8)
    if height and width and mask.shape != (height, width):
        area = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        mask = (area >= 0.5).astype(np.uint8)
    return mask


def list_images(directory: Path) -> list[str]:
    if not directory.is_dir():
        raise DataError(f"{directory}: folder not found")
    return sorted(p.name for p in directory.iterdir() if p.suffix.lower() == ".jpg")
