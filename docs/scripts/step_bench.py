# Seconds per training step of configs/cpu.yaml on the real cars, with overrides (docs/record/accuracy-levers.md,
# "What buys steps"): the Trainer's own epoch (loading, augmentation, forward, backward, AdamW) after
# one warm-up epoch of 4 steps, then 3 timed epochs of 4 steps; model.refine=0 unless overridden.
# Run from the repository root, with ../shared beside it:
#   OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python docs/scripts/step_bench.py train.channels_last=true ...
import sys
import tempfile
import time

import torch

from pipeline.core.config import load_config
from pipeline.stages.train import Trainer

base = [
    "data_dir=../shared/data/carvana_real",
    "folds_csv=.exp/folds_real.csv",  # python -m pipeline folds --data ../shared/data/carvana_real --out ...
    "model.encoder_weights=../shared/weights/mobilenet_v2_imagenet_features_tvkeys.pth",
    "model.refine=0",
    "train.progressive_epochs=0",
    "train.steps_per_epoch=4",
    "train.epochs=100",
]
cfg = load_config("configs/cpu.yaml", base + sys.argv[1:] + [f"runs_dir={tempfile.mkdtemp()}"])
trainer = Trainer(cfg, quiet=True)
trainer.train_epoch()  # warm-up: allocator, oneDNN kernels
trainer.epoch += 1
steps, start = 0, time.perf_counter()
for _ in range(3):
    trainer.train_epoch()
    trainer.epoch += 1
    steps += cfg.train.steps_per_epoch
per_step = (time.perf_counter() - start) / steps
print(f"{' '.join(sys.argv[1:]) or 'configs/cpu.yaml'}: {per_step:.3f} s/step, {torch.get_num_threads()} threads")
