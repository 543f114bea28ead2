#!/usr/bin/env bash
# The loss comparison of docs/record/accuracy-levers.md: fold 0 of the 60 real cars, same seed and budget for every
# loss (U-Net, ImageNet MobileNetV2 from ../shared/weights, 256x384, 60 steps of batch 8, hflip TTA).
# Run from the repository root after `make install`; each run takes 7-25 minutes on 2 CPU cores.
#   docs/scripts/loss_table.sh l-bce_ratio bce_ratio                      # name, train.loss
#   docs/scripts/loss_table.sh l-bce_dice-refine16 bce_dice model.refine=16   # extra --set overrides
set -euo pipefail
name=$1; loss=$2; shift 2
real=../shared/data/carvana_real
weights=../shared/weights/mobilenet_v2_imagenet_features_tvkeys.pth
[ -f .exp/folds_real.csv ] || .venv/bin/python -m pipeline folds --data $real --out .exp/folds_real.csv
extra=(); for s in "$@"; do extra+=(--set "$s"); done
OMP_NUM_THREADS=1 .venv/bin/python -m pipeline train --config configs/cpu.yaml --fold 0 \
  --data $real --folds-csv .exp/folds_real.csv --runs .exp/runs \
  --set name="$name" --set train.loss="$loss" --set model.encoder_weights=$weights \
  --set image.height=256 --set image.width=384 --set train.epochs=2 --set train.steps_per_epoch=30 \
  --set train.val_every=2 "${extra[@]}"
