# Forward + backward + AdamW of the configs/cpu.yaml model (refine 0, no weights) on one fixed random
# batch of 8 at 320x480, mean of 5 steps after one: the model's own cost, no data loading
# (docs/record/accuracy-levers.md, "What buys steps"). 'cl' runs it in channels_last, 'keep' calls
# engine.keep_freed_memory() first (as every CPU run of the pipeline does). Run from the repository root:
#   OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python docs/scripts/fb_bench.py [cl] [keep]
import sys
import time

import torch

from pipeline.core.config import load_config
from pipeline.core.device import keep_freed_memory
from pipeline.models.losses import get_loss
from pipeline.models.unet import build_model

cl = "cl" in sys.argv
if "keep" in sys.argv:
    keep_freed_memory()
cfg = load_config("configs/cpu.yaml", ["model.refine=0", "model.encoder_weights=none"])
m = build_model(cfg.model)
m.train()
x = torch.randn(8, 3, 320, 480)
y = (torch.rand(8, 1, 320, 480) > 0.5).float()
if cl:
    m = m.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
opt = torch.optim.AdamW(m.parameters(), 1e-3)
lf = get_loss("bce_ratio")


def step():
    loss = lf(m(x), y, x)
    opt.zero_grad()
    loss.backward()
    opt.step()


step()
t = time.perf_counter()
[step() for _ in range(5)]
print(sys.argv[1:], (time.perf_counter() - t) / 5, "s/step")
