"""A fresh machine and a fresh clone. `make setup` gets uv and a Python 3.11 virtualenv on a PATH
with no pip and no uv (make, git, curl and a python3 that has venv, as on stock Debian 12 or
Ubuntu with python3-venv); where uv or Python 3.11 cannot be had, one line says what to install.
And `make serve` on a store without a champion says how to get one.

The bootstrap installs uv with pip as `make setup` does on such a machine, here from the wheel
`make system-test` downloaded (pip without an index: the test needs no network), and syncs a lock of
a few packages, not requirements.lock, with the same `make setup` recipe (LOCK=...), uv offline
from its cache: the sync of the whole lock only takes longer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import BASICS, REPO, base_env

from harness.servers import free_port

pytestmark = pytest.mark.data

MAKEFILE = (REPO / "Makefile").read_text()
UV_VERSION = re.search(r"^UV_VERSION := (\S+)$", MAKEFILE, flags=re.M).group(1)
PYTHON_VERSION = re.search(r"^PYTHON_VERSION := (\S+)$", MAKEFILE, flags=re.M).group(1)
# pipeline.core.params, the loader every stage and the service use, imports these.
SMALL_LOCK = (
    "pyyaml",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-extensions",
    "typing-inspection",
)
COPIED = (
    "Makefile",
    "scripts",
    "pyproject.toml",
    "README.md",
    "params.yaml",
    "pipeline",
    "service",
    "harness",
)


def python_with_venv() -> str:
    """A python3 other than this suite's venv whose venv module can make a venv with pip."""
    candidates = [getattr(sys, "_base_executable", ""), "/usr/bin/python3", shutil.which("python3")]
    for python in filter(None, candidates):
        # By its prefix, not its resolved path: the venv's python is a link to the very binary
        # it was made from (/usr/bin/python3.11 on a stock Debian 12).
        probe = subprocess.run(
            [python, "-c", "import ensurepip, sys, venv; print(sys.prefix)"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and Path(probe.stdout.strip()) != Path(sys.prefix):
            return python
    pytest.fail(f"no python3 with venv and ensurepip among {candidates}")


def machine(root: Path, **commands: str) -> str:
    """A PATH holding only BASICS and `commands` (name -> the program it links to)."""
    bin_dir = root / "machine-bin"
    bin_dir.mkdir()
    for name in BASICS:
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        assert found, f"this machine has no {name}"
        (bin_dir / name).symlink_to(found)
    for name, target in commands.items():
        (bin_dir / name).symlink_to(target)
    return str(bin_dir)


def unreachable_url() -> str:
    return f"http://127.0.0.1:{free_port()}/"


def uv_wheels() -> Path:
    """Where `make system-test` put the uv wheel: pip takes it from there, not from PyPI (tests
    need no network)."""
    wheels = REPO / ".tools" / "wheels"
    if not list(wheels.glob(f"uv-{UV_VERSION}-*.whl")):
        pytest.fail(f"no uv {UV_VERSION} wheel in {wheels}: run `make system-test` first")
    return wheels


def fresh_env(root: Path, path: str) -> dict[str, str]:
    """This process's environment (certificates) with only `path` on PATH, no virtualenv, pip
    given the uv wheel and no index, uv offline (its cache holds the small lock's packages), and
    uv's Python downloads and installer pointed at a closed port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV", "CONDA"))}
    (root / "uv-pythons").mkdir(exist_ok=True)
    return {
        **env,
        "PATH": path,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(uv_wheels()),
        "UV_OFFLINE": "1",
        "UV_PYTHON_INSTALL_DIR": str(root / "uv-pythons"),  # none installed by uv
        "UV_PYTHON_INSTALL_MIRROR": unreachable_url(),
        "UV_INSTALLER_URL": unreachable_url() + "install.sh",
    }


def make(clone: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def fresh_clone(root: Path) -> Path:
    clone = root / "clone"
    clone.mkdir()
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, clone / name)
    return clone


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`make setup` once on a machine with a python3 (that has venv) but no pip and no uv."""
    root = tmp_path_factory.mktemp("bootstrap")
    clone = fresh_clone(root)
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)", (REPO / "requirements.lock").read_text(), re.M))
    lock = root / "small.lock"
    lock.write_text("".join(f"{name}=={pins[name]}\n" for name in SMALL_LOCK))
    env = fresh_env(root, machine(root, python3=python_with_venv()))
    args = (f"VENV={root / 'venv'}", f"TOOLS={root / 'tools'}", f"LOCK={lock}")
    first = make(clone, env, "setup", *args)
    again = make(clone, env, "setup", *args)
    return {"root": root, "clone": clone, "env": env, "first": first, "again": again}


def test_setup_gets_uv_from_pypi_and_a_python_3_11_venv_that_imports_the_project(bootstrapped):
    root, clone, first = bootstrapped["root"], bootstrapped["clone"], bootstrapped["first"]
    assert first.returncode == 0, f"make setup failed:\n{first.stdout}\n{first.stderr}"
    assert f"bootstrap: installing uv {UV_VERSION} from PyPI" in first.stderr, first.stderr
    uv = root / "tools" / "bin" / "uv"
    assert subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.startswith(
        f"uv {UV_VERSION} "
    )
    python = root / "venv" / "bin" / "python"
    # Run outside the clone: the project is imported from the install, not the working directory.
    shown = subprocess.run(
        [
            python,
            "-c",
            "import sys, pipeline; from pipeline.core.params import load_params; "
            "print('%d.%d' % sys.version_info[:2]); print(pipeline.__file__); "
            f"print(len(load_params({str(clone / 'params.yaml')!r}).model.conv_blocks))",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        env=bootstrapped["env"],
    )
    assert shown.returncode == 0, shown.stderr
    version, module, blocks = shown.stdout.split()
    assert version == PYTHON_VERSION
    assert Path(module).is_relative_to(clone / "pipeline")
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert int(blocks) == len(params["model"]["conv_blocks"])
    # The venv holds what the lock says and the project, nothing else.
    listed = subprocess.run(
        [uv, "pip", "list", "--format", "json", "--python", python],
        capture_output=True,
        text=True,
        env=bootstrapped["env"],
    )
    names = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert names == {*SMALL_LOCK, "fashion-mnist-mlops"}, listed.stdout


def test_setup_again_installs_nothing(bootstrapped):
    again = bootstrapped["again"]
    assert again.returncode == 0, again.stderr
    assert (again.stdout, again.stderr) == ("", "")  # no uv, no venv, no sync: all were there


def test_without_python3_or_the_uv_installer_one_line_says_what_to_install(tmp_path):
    clone = fresh_clone(tmp_path)
    env = fresh_env(tmp_path, machine(tmp_path))  # no python3, no uv, no apt-get
    done = make(clone, env, "bootstrap", f"VENV={tmp_path / 'venv'}", f"TOOLS={tmp_path / 'tools'}")
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("bootstrap:")]
    assert len(ours) == 1, done.stderr
    assert ours[0].startswith(f"bootstrap: cannot get uv {UV_VERSION}"), ours
    assert "apt install python3-venv" in ours[0]
    assert not (tmp_path / "venv").exists()


def test_uv_on_path_is_used_and_without_python_3_11_one_line_says_what_to_install(
    tmp_path, bootstrapped
):
    pinned_uv = (bootstrapped["root"] / "tools" / "bin" / "uv").resolve()
    clone = fresh_clone(tmp_path)
    env = fresh_env(tmp_path, machine(tmp_path, uv=str(pinned_uv)))  # uv, but no python at all
    done = make(clone, env, "bootstrap", f"VENV={tmp_path / 'venv'}", f"TOOLS={tmp_path / 'tools'}")
    assert done.returncode != 0
    assert (tmp_path / "tools" / "bin" / "uv").resolve() == pinned_uv  # the one on PATH, linked
    ours = [line for line in done.stderr.splitlines() if line.startswith("bootstrap:")]
    assert not any("installing uv" in line for line in ours), ours
    assert ours[-1].startswith(f"bootstrap: no Python {PYTHON_VERSION}, and uv could not"), ours
    assert "deadsnakes" in ours[-1] and f"apt install python{PYTHON_VERSION}" in ours[-1]
    assert not (tmp_path / "venv").exists()


def test_serve_on_a_store_without_a_champion_says_how_to_get_one(tmp_path):
    """The real `register --import-only` on an empty MLflow store, then make's one line."""
    clone = fresh_clone(tmp_path)
    (clone / "mlflow.db").touch()  # a store exists (say, a tour that failed), with no champion
    env = base_env(BENTOML_HOME=str(tmp_path / "bentoml"))
    done = make(clone, env, "serve", f"VENV={tmp_path / 'no-venv'}")
    assert done.returncode != 0, done.stdout
    assert "register: serving nothing: there is no @champion yet" in done.stdout
    assert "make serve: no @champion yet: run `make tour`" in done.stderr, done.stderr
    assert "bentoml serve" not in done.stdout  # never reached
