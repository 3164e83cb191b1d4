# Two commands on a fresh machine: `make repro` (set up + run the pipeline) and `make test`;
# `make` alone lists every target. A machine needs make, git, curl and bash: uv and Python 3.11
# are found or fetched by `make bootstrap` (scripts/bootstrap.sh), the rest by `make setup`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# uv, pinned, in a project-local directory (with the bootstrap venv pip may install it into).
TOOLS ?= .tools
UV := $(abspath $(TOOLS))/bin/uv
UV_VERSION := 0.13.8
PYTHON_VERSION := 3.11
export PATH := $(BIN):$(abspath $(TOOLS))/bin:$(PATH)
# A target's first recipe line: what must exist before it can work, else one line saying which
# command to run first (scripts/first-run.sh).
NEEDS = @scripts/first-run.sh $@
.DEFAULT_GOAL := help

.PHONY: help bootstrap repro test tour setup system-data system-test lint format lock serve rollback build deploy-check monitor feedback feedback-review docs bench-train bench-serve bench-monitoring load-test

# The times in brackets were measured on two 2-vCPU machines (docs/costs.md); -: not measured.
help:  ## this list (also `make` alone)
	@echo "make TARGET [VAR=value]; [time on the Intel Xeon with AVX-512 | on the AMD EPYC with AVX2 only]"
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / {printf "  %-17s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))

repro: setup system-data  ## the whole pipeline on the default params (sets up first) [13 min | 31 min from a fresh clone]
	dvc repro

test: setup system-data system-test  ## the whole test suite, as CI runs it (sets up first) [25 min, 246 tests (2026-11-30) | 31 min, 503 tests, from a fresh clone]
	pytest

# The test suite's small-run values; --temp runs in a copy, so params.yaml and the workspace stay as they are.
TOUR_PARAMS := prepare.max_train_samples=2000 prepare.max_test_samples=2000 train.epochs=2 train.batch_size=32 train.warmup_epochs=0 register.min_accuracy=0.5

tour: setup system-data  ## the whole loop on 2,000 images, 2 epochs (README, "Try it in a few minutes") [1 min 38 s, after setup | 1 min 54 s from a fresh clone]
	dvc exp run --temp $(addprefix -S ,$(TOUR_PARAMS))

bootstrap:  ## uv (UV_VERSION) in .tools/, an empty Python 3.11 .venv; or one line: what to install
	@scripts/bootstrap.sh "$(abspath $(TOOLS))" "$(UV_VERSION)" "$(abspath $(VENV))" "$(PYTHON_VERSION)"

# The lock `make setup` installs: requirements.lock, or requirements-gpu.lock (the same and the CUDA
# libraries TensorFlow uses on an NVIDIA GPU; docs/adapting.md, "Training on a GPU"). One stamp per
# lock, so that switching locks syncs again.
LOCK ?= requirements.lock
STAMP := $(VENV)/.installed-$(notdir $(LOCK))

setup: $(STAMP)  ## bootstrap, then .venv from requirements.lock (LOCK=...) [10 min the first time: downloads | -]

$(STAMP): $(LOCK) pyproject.toml | bootstrap
	@rm -f $(VENV)/.installed*
	$(UV) pip sync --compile-bytecode --python $(BIN)/python $(LOCK)
	$(UV) pip install --python $(BIN)/python --no-deps -e .
	@touch $@

system-data:  ## the dataset from Debian's package when the online mirrors are out of reach
	@scripts/system-deps.sh data

# The uv wheel tests/test_bootstrap.py installs offline, as `make setup` would from PyPI.
system-test: setup  ## PostgreSQL (shared-tracking tests), Chromium (/ui browser tests), Prometheus (alert rules)
	@scripts/system-deps.sh test
	@ls $(TOOLS)/wheels/uv-$(UV_VERSION)-*.whl >/dev/null 2>&1 || $(UV) run --quiet --no-project --with pip \
	  python -m pip download --quiet --no-deps --only-binary :all: -d $(TOOLS)/wheels "uv==$(UV_VERSION)"

lint:  ## ruff check and ruff format --check
	$(NEEDS) env
	ruff check . && ruff format --check .

format:  ## ruff check --fix and ruff format
	$(NEEDS) env
	ruff check --fix . && ruff format .

# The extras of requirements.lock: all but gpu, whose CUDA wheels would make every setup download GBs.
LOCK_EXTRAS := serve train team dev

lock: bootstrap  ## requirements.lock, requirements-serve.lock (the image), requirements-gpu.lock from pyproject.toml
	$(UV) pip compile pyproject.toml $(addprefix --extra ,$(LOCK_EXTRAS)) --python-version $(PYTHON_VERSION) -o requirements.lock
	$(UV) pip compile pyproject.toml --extra serve --python-version $(PYTHON_VERSION) -c requirements.lock --generate-hashes -o requirements-serve.lock
	$(UV) pip compile pyproject.toml $(addprefix --extra ,$(LOCK_EXTRAS) gpu) --python-version $(PYTHON_VERSION) -c requirements.lock -o requirements-gpu.lock

# register --import-only: the MLflow @champion into the local BentoML store; with none, one line.
IMPORT_CHAMPION = served=$$(python -m pipeline.register --import-only) && echo "$$served" && \
	if [[ $$served == *"serving nothing"* ]]; then scripts/first-run.sh $@ no-champion; fi

serve:  ## serve the MLflow @champion on http://localhost:3000 (imported into BentoML if missing)
	$(NEEDS) champion env
	@$(IMPORT_CHAMPION)
	bentoml serve

# REASON (required) goes into MLflow; VERSION: the version to restore (default: the one @champion replaced).
rollback:  ## move @champion back and serve it (docs/pipeline.md, "Rolling back")
	$(NEEDS) env
	python -m pipeline.rollback $(if $(VERSION),--to "$(VERSION)") --reason "$(REASON)"

build:  ## package the service and the champion model as a Bento (imported into BentoML if missing)
	$(NEEDS) champion env
	@$(IMPORT_CHAMPION)
	bentoml build

# With no @champion yet (a fresh clone), the tour trains and promotes its small model first.
deploy-check:  ## build the image, play deploy/k8s with podman, check it [3 min from a fresh clone | 84 s, check alone]
	$(NEEDS) podman
	@$(MAKE) --no-print-directory setup system-data
	@served=$$(python -m pipeline.register --import-only) && echo "$$served" && \
	if [[ $$served == *"serving nothing"* ]]; then \
	  echo "deploy-check: no @champion yet; make tour trains and promotes a small model first"; \
	  $(MAKE) tour && python -m pipeline.register --import-only; fi
	python benchmarks/deploy_check.py

docs: setup  ## build the documentation site into site/
	mkdocs build --strict

# Reads the shards in <records dir>/feedback/ (FASHION_MNIST_MONITORING_DIR or serve.monitoring.records_dir).
feedback:  ## curate the corrections sent to POST /feedback into data/feedback (docs/pipeline.md, "Curating feedback")
	$(NEEDS) env
	dvc repro -q feedback  # -q: the stage's own summary, without DVC's lines

# ARGS: --accept ID... [--label CLASS] | --accept-all | --reject ID... ; [--note TEXT]
feedback-review:  ## record review decisions in feedback/review.csv, then curate again
	$(NEEDS) env
	python -m pipeline.feedback review $(ARGS)
	$(MAKE) --no-print-directory feedback

# SINCE / UNTIL: an ISO time (UTC) or a duration ago (30m, 24h, 7d); default: the last
# monitor.window_hours. Reads serve.monitoring.records_dir (or FASHION_MNIST_MONITORING_DIR).
monitor:  ## drift report of the recorded predictions vs the training data -> reports/monitor/
	$(NEEDS) env prepared records
	python -m pipeline.drift $(if $(SINCE),--since "$(SINCE)") $(if $(UNTIL),--until "$(UNTIL)")

bench-train:  ## default CNN vs the plain two-conv reference [slow: trains both on data/prepared]
	$(NEEDS) env prepared
	python benchmarks/train_benchmark.py

bench-serve:  ## the service vs a no-op BentoML, BentoML's batcher, mlflow models serve, runtimes [7 min | 7 min]
	$(NEEDS) env prepared
	python benchmarks/serve_benchmark.py

bench-monitoring:  ## the service with prediction recording on vs off (interleaved restarts) [5 min | 5 min]
	$(NEEDS) env prepared
	python benchmarks/monitoring_cost.py

load-test:  ## 10,000 mixed good/bad requests at concurrency 32 against a fresh `bentoml serve` [42 s | 43 s]
	$(NEEDS) env prepared
	python benchmarks/load_test.py
