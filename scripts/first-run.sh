#!/usr/bin/env bash
# What a make target needs before it can do anything, checked in a moment: on a fresh clone a
# target stops with one line saying which command to run first, not with a traceback.
#
#   scripts/first-run.sh TARGET CHECK...    (run from the repository root, as make does)
#
#   env         the project's packages import (the .venv `make setup` fills, first on make's PATH)
#   champion    an MLflow @champion may exist: a team server (MLFLOW_TRACKING_URI) or the local
#               store mlflow.db (pipeline/shared/tracking.py); its absence is certain, not its presence
#   no-champion there is none (register --import-only said so): say how to get one
#   prepared    data/prepared/ holds the splits (`dvc repro prepare` writes them)
#   records     the service has recorded predictions (FASHION_MNIST_MONITORING_DIR, else
#               serve.monitoring.records_dir); only a hint: a report of no records is still one
#   podman      podman is installed (make deploy-check builds and plays the image with it)
set -euo pipefail
target=${1:?usage: $0 TARGET CHECK...}
shift

stop() {
  echo "make $target: $*" >&2
  exit 1
}

no_champion() {
  stop "no @champion yet: run \`make tour\` (minutes; a small model) or \`make repro\`" \
    "(the full model; \`make help\` says how long) first"
}

for check in "$@"; do
  case $check in
    env)
      python -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("dvc", "mlflow", "bentoml")))' \
        >/dev/null 2>&1 ||
        stop "no .venv with the project's packages yet: run \`make setup\` first (it downloads every package once; \`make help\` says how long)"
      ;;
    champion) [ -n "${MLFLOW_TRACKING_URI:-}" ] || [ -f mlflow.db ] || no_champion ;;
    no-champion) no_champion ;;
    prepared)
      for split in train val test; do
        [ -f "data/prepared/$split.npz" ] ||
          stop "no data/prepared/ yet: run \`dvc repro prepare\` first (fetch and prepare: no training;" \
            "after \`make setup\` on a fresh clone)"
      done
      ;;
    records)
      python - "$target" <<'PY' >&2 2>/dev/null || true
import os, sys
from pathlib import Path
from pipeline.core.params import load_params
from pipeline.core.record_files import record_files
directory = os.environ.get("FASHION_MNIST_MONITORING_DIR") or load_params().serve.monitoring.records_dir
if directory and not (Path(directory).is_dir() and record_files(Path(directory))):
    print(f"make {sys.argv[1]}: no prediction records in {directory}/ yet: run `make serve` and "
          'send it images first (README, "Try it in a few minutes"); without them the report says '
          "insufficient data")
PY
      ;;
    podman)
      command -v podman >/dev/null ||
        stop "podman is not installed: \`apt install podman\` first (Docker alone is not enough:" \
          "the check plays deploy/k8s with \`podman kube play\`)"
      ;;
    *)
      echo "$0: unknown check $check" >&2
      exit 2
      ;;
  esac
done
