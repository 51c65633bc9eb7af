# grood: one command per job. `make help` lists them.
# Setup makes a virtual environment in .venv with torch 2.14.1 / torchvision 0.29.1, then grood (editable, dev extra).
# Every target calls the package's command line, `$(PY) -m grood <command>` (the console command `grood`).

PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
SHARED ?= $(abspath ../shared)
# The one data root (config key paths.data_root). Unset: the configs' default ($GROOD_DATA_ROOT, else ./data;
# the smoke targets: the shared smoke root). DATA_ROOT=... sets it for every target.
DATA_ROOT ?=
DATA_ROOT_ARG := $(if $(DATA_ROOT),paths.data_root=$(DATA_ROOT))
DOWNLOAD_ROOT := $(or $(DATA_ROOT),$(GROOD_DATA_ROOT),./data)
SMOKE_ROOT := $(SHARED)/data/openood_cifar10_smoke
CHECKPOINT_ROOT ?= $(if $(GROOD_CHECKPOINT_ROOT),$(GROOD_CHECKPOINT_ROOT),./checkpoints)
DATASET ?= cifar10
METHOD ?= grood
SMOKE ?= 0
CSID ?= 0

.PHONY: help setup test test-slow smoke gpu-check run data checkpoints bench-method bench-true-size bench-eval train leaderboard \
        reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4 reproduce-table5 \
        reproduce-table6 reproduce-table7 reproduce-figures reproduce-author reproduce-all clean-cache

help:
	@echo "make setup             create $(VENV) and install grood with its dev extra"
	@echo "make test              setup + fast test suite (what CI runs)"
	@echo "make test-slow         setup + the slow tests"
	@echo "make bench-true-size   setup + GROOD and KNN at ImageNet-1k's true size, out of core (BENCH_ARGS=...)"
	@echo "make smoke             setup + every method on the shared smoke benchmark, then the wheel's grood command"
	@echo "make gpu-check         setup + CUDA tests, smoke on CUDA vs CPU, AMP training smoke, FAISS GPU (CUDA machine)"
	@echo "make run DATASET=cifar10 METHOD=grood   setup + data + checkpoints + one evaluation"
	@echo "make data / checkpoints  download OpenOOD v1.5 data / checkpoints (online; data CSID=1: + csid sets)"
	@echo "make train DATASET=cifar100 SEEDS=0,1,2 [MIXUP=1]  train ResNet-18 (paper recipe); re-running resumes"
	@echo "make reproduce-tableN  (SMOKE=1 for the smoke version)   N in 1..7; reproduce-all"
	@echo "make reproduce-author  (SMOKE=1)  paper-text GROOD vs the author's OpenOOD configuration (method=grood_openood)"
	@echo "make leaderboard RUN=<results folder> [TRAINING=CrossEntropy]  the run as OpenOOD leaderboard entries"

# The editable install in compat mode: the checkout goes on sys.path through a .pth file, so that a folder
# named grood (this checkout, seen from the folder holding it) cannot shadow the package as a namespace
# package (the default editable finder comes after sys.path; tests/test_packaging.py).
$(VENV)/.installed: pyproject.toml
	$(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_PIN)
	$(PY) -m pip install -e '.[dev,faiss]' --config-settings editable_mode=compat
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest

test-slow: setup
	GROOD_SHARED_DIR=$(SHARED) $(PY) -m pytest -m slow

data: setup
	$(PY) -m grood download data --benchmark $(DATASET) --data-root $(DOWNLOAD_ROOT) $(if $(filter 1,$(CSID)),--csid)

checkpoints: setup
	$(PY) -m grood download checkpoints --benchmark $(DATASET) --dest $(CHECKPOINT_ROOT)

bench-method: setup
	$(PY) -m grood bench-method

# ImageNet-1k's true size on disk (1,281,167 x 2048, written under /tmp): time, peak RSS, recall per method (hours;
# BENCH_ARGS="--methods grood-ivf" for GROOD IVF alone).
BENCH_ARGS ?=
bench-true-size: setup
	$(PY) -m grood bench-true-size $(BENCH_ARGS)

# Every method on the shared CIFAR-10 smoke benchmark (../shared or $GROOD_SHARED_DIR), CPU, minutes; then the
# wheel: built, installed in a fresh virtual environment, its `grood` command runs GROOD from a temporary folder.
SMOKE_RUN = experiment=smoke progress=false paths.results_dir=results/smoke paths.data_root=$(or $(DATA_ROOT),$(SMOKE_ROOT))
smoke: setup
	GROOD_SHARED_DIR=$(SHARED) $(PY) -m grood run $(SMOKE_RUN)
	GROOD_SHARED_DIR=$(SHARED) GROOD_SMOKE_RESULTS=results/smoke GROOD_SMOKE_ARGS="$(SMOKE_RUN)" \
		$(PY) -m pytest -m smoke tests/test_smoke.py tests/test_packaging.py

# Everything that needs CUDA, in one command under 10 minutes: the CUDA-marked tests, `make smoke` with
# device=cuda against the CPU run (AUROCs within 0.05), the AMP training smoke, FAISS on the GPU when faiss-gpu is
# installed; summary in results/gpu_check/summary.md. Stops at once on a machine without CUDA.
gpu-check: setup
	GROOD_SHARED_DIR=$(SHARED) $(PY) -m grood gpu-check --out results/gpu_check

# The main job: OpenOOD v1.5 data and checkpoints (online), then one evaluation.
run: setup data checkpoints
	$(PY) -m grood run dataset=$(DATASET) method=$(METHOD) $(DATA_ROOT_ARG)

# A results folder (one method, or method=all) as OpenOOD leaderboard entries (grood leaderboard).
RUN ?=
TRAINING ?= CrossEntropy
leaderboard: setup
	@test -n "$(RUN)" || { echo "give the results folder: make leaderboard RUN=<folder with run.json or summary.json>"; exit 2; }
	@$(PY) -m grood leaderboard "$(RUN)" --training "$(TRAINING)"

bench-eval: setup
	GROOD_SHARED_DIR=$(SHARED) $(PY) -m grood bench-eval

SEEDS ?= 0
MIXUP ?= 0
TRAIN_ARGS ?=

# Train ResNet-18 with the paper's recipe (section 6) into checkpoints/trained/<dataset>_<backbone>[_mixup]/s<seed>/.
# SEEDS=0,1,2: one model per seed (Hydra multirun); MIXUP=1: manifold mixup (Table 7); re-running resumes.
# DATASET=cifar10_smoke: the CPU smoke recipe (seconds). More overrides: TRAIN_ARGS="train.keep_epoch_checkpoints=15".
train: setup
	GROOD_SHARED_DIR=$(SHARED) $(PY) -m grood train -m dataset=$(DATASET) seed=$(SEEDS) \
		manifold_mixup=$(if $(filter 1,$(MIXUP)),true,false) $(DATA_ROOT_ARG) $(TRAIN_ARGS)

# ---- paper tables and figures (grood reproduce; grood/cli/reproduce.py) ----
# `make reproduce-tableN` runs what paper table N needs (finished runs are kept) and writes results/tableN/
# (CSV, LaTeX, paper_vs_ours.csv, report.md); reproduce-figures: figures 2-5 and the appendix A.4 timing
# table; reproduce-author: paper-text GROOD vs the author's OpenOOD configuration (method=grood_openood);
# reproduce-all: everything, Table 2 before Table 1. SMOKE=1: the smoke version on the shared smoke
# benchmark (CPU, minutes), written to results/smoke/. More options in REPRODUCE_ARGS, e.g.
# REPRODUCE_ARGS=--force (re-run), --tables-only (merge existing results), "-o device=cuda".
REPRODUCE_ARGS ?=
REPRODUCE_TARGETS := reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4 reproduce-table5 \
                     reproduce-table6 reproduce-table7 reproduce-figures reproduce-author reproduce-all

$(REPRODUCE_TARGETS): reproduce-%: setup
	GROOD_SHARED_DIR=$(SHARED) $(PY) -m grood reproduce $* \
		$(if $(filter 1,$(SMOKE)),--smoke) $(if $(DATA_ROOT),-o paths.data_root=$(DATA_ROOT)) $(REPRODUCE_ARGS)
