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
SUBMISSION ?= submissions/submission.csv.gz
ARGS ?=
INDEX ?=

DEMO_DIR ?= demo
DEMO_MODELS ?= demo-mobilenetv3-large demo-mobilenetv3
DEMO_VARS = DATA=$(DEMO_DIR)/data FOLDS_CSV=$(DEMO_DIR)/folds.csv RUNS=$(DEMO_DIR)/runs
comma := ,
space := $(subst ,, )
DEMO_MEMBERS = $(subst $(space),$(comma),$(strip $(DEMO_MODELS)))

.PHONY: help install demo test lint format folds train ensemble evaluate submission validate clean-demo bench

help:
	@echo "make demo                       every stage on generated demo data (CPU, minutes)"
	@echo "make test                       the test suite (CPU)"
	@echo "make folds                      DATA=$(DATA) -> $(FOLDS_CSV)"
	@echo "make train FOLD=0 MODEL=vgg11   (MODEL=resnet50; FOLD=0..4 or all) -> $(RUNS)/<model>/fold<k>/"
	@echo "make ensemble                   tune weights + threshold out-of-fold -> $(RECIPE)"
	@echo "make submission                 -> $(SUBMISSION) (resumable, validated)"
	@echo "make evaluate                   score out-of-fold maps of every run and the recipe (per image, full res)"
	@echo "make validate                   re-check $(SUBMISSION) against sample_submission.csv"
	@echo "make lint | format              ruff"

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(STAMP)

folds: $(STAMP)
	$(PY) -m pipeline folds --data $(DATA) --out $(FOLDS_CSV) $(if $(INDEX),--index $(INDEX))

train: $(STAMP)
	$(PY) -m pipeline train --config configs/$(MODEL).yaml --fold $(FOLD) --data $(DATA) \
		--folds-csv $(FOLDS_CSV) --runs $(RUNS) --device $(DEVICE) $(ARGS)

ensemble: $(STAMP)
	$(PY) -m pipeline ensemble --runs $(RUNS) --data $(DATA) --out $(RECIPE) $(ARGS)

submission: $(STAMP)
	$(PY) -m pipeline submission --recipe $(RECIPE) --data $(DATA) --out $(SUBMISSION) --device $(DEVICE) $(ARGS)

evaluate: $(STAMP)
	$(PY) -m pipeline evaluate --runs $(RUNS) --data $(DATA) $(if $(wildcard $(RECIPE)),--recipe $(RECIPE)) $(ARGS)

validate: $(STAMP)
	$(PY) -m pipeline validate $(SUBMISSION) --data $(DATA)

demo: $(STAMP)
	@test -f $(DEMO_DIR)/data/sample_submission.csv || $(PY) -m pipeline demo-data --out $(DEMO_DIR)/data
	$(MAKE) --no-print-directory folds $(DEMO_VARS)
	for m in $(DEMO_MODELS); do $(MAKE) --no-print-directory train MODEL=$$m FOLD=all $(DEMO_VARS) || exit 1; done
	$(MAKE) --no-print-directory ensemble $(DEMO_VARS) ARGS="--members $(DEMO_MEMBERS)"
	$(MAKE) --no-print-directory submission $(DEMO_VARS)
	@$(PY) -c "import json; r = json.load(open('$(RECIPE)')); \
		print(f\"demo done: $(SUBMISSION) | out-of-fold Dice {r['oof']['dice']:.5f} on {r['oof']['n_images']} images\")"

clean-demo:
	rm -rf $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) -m pipeline.bench

# -- what users see (issue 8): cut-outs, report, Kaggle round trip ---------------------------------
IN ?= data/test
OUT ?= predictions
MESSAGE ?=

.PHONY: predict report download submit
predict: $(STAMP)
	$(PY) -m pipeline predict $(IN) --out $(OUT) --recipe $(RECIPE) --device $(DEVICE) $(ARGS)

report: $(STAMP)
	$(PY) -m pipeline report --runs $(RUNS) --data $(DATA) --recipe $(RECIPE) --out reports $(ARGS)

download: $(STAMP)
	$(PY) -m pipeline download --data $(DATA) $(ARGS)

submit: $(STAMP)
	$(PY) -m pipeline submit $(SUBMISSION) --message "$(MESSAGE)" --data $(DATA)
