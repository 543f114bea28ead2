"""Predict the test set with the ensemble recipe and write the Kaggle submission, resumably.

The CSV is written as a sequence of gzip members (a valid .csv.gz: readers decompress
concatenated members as one stream), one member per chunk of rows, each fsync'ed before the
progress file records its end offset. After a crash or kill -9, re-running the same command
truncates the partial file to the last recorded chunk and continues with the next image, so
memory stays bounded and no finished work is lost. Only a validated file is renamed to its
final name.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import rle
from .data import DataError, Layout
from .engine import Engine, Member, blend, pick_device
from .io_utils import read_json, write_json
from .models import load_checkpoint_model
from .validate import SubmissionError, read_sample_names, validate_submission

HEADER = "img,rle_mask\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def load_members(recipe: dict, device: torch.device) -> tuple[list[Member], list[int]]:
    members, weights = [], []
    for m in recipe["members"]:
        if m["weight"] == 0:
            continue  # a zero-weight member would cost GPU time for nothing
        models = [load_checkpoint_model(c, device)[0] for c in m["checkpoints"]]
        members.append(Member(m["name"], models, m["height"], m["width"], m["tta"]))
        weights.append(int(m["weight"]))
    if not members:
        raise SubmissionError("recipe has no member with a positive weight")
    return members, weights


def make_submission(
    recipe_path: str | Path,
    data_dir: str | Path,
    out: str | Path,
    device: str = "auto",
    batch_size: int = 4,
    num_workers: int = 2,
    amp: bool = True,
    chunk_rows: int = 256,
    force: bool = False,
    limit: int | None = None,
    quiet: bool = False,
) -> dict:
    """Write ``out`` (.csv.gz) for every row of ``sample_submission.csv``; return a summary."""
    start = time.time()
    recipe_path, out = Path(recipe_path), Path(out)
    if not recipe_path.is_file():
        raise DataError(f"{recipe_path}: recipe not found; run `make ensemble` first")
    recipe = json.loads(recipe_path.read_text())
    layout = Layout(data_dir)
    layout.require(layout.sample_submission, layout.test_dir)
    names = read_sample_names(layout.sample_submission)
    if limit:  # for quick trials; the result is not a full submission and is not validated as one
        names = names[:limit]
    missing = [n for n in names if not (layout.test_dir / n).is_file()]
    if missing:
        raise DataError(
            f"{layout.test_dir / missing[0]}: test image listed in sample_submission.csv not found "
            f"({len(missing)} missing in all)"
        )
    # What the rows depend on; the recipe's timestamps are left out so a re-tuned identical recipe matches.
    stable = {k: v for k, v in recipe.items() if k not in ("created", "seconds")}
    key = {
        "recipe": _sha(json.dumps(stable, sort_keys=True).encode()),
        "sample": _sha("\n".join(names).encode()),
        "data": str(Path(data_dir)),
    }
    summary_path = out.with_name(out.name + ".json")
    if out.exists() and summary_path.exists() and not force:
        done = read_json(summary_path)
        if done.get("key") == key:
            if not quiet:
                print(f"{out} is already complete for this recipe and data ({done['rows']} rows); --force to redo")
            return done

    part = out.with_name(out.name + ".part")
    progress_path = out.with_name(out.name + ".progress.json")
    rows_done = 0
    size = None
    if part.exists() and progress_path.exists():
        progress = read_json(progress_path)
        if progress.get("key") == key:
            rows_done, size = progress["rows"], progress["size"]
            with open(part, "r+b") as f:
                f.truncate(progress["bytes"])  # drop a chunk that was being written when it stopped
            if not quiet:
                print(f"resuming {part}: {rows_done}/{len(names)} rows already written")
        elif not quiet:
            print(f"{part}: left by a different recipe or data; starting over")
    if rows_done == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as f:
            f.write(gzip.compress(HEADER.encode(), compresslevel=6))
            f.flush()
            os.fsync(f.fileno())
        write_json(progress_path, {"key": key, "rows": 0, "bytes": part.stat().st_size, "size": None})

    dev = pick_device(device)
    todo = names[rows_done:]
    if todo:
        members, weights = load_members(recipe, dev)
        engine = Engine(members, dev, amp=amp, batch_size=batch_size, num_workers=num_workers)
        threshold = int(recipe["threshold"])
        lines: list[str] = []
        bar = tqdm(total=len(names), initial=rows_done, desc="submission", unit="img", disable=quiet, smoothing=0.05)
        with open(part, "ab") as f:
            for name, q in engine.predict([layout.test_dir / n for n in todo]):
                if size is None:
                    size = [q.shape[2], q.shape[1]]
                elif [q.shape[2], q.shape[1]] != size:
                    raise DataError(
                        f"{layout.test_dir / name}: {q.shape[2]}x{q.shape[1]}, but the test images "
                        f"before it are {size[0]}x{size[1]}"
                    )
                mask = (blend(q, weights) >= threshold).cpu().numpy()
                lines.append(f"{name},{rle.encode(mask)}\n")
                if len(lines) == chunk_rows or rows_done + len(lines) == len(names):
                    f.write(gzip.compress("".join(lines).encode(), compresslevel=6))
                    f.flush()
                    os.fsync(f.fileno())
                    rows_done += len(lines)
                    write_json(progress_path, {"key": key, "rows": rows_done, "bytes": f.tell(), "size": size})
                    bar.update(len(lines))
                    lines = []
        bar.close()

    width, height = size
    check = validate_submission(part, names, width, height)
    os.replace(part, out)
    progress_path.unlink(missing_ok=True)
    summary = {
        "file": str(out),
        "key": key,
        "recipe": str(recipe_path),
        "rows": check["rows"],
        "empty_masks": check["empty_masks"],
        "mean_mask_area": round(check["mean_mask_area"], 5),
        "width": width,
        "height": height,
        "partial": bool(limit),
        "device": str(dev),
        "seconds_this_run": round(time.time() - start, 1),
    }
    write_json(summary_path, summary)
    if not quiet:
        print(
            f"{out}: {check['rows']} rows, validated ({check['empty_masks']} empty masks, "
            f"mean car area {check['mean_mask_area']:.3f})"
        )
    return summary
