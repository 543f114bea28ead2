"""The Kaggle data layout, file readers, and the checks that name the bad file.

Layout under a data root (the Kaggle download, unzipped)::

    train/<car>_<NN>.jpg          train_masks/<car>_<NN>_mask.gif (palette values 0/1)
    test/<car>_<NN>.jpg           metadata.csv     sample_submission.csv (img,rle_mask)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# cv2 decodes JPEG with libjpeg-turbo; keep it to one thread per process (DataLoader workers
# provide the parallelism, and 2-core machines must not oversubscribe).
cv2.setNumThreads(1)

NAME_RE = re.compile(r"^(?P<car>[0-9a-f]{12})_(?P<view>\d{2})\.jpg$")


class DataError(ValueError):
    """Bad or missing input data; the message names the file and the problem."""


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
                raise DataError(
                    f"{p}: not found. Expected the Kaggle layout under {self.root} "
                    "(train/, train_masks/, test/, metadata.csv, sample_submission.csv); "
                    "set DATA=/path/to/carvana or run `make demo` for the demo data."
                )


def parse_name(name: str) -> tuple[str, int]:
    """``"00087a6bd4dc_01.jpg"`` -> ``("00087a6bd4dc", 1)``; DataError for anything else."""
    m = NAME_RE.match(name)
    if not m:
        raise DataError(f"{name}: not a Carvana image name (<12 hex car id>_<2-digit view>.jpg)")
    return m["car"], int(m["view"])


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # PIL raises several types for broken files
        raise DataError(f"{path}: cannot read image header ({e})") from None


_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def read_image(path: str | Path, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Decode an RGB uint8 image, resized to (height, width) when given.

    When the target is at most half the size, libjpeg decodes directly at 1/2, 1/4 or 1/8
    scale (DCT scaling), which is several times faster than a full decode; training and every
    prediction go through this one function, so they see identical pixels.
    """
    path = str(path)
    flag = cv2.IMREAD_COLOR
    if height and width:
        w0, h0 = image_size(path)
        for f, reduced in _REDUCED:
            if -(-w0 // f) >= width and -(-h0 // f) >= height:
                flag = reduced
                break
    img = cv2.imread(path, flag)
    if img is None:
        raise DataError(f"{path}: cannot decode image (missing, truncated or not an image)")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if height and width and img.shape[:2] != (height, width):
        # After DCT scaling the remaining factor is usually in (0.5, 1]: bilinear is alias-free
        # enough there and ~5x faster than INTER_AREA at non-integer ratios (make bench).
        mild = height > img.shape[0] / 2 and width > img.shape[1] / 2
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR if mild else cv2.INTER_AREA)
    return img


def read_mask(path: str | Path, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Read a Carvana GIF mask as uint8 0/1, resized to (height, width) when given."""
    try:
        with Image.open(path) as im:
            mask = np.array(im)
    except FileNotFoundError:
        raise DataError(f"{path}: mask not found") from None
    except Exception as e:
        raise DataError(f"{path}: cannot decode mask ({e})") from None
    if mask.ndim != 2:
        raise DataError(f"{path}: mask has shape {mask.shape}, expected a single-channel image")
    if mask.max(initial=0) > 1:
        values = np.unique(mask)[:8].tolist()
        raise DataError(f"{path}: mask values {values} found, expected only 0 and 1")
    if height and width and mask.shape != (height, width):
        area = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
        mask = (area >= 0.5).astype(np.uint8)
    return mask


def list_images(directory: Path) -> list[str]:
    if not directory.is_dir():
        raise DataError(f"{directory}: folder not found")
    return sorted(p.name for p in directory.iterdir() if p.suffix.lower() == ".jpg")
