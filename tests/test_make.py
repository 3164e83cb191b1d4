"""The Makefile a newcomer meets first: `make` alone lists every target with one line (the slow
ones with their measured times), a target that cannot work yet on a fresh clone stops with one
line saying which command to run first (scripts/first-run.sh), before it installs or imports
anything, and `make setup` installs a lock without the GPU's CUDA wheels.

The fresh clones here are the Makefile and scripts/ alone: the guards run before anything else
of the repository is read. tests/test_bootstrap.py runs the bootstrap itself.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BASICS, REPO

pytestmark = pytest.mark.unit

# What a fresh Debian or Ubuntu machine has: a shell, make, coreutils, git, curl, python3 (no
# `python`, no uv, no pip module needed).
FRESH_MACHINE = (*BASICS, "python3")
SLOW = ("repro", "test", "tour", "setup", "deploy-check")
TIME = r"\d+ (?:min|s)\b"
NO_CHAMPION = "no @champion yet: run `make tour` (minutes; a small model) or `make repro`"
NO_VENV = "no .venv with the project's packages yet: run `make setup` first"


def machine_path(root: Path, names: tuple[str, ...], *before: Path) -> str:
    """A PATH of `before` and a directory holding only `names` (symlinks to this machine's)."""
    bin_dir = root / "machine-bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
        assert found, f"this machine has no {name}"
        (bin_dir / name).symlink_to(found)
    return os.pathsep.join(str(p) for p in (*before, bin_dir))


def fresh_clone(root: Path) -> Path:
    clone = root / "clone"
    clone.mkdir()
    shutil.copy2(REPO / "Makefile", clone / "Makefile")
    shutil.copytree(REPO / "scripts", clone / "scripts")
    return clone


def make(cwd: Path, *args: str, path: str, **env: str) -> subprocess.CompletedProcess:
    # Not MAKELEVEL and its kind: under `make test` the child would print "make[1]: ***" lines.
    inherited = ("MLFLOW_", "VIRTUAL_ENV", "MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=cwd,
        env={**environ, "PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def help_lines() -> dict[str, str]:
    out = make(REPO, "help", path=os.environ["PATH"]).stdout
    return dict(re.findall(r"^  ([a-z][\w-]*) +(\S.*)$", out, flags=re.M))


def phony_targets() -> list[str]:
    line = re.search(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), flags=re.M)
    assert line, "the Makefile declares no .PHONY targets"
    return line.group(1).split()


def test_make_alone_prints_help_with_every_target_on_one_line():
    alone = make(REPO, path=os.environ["PATH"])
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout == make(REPO, "help", path=os.environ["PATH"]).stdout
    described = help_lines()
    targets = phony_targets()
    assert {"serve", "build", "monitor", "deploy-check", "feedback", "rollback"} <= set(targets)
    missing = [t for t in targets if t not in described]
    assert not missing, f"make help has no line for {missing}"
    assert len(alone.stdout.splitlines()) == len(described) + 1  # a header, one line per target


def test_slow_targets_say_their_time_on_each_cpu():
    header = make(REPO, "help", path=os.environ["PATH"]).stdout.splitlines()[0]
    assert "Intel Xeon with AVX-512" in header and "AMD EPYC with AVX2 only" in header, header
    described = help_lines()
    for target in SLOW:
        times = re.search(r"\[([^]|]*)\|([^]]*)\]$", described[target])
        assert times, f"make help: {target} gives no [Intel | AMD] times: {described[target]}"
        assert re.search(TIME, times.group(1)), f"{target}: no time on the Intel Xeon"
    for target in ("repro", "test"):  # measured on both
        intel, amd = re.search(r"\[([^]|]*)\|([^]]*)\]$", described[target]).groups()
        assert re.search(TIME, intel) and re.search(TIME, amd), described[target]


# (target, environment, the line it must stop with); the machine has no podman.
FRESH_CLONE_CASES = {
    "serve": ("serve", {}, f"make serve: {NO_CHAMPION}"),
    "build": ("build", {}, f"make build: {NO_CHAMPION}"),
    # A team server may hold a champion: then what is missing is the environment.
    "serve-team": (
        "serve",
        {"MLFLOW_TRACKING_URI": "http://mlflow.invalid:5000"},
        f"make serve: {NO_VENV}",
    ),
    "monitor": ("monitor", {}, f"make monitor: {NO_VENV}"),
    "feedback": ("feedback", {}, f"make feedback: {NO_VENV}"),
    "feedback-review": ("feedback-review", {}, f"make feedback-review: {NO_VENV}"),
    "rollback": ("rollback", {}, f"make rollback: {NO_VENV}"),
    "deploy-check": ("deploy-check", {}, "make deploy-check: podman is not installed"),
}


@pytest.mark.parametrize("case", FRESH_CLONE_CASES, ids=str)
def test_a_fresh_clone_gets_one_line_saying_what_to_run_first(case, tmp_path):
    target, env, expected = FRESH_CLONE_CASES[case]
    clone = fresh_clone(tmp_path)
    done = make(clone, target, path=machine_path(tmp_path, FRESH_MACHINE), **env)
    assert done.returncode != 0, done.stdout
    ours = [line for line in done.stderr.splitlines() if not line.startswith("make: ***")]
    assert len(ours) == 1 and ours[0].startswith(expected), done.stderr
    assert done.stdout == "", done.stdout  # stopped before any recipe line ran
    assert sorted(p.name for p in clone.iterdir()) == ["Makefile", "scripts"]  # nothing installed


def test_monitor_with_the_environment_but_no_prepared_data_says_how_to_get_it(tmp_path):
    clone = fresh_clone(tmp_path)
    path = machine_path(tmp_path, FRESH_MACHINE, Path(sys.executable).parent)
    done = make(clone, "monitor", path=path)
    assert done.returncode != 0
    assert "make monitor: no data/prepared/ yet: run `dvc repro prepare` first" in done.stderr
    assert "Traceback" not in done.stderr


def lock_pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([\w.-]+)==(\S+)", path.read_text(), flags=re.M))


def test_setup_installs_no_cuda_wheels_and_the_gpu_lock_adds_only_them():
    main, gpu = lock_pins(REPO / "requirements.lock"), lock_pins(REPO / "requirements-gpu.lock")
    cuda = [
        re.match(r"[\w.-]+", req).group(0).lower()
        for req in importlib.metadata.requires("tensorflow") or []
        if 'extra == "and-cuda"' in req
    ]
    assert len(cuda) >= 5, "tensorflow's and-cuda extra names no CUDA packages"
    assert not [name for name in cuda if name in main], "CUDA wheels in requirements.lock"
    assert set(cuda) <= set(gpu), "requirements-gpu.lock lacks CUDA packages"
    assert {k: v for k, v in gpu.items() if k in main} == main  # the same versions, all of them
    assert set(gpu) - set(main) == set(cuda)


def test_the_locks_are_what_make_lock_compiles(tmp_path):
    """Each lock's header is the command `make lock` runs, so the Makefile and the locks agree."""
    done = make(REPO, "-n", "lock", f"TOOLS={tmp_path}", path=os.environ["PATH"])
    assert done.returncode == 0, done.stderr
    commands = [
        line.split("/bin/uv ", 1)[1] for line in done.stdout.splitlines() if "/bin/uv " in line
    ]
    for lock in ("requirements.lock", "requirements-serve.lock", "requirements-gpu.lock"):
        header = (REPO / lock).read_text().splitlines()[1].removeprefix("#").strip()
        assert header.removeprefix("uv ") in commands, f"{lock}: {header!r} not in {commands}"
    assert not any("--all-extras" in c for c in commands)


def test_setup_syncs_the_lock_it_is_given(tmp_path):
    venv = tmp_path / "venv"
    done = make(
        REPO, "-n", "setup", f"VENV={venv}", "LOCK=requirements-gpu.lock", path=os.environ["PATH"]
    )
    assert done.returncode == 0, done.stderr
    assert re.search(
        rf"uv pip sync --compile-bytecode --python {venv}/bin/python requirements-gpu.lock$",
        done.stdout,
        flags=re.M,
    ), done.stdout


def test_monitor_without_records_says_where_they_come_from_and_goes_on(tmp_path):
    """Only a hint: a report on no records is still a report (insufficient data) for Prometheus."""
    clone = fresh_clone(tmp_path)
    shutil.copy2(REPO / "params.yaml", clone / "params.yaml")
    path = machine_path(tmp_path, FRESH_MACHINE, Path(sys.executable).parent)
    check = ["scripts/first-run.sh", "monitor", "records"]
    env = {**os.environ, "PATH": path}
    env.pop("FASHION_MNIST_MONITORING_DIR", None)
    none = subprocess.run(check, cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert none.returncode == 0, none.stderr
    assert none.stderr.startswith(
        "make monitor: no prediction records in monitoring/ yet: run `make serve`"
    )
    records = clone / "monitoring"
    records.mkdir()
    (records / "predictions-2026-12-01-host-1.jsonl").write_text("")
    some = subprocess.run(check, cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert (some.returncode, some.stderr) == (0, "")
