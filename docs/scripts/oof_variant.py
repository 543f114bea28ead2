# Out-of-fold maps of a trained fold with other weights or TTA views, timed (docs/record/accuracy-levers.md,
# "Accuracy levers at equal wall time"): copies the fold's best.pt and config.yaml to a new run name
# and predicts the held-out images again. --raw takes the raw (not averaged) final weights from
# last.pt: the EMA lever at full resolution, on the same training. Run from the repository root:
#   PYTHONPATH=. .venv/bin/python docs/scripts/oof_variant.py RUN_DIR NEW_NAME [--raw] [--tta "[hflip,scale1.25]"]
import argparse
import shutil
import time
from pathlib import Path

import torch

from pipeline.core.config import load_config
from pipeline.stages.oof import predict_oof

p = argparse.ArgumentParser()
p.add_argument("run_dir", type=Path)
p.add_argument("name")
p.add_argument("--raw", action="store_true")
p.add_argument("--tta")
a = p.parse_args()
cfg = load_config(a.run_dir / "config.yaml", [f"name={a.name}"] + ([f"predict.tta={a.tta}"] if a.tta else []))
cfg.run_dir.mkdir(parents=True, exist_ok=True)
shutil.copy(a.run_dir / "config.yaml", cfg.run_dir / "config.yaml")
best = torch.load(a.run_dir / "best.pt", weights_only=False)
if a.raw:
    best["model"] = torch.load(a.run_dir / "last.pt", weights_only=False)["model"]
torch.save(best, cfg.run_dir / "best.pt")
start = time.perf_counter()
s = predict_oof(cfg, quiet=True)
print(
    f"{a.name}: OOF mean Dice {s['mean_dice']:.5f} on {s['n_images']} images, TTA {s['tta']}, "
    f"{time.perf_counter() - start:.1f} s"
)
