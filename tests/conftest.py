"""Shared fixtures: real servers and a real pipeline run, started once per test session.

Heavy fixtures are session-scoped because every process that imports TensorFlow costs seconds:
one small `dvc repro` (2,000 training and 2,000 test images, 2 epochs) feeds the e2e, register and service tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from harness.servers import free_port, start_server, stop, with_this_python

# Test modules import helpers from these fixture modules before pytest_plugins loads them.
pytest.register_assert_rewrite("browser_fixtures", "register_fixtures", "service_fixtures")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def base_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: this venv first on PATH, quiet TensorFlow."""
    env = with_this_python(dict(os.environ))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # Every dvc command otherwise forks a daemon that tries to send usage analytics (no answer here).
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def copy_workspace(dest: Path) -> Path:
    """Copy the working tree (tracked and untracked, not ignored files) into a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "workspace copy"], cwd=dest, check=True)
    return dest


def set_params(workspace: Path, **overrides: object) -> None:
    """Override params.yaml keys given as 'section.key' (dots), e.g. {'train.epochs': 1}."""
    path = workspace / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


# What a stock Debian or Ubuntu machine has besides a python3: a shell, make, coreutils, git, curl.
BASICS = (
    "bash",
    "sh",
    "env",
    "make",
    "dirname",
    "mkdir",
    "rm",
    "ln",
    "cat",
    "touch",
    "git",
    "curl",
)
# The features the drift report compares, as its summary names them.
DRIFT_FEATURES = {
    "pixel_mean",
    "pixel_std",
    "bright_fraction",
    "log2_aspect",
    "confidence",
    "predicted_class",
}
SMALL_RUN = {
    "prepare.max_train_samples": 2000,
    "prepare.max_test_samples": 2000,
    "train.epochs": 2,
    "train.batch_size": 32,
    "train.warmup_epochs": 0,
    "register.min_accuracy": 0.5,
}


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    """Poll `condition` until it holds; fail saying `what` never happened within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"within {seconds} s, never: {what}"
        time.sleep(0.05)


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it exits non-zero."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def start_mlflow(
    root: Path,
    backend_store_uri: str,
    artifacts: str | None = None,
    extra: tuple[str, ...] = (),
    **env: str,
) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on a free loopback port, artifacts proxied to `artifacts` (default:
    root/artifacts); `extra`: more arguments; `env`: more environment variables."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", backend_store_uri]
    cmd += ["--artifacts-destination", artifacts or str(root / "artifacts")]
    cmd += ["--workers", "1", *extra]
    url = f"http://127.0.0.1:{port}"
    # MLflow 3's job runner (GenAI jobs, trace rollups) starts ~8 huey consumer processes that
    # take CPU from the suite; this project uses none of it.
    env = base_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **env)
    return start_server(cmd, root, env, root / "server.log", f"{url}/health", 180), url


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` with a sqlite backend, for the pipeline runs of the suite."""
    root = tmp_path_factory.mktemp("mlflow")
    proc, url = start_mlflow(root, f"sqlite:///{root / 'mlflow.db'}")
    yield url
    stop(proc)


# FASHION_MNIST_WORKSPACE=<dir>: a workspace where `make repro` ran on the default params (its
# mlflow.db, the BentoML store of the caller's BENTOML_HOME): the session serves its champion instead
# of a small run's. For the page's tests (tests/test_ui.py, tests/test_lesson.py: docs/ui.md's
# screenshots of the default champion); the other service and e2e tests change their workspace.
WORKSPACE = os.environ.get("FASHION_MNIST_WORKSPACE")


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private BentoML store, so tests never touch the user's ~/bentoml (with
    FASHION_MNIST_WORKSPACE: the caller's BENTOML_HOME, that workspace's store)."""
    if WORKSPACE:
        return Path(os.environ.get("BENTOML_HOME", "~/bentoml")).expanduser()
    return tmp_path_factory.mktemp("bentoml_home")


@pytest.fixture(scope="session")
def pipeline_env(request: pytest.FixtureRequest, bentoml_home: Path) -> dict[str, str]:
    if WORKSPACE:
        return base_env(BENTOML_HOME=str(bentoml_home))
    uri = request.getfixturevalue("mlflow_server")
    return base_env(MLFLOW_TRACKING_URI=uri, BENTOML_HOME=str(bentoml_home))


@pytest.fixture(scope="session")
def prepared_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace copy with SMALL_RUN params where only fetch and prepare ran: for tests that run
    the train stage themselves (with their own --params file and output paths; do not modify)."""
    ws = copy_workspace(tmp_path_factory.mktemp("prepared"))
    set_params(ws, **SMALL_RUN)
    run([str(BIN / "dvc"), "repro", "prepare"], ws, base_env())
    return ws


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory, pipeline_env: dict) -> Path:
    """A workspace copy where the whole pipeline ran once (`dvc repro`) on a small subset (or
    FASHION_MNIST_WORKSPACE)."""
    if WORKSPACE:
        ws = Path(WORKSPACE).resolve()
        if not (ws / "reports" / "register" / "champion.json").exists():
            pytest.fail(f"FASHION_MNIST_WORKSPACE={ws}: no champion there; run `make repro` in it")
        return ws
    ws = copy_workspace(tmp_path_factory.mktemp("pipeline"))
    set_params(ws, **SMALL_RUN)
    run([str(BIN / "dvc"), "repro"], ws, pipeline_env)
    return ws
