"""Out-of-fold prediction of a trained fold: the held-out cars through the shared engine.

Writes ``oof/<image>.png`` (uint8 probabilities at full resolution, the engine's output),
``oof_dice.csv`` (Dice at threshold 0.5 against the GIF masks) and ``oof.json`` last, which marks
the fold complete. The maps are bound to the exact ``best.pt`` (content hash), TTA, precision and
split that made them (``oof/source.json``, pipeline/lineage/provenance.py): if any differs they are
deleted and predicted again, since only missing maps are predicted.
"""

from __future__ import annotations

import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import pandas as pd
from tqdm import tqdm

from ..core.checks import check_fold
from ..core.config import Config
from ..core.device import pick_device, resolve_precision
from ..core.errors import PipelineError
from ..core.identity import code_version
from ..core.io_utils import atomic_path, read_json, write_json
from ..data.folds import load_folds, load_test_split, split_fold
from ..data.layout import Layout, decode_file, read_mask
from ..inference.engine import Engine, Member
from ..lineage.provenance import check_same_folds, folds_fingerprint, oof_source
from ..masks.metrics import dice
from ..masks.probability import HALF
from ..models.unet import load_checkpoint


def _fresh_maps(run_dir: Path, source: dict) -> None:
    """Make ``oof/`` hold maps of ``source`` only (a map left by another checkpoint or TTA is deleted)."""
    oof_dir = run_dir / "oof"
    marker = oof_dir / "source.json"
    try:
        same = marker.is_file() and read_json(marker) == source
    except PipelineError:
        same = False
    if not same:
        (run_dir / "oof.json").unlink(missing_ok=True)
        (run_dir / "oof_dice.csv").unlink(missing_ok=True)
        shutil.rmtree(oof_dir, ignore_errors=True)
        oof_dir.mkdir(parents=True)
        write_json(marker, source)


def _write_map(target: Path, q) -> None:
    ok, png = cv2.imencode(".png", q)
    if not ok:
        raise PipelineError(f"{target}: could not encode the out-of-fold map")
    with atomic_path(target) as tmp:  # a fresh temporary name, never a link someone left there
        tmp.write_bytes(png.tobytes())


def predict_oof(cfg: Config, quiet: bool = False) -> dict:
    """Predict the fold's held-out cars with ``best.pt`` through the shared engine; store uint8 PNGs."""
    run_dir = cfg.run_dir
    device = pick_device(cfg.device)
    folds = load_folds(cfg.folds_csv)
    check_fold(cfg, sorted(set(folds.fold)))
    test_cars = load_test_split(cfg.test_split) if cfg.test_split else frozenset()
    folds_id = folds_fingerprint(folds, cfg.fold, test_cars)
    # One read of best.pt: the maps are recorded as made by the bytes that made them.
    model, mcfg, best_sha, best = load_checkpoint(run_dir / "best.pt", device)
    check_same_folds(best.get("folds"), folds_id, run_dir / "best.pt", cfg.folds_csv, "write out-of-fold maps")
    # The inference precision (predict.amp), not training's: the recipe applies the member in it.
    precision = resolve_precision(cfg.predict.amp, device)
    source = oof_source(best_sha, cfg.predict.tta, folds_id["fold_sha"], precision)
    _fresh_maps(run_dir, source)
    _, val = split_fold(folds, cfg.fold, test_cars)
    layout = Layout(cfg.data_dir)
    oof_dir = run_dir / "oof"
    todo = [img for img in val.img if not (oof_dir / f"{Path(img).stem}.png").exists()]
    engine = Engine(
        [Member(cfg.name, [model], mcfg.image.height, mcfg.image.width, cfg.predict.tta)],
        device,
        precision=precision,
        channels_last=cfg.train.channels_last,
        batch_size=cfg.predict.batch_size,
        num_workers=cfg.predict.num_workers,
    )
    # PNG encoding (zlib, which releases the GIL) in threads: the device goes on with the next batch.
    with ThreadPoolExecutor(2, "oof-png") as pool:
        pending: deque = deque()
        for name, q in tqdm(
            engine.predict([layout.train_image(i) for i in todo]),
            total=len(todo),
            desc="out-of-fold",
            unit="img",
            disable=quiet,
        ):
            pending.append(pool.submit(_write_map, oof_dir / f"{Path(name).stem}.png", q[0].cpu().numpy()))
            while len(pending) > 2 * engine.batch_size or (pending and pending[0].done()):
                pending.popleft().result()  # in order; an error stops the run here
        for future in pending:
            future.result()
    rows = []
    for img in tqdm(val.img, desc="out-of-fold dice", unit="img", disable=quiet):
        q = decode_file(oof_dir / f"{Path(img).stem}.png", cv2.IMREAD_UNCHANGED)
        rows.append((img, dice(q >= HALF, read_mask(layout.mask(img)))))
    scores = pd.DataFrame(rows, columns=["img", "dice"])
    with atomic_path(run_dir / "oof_dice.csv") as tmp:
        scores.to_csv(tmp, index=False, float_format="%.6f")
    summary = {
        "name": cfg.name,
        "fold": cfg.fold,
        "n_images": len(scores),
        "mean_dice": float(scores.dice.mean()),
        "threshold": HALF,
        "tta": list(cfg.predict.tta),
        "precision": precision,
        "height": mcfg.image.height,
        "width": mcfg.image.width,
        "encoder": mcfg.model.encoder,
        "checkpoint": "best.pt",
        "checkpoint_sha256": source["checkpoint_sha256"],
        "checkpoint_epoch": best.get("epoch"),
        "checkpoint_val_dice": best.get("val_dice"),
        "folds_csv": str(cfg.folds_csv),
        "folds": {k: folds_id[k] for k in ("folds_sha", "fold_sha", "k")},
        "code": code_version(),
    }
    write_json(run_dir / "oof.json", summary)
    return summary
