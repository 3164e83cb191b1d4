#!/usr/bin/env bash
# System packages the project needs, installed only where missing (Debian/Ubuntu, apt).
#   data: Fashion-MNIST from Debian's dataset-fashion-mnist, unless the files are already there
#         or the official mirror answers (then `dvc repro` downloads them itself).
#   test: PostgreSQL server binaries for the shared-tracking tests, and Chromium (with a font, for
#         readable screenshots) for the browser tests of the service's /ui page (tests/test_ui.py:
#         Playwright drives this system browser; its own browser download is not used), and
#         Prometheus (promtool tests of deploy/prometheus/alerts.yml; a real server scrapes the
#         service) and node_exporter (serves make monitor's drift.prom to it); installing these
#         starts no service where systemd does not run.
#   venv: python3 with its venv module (scripts/bootstrap.sh pip-installs uv into a venv).
#   python VERSION: pythonVERSION, where the distribution has it (Debian 12: 3.11; Ubuntu 22.04:
#         3.11 in universe; Ubuntu 24.04 has none: the deadsnakes PPA, docs/troubleshooting.md).
set -euo pipefail
DATASET_DIR=/usr/share/datasets/fashion-mnist
MIRROR=https://storage.googleapis.com/tensorflow/tf-keras-datasets/train-labels-idx1-ubyte.gz

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "system-deps: no apt-get here; install $* yourself" >&2
    return 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

reachable() {  # $1 answers; with curl, or else with Python's urllib (a machine may lack curl)
  if command -v curl >/dev/null; then
    curl -fsI --max-time 5 "$1" >/dev/null 2>&1
  else
    python3 -c 'import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method="HEAD"), timeout=5)' \
      "$1" >/dev/null 2>&1
  fi
}

case "${1:-}" in
  data)
    [ -f "$DATASET_DIR/train-images-idx3-ubyte.gz" ] && exit 0
    if reachable "$MIRROR"; then
      echo "system-deps: official mirror reachable; the fetch stage will download the data"
      exit 0
    fi
    echo "system-deps: mirror unreachable, installing Debian's dataset-fashion-mnist"
    apt_install dataset-fashion-mnist
    ;;
  test)
    missing=()
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    command -v chromium >/dev/null || missing+=(chromium fonts-dejavu-core)
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v prometheus-node-exporter >/dev/null || missing+=(prometheus-node-exporter)
    command -v node >/dev/null || missing+=(nodejs)  # node --test: the /ui lesson's maths (tests/test_lesson_math.py)
    [ ${#missing[@]} -eq 0 ] && exit 0
    echo "system-deps: installing ${missing[*]} (shared-tracking tests; browser tests of /ui; alert rules and the drift verdict)"
    apt_install "${missing[@]}"
    ;;
  venv)
    echo "system-deps: installing python3-venv (a venv to install uv from PyPI into)"
    apt_install python3-venv
    ;;
  python)
    echo "system-deps: installing python${2:?usage: $0 python VERSION}"
    apt_install "python$2"
    ;;
  *)
    echo "usage: $0 data|test|venv|python VERSION" >&2
    exit 2
    ;;
esac
