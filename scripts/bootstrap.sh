#!/usr/bin/env bash
# `make bootstrap`: uv (pinned) in a project-local tools directory and an empty Python 3.11
# virtualenv, on a machine that may have neither pip nor Python 3.11; `make setup` then fills the
# virtualenv from requirements.lock. Silent when everything is already in place.
#
#   scripts/bootstrap.sh TOOLS UV_VERSION VENV PYTHON_VERSION
#
# uv, the first way that works:
#   1. TOOLS/bin/uv, or a uv on PATH, of exactly UV_VERSION;
#   2. from PyPI with pip, in a bootstrap venv TOOLS/uv-env made by any python3 >= 3.8 that has
#      venv: PEP 668 forbids `pip install` into Debian's and Ubuntu's own Python, not into a venv;
#      pip's own configuration (index, proxy) applies;
#   3. uv's standalone installer ($UV_INSTALLER_URL; needs astral.sh and github.com) into TOOLS/bin;
#   4. where apt-get exists, Debian's python3-venv (scripts/system-deps.sh venv), then 2 again.
# Python PYTHON_VERSION, the first way that works: `uv python find` (python3.11 on PATH, pyenv,
# uv's own installs); `uv python install` (python-build-standalone, from github.com); where apt-get
# exists, Debian's or Ubuntu's python3.11 (scripts/system-deps.sh python).
# When none works: one line saying what to install, and exit 1.
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 TOOLS UV_VERSION VENV PYTHON_VERSION" >&2
  exit 2
fi
tools=$1 version=$2 venv=$3 python_version=$4
here=$(cd "$(dirname "$0")" && pwd)
uv=$tools/bin/uv
installer_url=${UV_INSTALLER_URL:-https://astral.sh/uv/$version/install.sh}
log=$tools/bootstrap.log  # what the ways that failed said, for whoever wants the details

say() { echo "bootstrap: $*" >&2; }
stop() {
  echo "bootstrap: $* (details: $log)" >&2
  exit 1
}

is_pinned_uv() {  # $1 runs and is uv $version
  local name got
  [ -x "$1" ] || return 1
  read -r name got _ < <("$1" --version 2>/dev/null) || return 1
  [ "$name" = uv ] && [ "$got" = "$version" ]
}

uv_from_pypi() {  # a bootstrap venv from the first python3 >= 3.8 with venv, and pip install uv
  local py
  for py in python3 python3.13 python3.12 python3.11 python3.10 python3.9 python3.8; do
    command -v "$py" >/dev/null || continue
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>/dev/null || continue
    rm -rf "$tools/uv-env"
    if ! "$py" -m venv "$tools/uv-env" >>"$log" 2>&1; then  # no ensurepip: python3-venv missing
      rm -rf "$tools/uv-env"
      continue
    fi
    say "installing uv $version from PyPI into $tools (pip, in a venv of $("$py" -c 'import sys; print(sys.executable)'))"
    if PIP_DISABLE_PIP_VERSION_CHECK=1 "$tools/uv-env/bin/python" -m pip install --quiet \
      "uv==$version" >>"$log" 2>&1; then
      ln -sf ../uv-env/bin/uv "$uv"
      return 0
    fi
    rm -rf "$tools/uv-env"
    return 1  # pip ran and failed (no index reachable): another python3 would fail the same way
  done
  return 1
}

uv_from_installer() {
  command -v curl >/dev/null || return 1
  curl -LsSf --max-time 60 "$installer_url" -o "$tools/uv-installer.sh" >>"$log" 2>&1 || return 1
  say "installing uv $version with its standalone installer into $tools/bin"
  UV_UNMANAGED_INSTALL="$tools/bin" sh "$tools/uv-installer.sh" >>"$log" 2>&1
}

get_uv() {
  is_pinned_uv "$uv" && return 0
  local found
  if found=$(command -v uv) && is_pinned_uv "$found"; then
    ln -sf "$found" "$uv"
    return 0
  fi
  rm -f "$uv"
  if uv_from_pypi || uv_from_installer; then
    is_pinned_uv "$uv" && return 0
  fi
  if command -v apt-get >/dev/null; then
    say "installing python3-venv with apt (scripts/system-deps.sh venv), for a venv to pip install uv into"
    if "$here/system-deps.sh" venv >>"$log" 2>&1 && uv_from_pypi && is_pinned_uv "$uv"; then
      return 0
    fi
  fi
  stop "cannot get uv $version (neither pip in a python3's venv nor $installer_url worked):" \
    "install python3-venv (apt install python3-venv) or uv $version" \
    "(https://docs.astral.sh/uv/getting-started/installation/), then run make again"
}

find_python() {  # the interpreter's path on stdout
  "$uv" python find --system "$python_version" 2>>"$log"
}

get_python() {
  local py
  py=$(find_python) && { echo "$py"; return 0; }
  say "no Python $python_version found; downloading one (uv python install $python_version)"
  if "$uv" python install "$python_version" >>"$log" 2>&1 && py=$(find_python); then
    echo "$py"
    return 0
  fi
  if command -v apt-get >/dev/null; then
    say "installing python$python_version with apt (scripts/system-deps.sh python $python_version)"
    if "$here/system-deps.sh" python "$python_version" >>"$log" 2>&1 && py=$(find_python); then
      echo "$py"
      return 0
    fi
  fi
  stop "no Python $python_version, and uv could not download one (from github.com):" \
    "install it (Debian 12, Ubuntu 22.04: apt install python$python_version; Ubuntu 24.04: from" \
    "the deadsnakes PPA, add-apt-repository ppa:deadsnakes/ppa && apt install" \
    "python$python_version), then run make again"
}

venv_is_ready() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" -c \
    "import sys; sys.exit('%d.%d' % sys.version_info[:2] != '$python_version')" 2>/dev/null
}

mkdir -p "$tools/bin"
: >"$log"
get_uv
venv_is_ready && exit 0
python=$(get_python)
say "creating $venv with $python"
"$uv" venv --quiet --allow-existing --python "$python" "$venv"
