# Carvana Image Masking pipeline. `make help` lists the targets.
# Every target installs what it needs into .venv (from requirements.txt) on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DATA ?= data
FOLDS_CSV ?= folds/folds.csv
RUNS ?= runs
MODEL ?= vgg11
FOLD ?= 0
DEVICE ?= auto
RECIPE ?= submissions/recipe.json
# An exported model folder (make export; models/carvana-unet-mobilenetv2 ships) or a Hugging Face hub id:
# predict, submission, evaluate and report use it instead of a recipe (MODEL picks a config to train).
PRETRAINED ?=
SUBMISSION ?= submissions/submission.csv.gz
ARGS ?=
INDEX ?=

DEMO_DIR ?= demo
DEMO_MODELS ?= demo-mobilenetv3-large demo-mobilenetv3
DEMO_VARS = DATA=$(DEMO_DIR)/data FOLDS_CSV=$(DEMO_DIR)/folds.csv RUNS=$(DEMO_DIR)/runs
comma := ,
space := $(subst ,, )
DEMO_MEMBERS = $(subst $(space),$(comma),$(strip $(DEMO_MODELS)))

.PHONY: help install demo test test-fast lint format folds train ensemble evaluate submission validate clean-demo bench merge train-folds \
	lineage smoke gpu-check

help:
	@echo "make demo                       every stage on generated demo data (CPU, minutes)"
	@echo "make test                       the whole test suite (CPU; what CI runs)"
	@echo "make test-fast                  the fast subset while editing (target: a minute on 2 idle cores): no slow,"
	@echo "                                browser, real-data, multi-process or GPU tests"
	@echo "make folds                      DATA=$(DATA) -> $(FOLDS_CSV)"
	@echo "make train FOLD=0 MODEL=vgg11   (MODEL=resnet50; FOLD=0..4 or all) -> $(RUNS)/<model>/fold<k>/"
	@echo "make ensemble                   tune weights + threshold out-of-fold -> $(RECIPE)"
	@echo "make submission                 -> $(SUBMISSION) (resumable, validated)"
	@echo "make evaluate                   score out-of-fold maps of every run and the recipe (per image, full res)"
	@echo "make validate                   re-check $(SUBMISSION) against sample_submission.csv"
	@echo "make lineage [FILE=...]         what a submission/recipe/checkpoint was made from, and which links still hold"
	@echo "make submission SHARD=i/N       one slice of the test set (a GPU or host each); then make merge"
	@echo "make submission GPUS=G          torchrun: G GPUs of this host, one shard each, rank 0 merges"
	@echo "make merge                      assemble and validate the shards of $(SUBMISSION)"
	@echo "make train-folds GPUS=0,1,2,3,4 one fold per GPU in parallel (fold k on the k-th GPU listed)"
	@echo "make bench                      speed/memory figures with targets -> bench.json (ARGS=--figures 1,2)"
	@echo "make smoke MODEL=vgg11          the config at full size through every stage on a few images of DATA:"
	@echo "                                seconds, peak memory, img/s, largest batch sizes (scratch folder)"
	@echo "make gpu-check                  the first run on a GPU (<= 10 min): CUDA tests, smoke, bench -> gpu-check/"
	@echo "make predict IN=img_or_dir      masks, cut-outs (RGBA), composites (ARGS=--background '#ffffff')"
	@echo "make report                     static HTML: curves, metrics, worst images -> reports/index.html"
	@echo "make download | submit MESSAGE= the Kaggle round trip (official kaggle CLI)"
	@echo "make folds INDEX=index.csv      folds from a train-set index instead of the images"
	@echo "make train MODEL=cpu FOLD=0     no GPU: MobileNetV2 U-Net at 320x480 (configs/cpu.yaml)"
	@echo "make train MODEL=cpu FOLD=full  one model on every car (after cross-validation) -> $(RUNS)/cpu/full/final.pt"
	@echo "make export MODEL=cpu EXPORT_RECIPE=...  that model as a folder smp.from_pretrained loads -> models/cpu"
	@echo "make quantize PRETRAINED=models/cpu DATA=...  its network in INT8 for CPUs (calibrated on its training photos)"
	@echo "make predict IN=photo.jpg PRETRAINED=models/carvana-unet-mobilenetv2   the shipped model, no training"
	@echo "make submission PRETRAINED=models/carvana-unet-mobilenetv2             a Kaggle CSV from it"
	@echo "make serve [PORT=7000 HOST=127.0.0.1 PRETRAINED=...]   a web page and an API for cut-outs (docs/serve.md)"
	@echo "make lint | format              ruff"

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(STAMP)

folds: $(STAMP)
	$(PY) -m pipeline folds --data "$(DATA)" --out "$(FOLDS_CSV)" $(if $(INDEX),--index "$(INDEX)")

train: $(STAMP)
	$(PY) -m pipeline train --config "configs/$(MODEL).yaml" --fold "$(FOLD)" --data "$(DATA)" \
		--folds-csv "$(FOLDS_CSV)" --runs "$(RUNS)" --device "$(DEVICE)" $(ARGS)

ensemble: $(STAMP)
	$(PY) -m pipeline ensemble --runs "$(RUNS)" --data "$(DATA)" --out "$(RECIPE)" $(ARGS)

# SHARD=i/N: one contiguous slice of the test set into its own resumable shard file (then `make merge`).
# GPUS=G: torchrun with G processes on this host (one GPU each); rank 0 merges the shards.
SHARD ?=
GPUS ?=
submission: $(STAMP)
	$(if $(GPUS),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS),$(PY)) -m pipeline submission \
		$(if $(PRETRAINED),--pretrained "$(PRETRAINED)",--recipe "$(RECIPE)") --data "$(DATA)" --out "$(SUBMISSION)" \
		--device "$(DEVICE)" $(if $(SHARD),--shard="$(SHARD)") $(ARGS)

evaluate: $(STAMP)
	$(PY) -m pipeline evaluate --data "$(DATA)" $(if $(PRETRAINED),--pretrained "$(PRETRAINED)",--runs "$(RUNS)" \
		$(if $(wildcard $(RECIPE)),--recipe "$(RECIPE)")) $(ARGS)

validate: $(STAMP)
	$(PY) -m pipeline validate "$(SUBMISSION)" --data "$(DATA)"

# FILE=...: the chain behind a submission (default), recipe, checkpoint or folds CSV, each link checked.
FILE ?= $(SUBMISSION)
lineage: $(STAMP)
	$(PY) -m pipeline lineage "$(FILE)"

# The two demo members train side by side, one core each (small models use two threads poorly):
# the first one's progress is shown, the second's goes to a log whose summary is printed after.
demo: $(STAMP)
	@test -f $(DEMO_DIR)/data/sample_submission.csv || $(PY) -m pipeline demo-data --out $(DEMO_DIR)/data
	$(MAKE) --no-print-directory folds $(DEMO_VARS)
	@mkdir -p $(DEMO_DIR)/logs; set -- $(DEMO_MODELS); first=$$1; shift; \
	for m in "$$@"; do echo "training $$m (5 folds) alongside -> $(DEMO_DIR)/logs/train-$$m.log"; \
		OMP_NUM_THREADS=1 $(MAKE) --no-print-directory train MODEL=$$m FOLD=all $(DEMO_VARS) \
			> $(DEMO_DIR)/logs/train-$$m.log 2>&1 & echo $$! > $(DEMO_DIR)/logs/train-$$m.pid; done; \
	OMP_NUM_THREADS=1 $(MAKE) --no-print-directory train MODEL=$$first FOLD=all $(DEMO_VARS) || \
		{ for m in "$$@"; do kill $$(cat $(DEMO_DIR)/logs/train-$$m.pid); done; exit 1; }; \
	for m in "$$@"; do wait $$(cat $(DEMO_DIR)/logs/train-$$m.pid) || \
		{ echo "$$m failed:"; tail -n 5 $(DEMO_DIR)/logs/train-$$m.log; exit 1; }; \
		rm -f $(DEMO_DIR)/logs/train-$$m.pid; grep -a "out-of-fold Dice\|done in" $(DEMO_DIR)/logs/train-$$m.log; done
	$(MAKE) --no-print-directory ensemble $(DEMO_VARS) ARGS="--members $(DEMO_MEMBERS)"
	$(MAKE) --no-print-directory submission $(DEMO_VARS)
	$(MAKE) --no-print-directory report $(DEMO_VARS) REPORT=$(DEMO_DIR)/report ARGS="--worst 3"
	first=$$(ls $(DEMO_DIR)/data/test/*.jpg | head -n 1); \
		$(MAKE) --no-print-directory predict IN=$$first OUT=$(DEMO_DIR)/predictions RECIPE="$(RECIPE)" \
			ARGS="--background '#3a6ea5'"
	@$(PY) -c "import json; r = json.load(open('$(RECIPE)')); \
		print(f\"demo done: out-of-fold Dice {r['oof']['dice']:.5f} on {r['oof']['n_images']} images\"); \
		print('  submission  $(SUBMISSION)  (python -m pipeline lineage $(SUBMISSION): what it was made from)'); \
		print('  report      $(DEMO_DIR)/report/index.html'); \
		print('  cut-outs    $(DEMO_DIR)/predictions/  (mask, transparent cut-out, composite)'); \
		print('  next        make report RUNS=$(DEMO_DIR)/runs DATA=$(DEMO_DIR)/data, make predict IN=photo.jpg')"

clean-demo:
	rm -rf $(DEMO_DIR)

# One worker per core; a test file stays on one worker (its module fixtures are built once).
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile

# The tests that take seconds, not minutes: markers in pyproject.toml (make test runs them all).
FAST_MARKERS = not slow and not browser and not real_data and not multiprocess and not gpu
test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile -m "$(FAST_MARKERS)"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) -m pipeline bench $(ARGS)

smoke: $(STAMP)
	$(PY) -m pipeline smoke --config "configs/$(MODEL).yaml" --data "$(DATA)" --device "$(DEVICE)" $(ARGS)

gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py --data "$(DATA)" --device "$(DEVICE)" $(ARGS)

merge: $(STAMP)
	$(PY) -m pipeline merge --data "$(DATA)" --out "$(SUBMISSION)" --shards-of submissions/submission.csv.gz \
		$(RECIPE_ARG)

# One fold per GPU, in parallel: fold k on the k-th GPU of GPUS (FOLDS=... to choose other folds).
# Logs in $(RUNS)/logs/; fails if any fold fails (after all have ended).
FOLDS ?=
train-folds: $(STAMP)
	@test -n "$(GPUS)" || { echo "train-folds: set GPUS=0,1,2,3,4 (one fold per GPU)"; exit 2; }
	@mkdir -p $(RUNS)/logs; gpus="$(subst $(comma),$(space),$(GPUS))"; folds="$(subst $(comma),$(space),$(FOLDS))"; \
	set -- $$folds; pids=""; k=0; \
	for g in $$gpus; do \
		f=$${1:-$$k}; [ $$# -gt 0 ] && shift; log=$(RUNS)/logs/$(MODEL)-fold$$f.log; \
		echo "fold $$f on GPU $$g -> $$log"; \
		CUDA_VISIBLE_DEVICES=$$g $(PY) -m pipeline train --config "configs/$(MODEL).yaml" --fold $$f --data "$(DATA)" \
			--folds-csv "$(FOLDS_CSV)" --runs "$(RUNS)" --device "$(DEVICE)" $(ARGS) > "$$log" 2>&1 & pids="$$pids $$!:$$f"; \
		k=$$((k+1)); \
	done; \
	fail=0; for p in $$pids; do \
		if wait $${p%%:*}; then echo "fold $${p#*:}: done"; \
		else echo "fold $${p#*:}: FAILED, see $(RUNS)/logs/$(MODEL)-fold$${p#*:}.log:"; \
			tail -n 5 $(RUNS)/logs/$(MODEL)-fold$${p#*:}.log; fail=1; fi; \
	done; exit $$fail

# -- what users see: cut-outs, report, Kaggle round trip ----------------------------------------------
IN ?= data/test
# predict and merge: a recipe only when RECIPE is given (predict's default is the model this project ships)
RECIPE_ARG = $(if $(filter command line environment,$(origin RECIPE)),--recipe "$(RECIPE)")
OUT ?= predictions
MESSAGE ?=

.PHONY: predict report download submit export quantize

# A trained model as one folder: segmentation-models-pytorch's format, pipeline.json and a model card.
CHECKPOINT ?= $(RUNS)/$(MODEL)/full/final.pt
EXPORT_DIR ?= models/$(MODEL)
EXPORT_RECIPE ?=
export: $(STAMP)
	$(PY) -m pipeline export --checkpoint "$(CHECKPOINT)" --out "$(EXPORT_DIR)" \
		$(if $(EXPORT_RECIPE),--recipe "$(EXPORT_RECIPE)") $(ARGS)
# The exported folder's network in INT8 for OpenVINO on CPUs, calibrated on photos of the cars it was trained
# on (DATA's train/): predict, submission and serve run it by default on a CPU.
quantize: $(STAMP)
	$(PY) -m pipeline quantize --pretrained "$(or $(PRETRAINED),$(EXPORT_DIR))" --data "$(DATA)" $(ARGS)
predict: $(STAMP)
	$(PY) -m pipeline predict "$(IN)" --out "$(OUT)" $(RECIPE_ARG) --device "$(DEVICE)" \
		$(if $(PRETRAINED),--pretrained "$(PRETRAINED)") $(ARGS)

# make serve: the page at http://127.0.0.1:7000/ and the API (docs/serve.md). HOST only from the command
# line: zsh exports HOST (the machine's name), which must not open the server to the network unasked.
PORT ?= 7000
SERVE_HOST = $(if $(filter command line,$(origin HOST)),$(HOST),127.0.0.1)
.PHONY: serve
serve: $(STAMP)
	$(PY) -m pipeline serve --host "$(SERVE_HOST)" --port "$(PORT)" $(if $(PRETRAINED),--pretrained "$(PRETRAINED)") $(ARGS)

REPORT ?= reports
report: $(STAMP)
	$(PY) -m pipeline report --runs "$(RUNS)" --data "$(DATA)" --recipe "$(RECIPE)" --out "$(REPORT)" \
		$(if $(PRETRAINED),--pretrained "$(PRETRAINED)") $(ARGS)

download: $(STAMP)
	$(PY) -m pipeline download --data "$(DATA)" $(ARGS)

submit: $(STAMP)
	$(PY) -m pipeline submit "$(SUBMISSION)" --message "$(MESSAGE)" --data "$(DATA)"
