# Two commands on a fresh machine: `make repro` (set up + run the pipeline) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
UV_VERSION := 0.13.8
export PATH := $(BIN):$(PATH)

.PHONY: repro test tour setup system-data system-test lint format lock serve build deploy-check monitor docs bench-train bench-serve bench-monitoring load-test

repro: setup system-data  ## set everything up, then run the whole pipeline on the default params
	dvc repro

test: setup system-data system-test  ## set everything up, then run the whole test suite
	pytest

# The test suite's small-run values; --temp runs in a copy, so params.yaml and the workspace stay as they are.
TOUR_PARAMS := prepare.max_train_samples=2000 prepare.max_test_samples=2000 train.epochs=2 train.batch_size=32 train.warmup_epochs=0 register.min_accuracy=0.5

tour: setup system-data  ## the whole loop on 2,000 images and 2 epochs, as a DVC experiment (README, "A few-minutes tour")
	dvc exp run --temp $(addprefix -S ,$(TOUR_PARAMS))

setup: $(VENV)/.installed  ## the virtualenv, from the lock file

$(VENV)/.installed: requirements.lock pyproject.toml
	@command -v uv >/dev/null || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	uv venv --allow-existing --python 3.11 $(VENV)
	uv pip sync --python $(BIN)/python requirements.lock
	uv pip install --python $(BIN)/python --no-deps -e .
	@touch $@

system-data:  ## the dataset from Debian's package when the online mirrors are out of reach
	@scripts/system-deps.sh data

system-test:  ## PostgreSQL (shared-tracking tests), Chromium (/ui browser tests), Prometheus (alert rules)
	@scripts/system-deps.sh test

lint:
	ruff check . && ruff format --check .

format:
	ruff check --fix . && ruff format .

lock:  ## re-resolve requirements.lock (everything) and requirements-serve.lock (the Bento's image) from pyproject.toml
	uv pip compile pyproject.toml --all-extras --python-version 3.11 -o requirements.lock
	uv pip compile pyproject.toml --extra serve --python-version 3.11 -c requirements.lock --generate-hashes -o requirements-serve.lock

serve:  ## serve the MLflow @champion on http://localhost:3000 (imported into BentoML if missing)
	python -m pipeline.register --import-only
	bentoml serve

build:  ## package the service and the champion model as a Bento
	bentoml build

# With no @champion yet (a fresh clone), the tour trains and promotes its small model first.
deploy-check: setup system-data  ## build the image, play deploy/k8s with podman, check it (docs/deploy.md)
	@served=$$(python -m pipeline.register --import-only) && echo "$$served" && \
	if [[ $$served == *"serving nothing"* ]]; then \
	  echo "deploy-check: no @champion yet; make tour trains and promotes a small model first"; \
	  $(MAKE) tour && python -m pipeline.register --import-only; fi
	python benchmarks/deploy_check.py

docs: setup  ## build the documentation site into site/
	mkdocs build --strict

# SINCE / UNTIL: an ISO time (UTC) or a duration ago (30m, 24h, 7d); default: the last
# monitor.window_hours. Reads serve.monitoring.records_dir (or FASHION_MNIST_MONITORING_DIR).
monitor:  ## drift report of the recorded predictions vs the training data -> reports/monitor/
	python -m pipeline.drift $(if $(SINCE),--since "$(SINCE)") $(if $(UNTIL),--until "$(UNTIL)")

bench-train:  ## default CNN vs the plain two-conv reference (needs `dvc repro prepare`)
	python benchmarks/train_benchmark.py

bench-serve:  ## the service vs a no-op BentoML, BentoML's batcher, mlflow models serve, runtimes
	python benchmarks/serve_benchmark.py

bench-monitoring:  ## the service with prediction recording on vs off (interleaved restarts)
	python benchmarks/monitoring_cost.py

load-test:  ## 10,000 mixed good/bad requests at concurrency 32 against a fresh `bentoml serve`
	python benchmarks/load_test.py
