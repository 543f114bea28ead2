"""PyTorch datasets over the Kaggle layout. Pixels stay uint8 until the model (see SegModel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .layout import image_size, read_image, read_mask

# Resized (image, mask) pairs of every dataset built with cache=True in this process, so that the
# folds of `train --fold all` decode each photo and mask once, not once per fold (the demo's 5 folds
# spent about a tenth of their time decoding). Keyed by the files' paths, sizes and mtimes: a file
# rewritten since is read again.
_DECODED: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _file_key(path: Path) -> tuple:
    st = Path(path).stat()
    return str(path), st.st_size, st.st_mtime_ns


class SegmentationDataset(Dataset):
    """(image, mask) pairs resized to the training size, with an optional albumentations transform.

    ``cache``: keep the resized pairs in RAM for the life of the process (shared by every dataset
    of the process; small datasets with num_workers=0 only).
    """

    def __init__(
        self, images: list[Path], masks: list[Path], height: int, width: int, transform=None, cache: bool = False
    ):
        assert len(images) == len(masks)
        self.images, self.masks = list(images), list(masks)
        self.height, self.width = height, width
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        key = None
        if self.cache:
            try:
                key = (_file_key(self.images[i]), _file_key(self.masks[i]), self.height, self.width)
            except OSError:
                key = None  # the read below names the missing file
            if key in _DECODED:
                return _DECODED[key]
        pair = (read_image(self.images[i], self.height, self.width), read_mask(self.masks[i], self.height, self.width))
        if key is not None:
            _DECODED[key] = pair
        return pair

    def __getitem__(self, i: int) -> dict:
        image, mask = self._load(i)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(mask))[None].float(),
            "index": i,
        }


class InferenceDataset(Dataset):
    """Images decoded once and resized to every size the ensemble members need."""

    def __init__(self, images: list[Path], sizes: list[tuple[int, int]], hwc: bool = False):
        self.images = list(images)
        self.sizes = list(dict.fromkeys(sizes))  # distinct (height, width), in order
        # hwc: hand (H,W,3) as decoded, no transpose copy; the device permutes it to a channels_last view.
        self.hwc = hwc

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        path = self.images[i]
        w0, h0 = image_size(path)
        item = {"name": Path(path).name, "height": h0, "width": w0}
        for k, (h, w) in enumerate(self.sizes):
            # Through read_image, exactly as in training (DCT-scaled decode, same resize).
            img = read_image(path, h, w)
            item[f"x{k}"] = torch.from_numpy(img if self.hwc else np.ascontiguousarray(img.transpose(2, 0, 1)))
        return item
