"""Team mode: shared MLflow tracking on a real PostgreSQL server, and a DVC remote round trip."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import (
    BIN,
    SMALL_RUN,
    base_env,
    copy_workspace,
    free_port,
    run,
    set_params,
    start_mlflow,
    stop,
)
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e

DVC = str(BIN / "dvc")
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; Debian's package creates the `postgres` user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres() -> str:
    """A throwaway PostgreSQL server on a free loopback port (no system service): its URL."""
    if not PG_BIN:
        pytest.skip(
            "PostgreSQL server binaries not installed: run `make system-test` (apt-get install postgresql)"
        )
    pg = Path(PG_BIN[-1])
    # Outside pytest's 0700 base temp dir, so that the `postgres` user can reach it when we are root.
    root = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (root, sockets):
            shutil.chown(path, "postgres")
    subprocess.run(
        _as_postgres_user(
            [str(pg / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8"]
        ),
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        _as_postgres_user(
            [
                str(pg / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(sockets),
                "-c",
                "listen_addresses=127.0.0.1",
            ]
        ),
        stdout=(root / "postgres.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for _ in range(100):
        ready = subprocess.run(
            [str(pg / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        )
        if ready.returncode == 0:
            break
        subprocess.run(["sleep", "0.2"])
    subprocess.run(
        [str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
        check=True,
    )
    yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    stop(server)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_tracking(postgres, tmp_path_factory) -> str:
    """`mlflow server` with the PostgreSQL backend store and a separate artifact destination."""
    proc, url = start_mlflow(tmp_path_factory.mktemp("shared-mlflow"), postgres)
    yield url
    stop(proc)


def test_two_experiments_on_postgres_register_picks_the_better_validated(shared_tracking, tmp_path):
    ws = copy_workspace(tmp_path)
    set_params(ws, **SMALL_RUN)
    env = base_env(MLFLOW_TRACKING_URI=shared_tracking, BENTOML_HOME=str(tmp_path / "bentoml"))
    for name, epochs in (("one-epoch", 1), ("three-epochs", 3)):
        run([DVC, "exp", "run", "-n", name, "-S", f"train.epochs={epochs}"], ws, env)

    client = MlflowClient(tracking_uri=shared_tracking)
    experiment = client.get_experiment_by_name("fashion-mnist-cnn")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["dvc_exp_name"] for r in runs) == ["one-epoch", "three-epochs"]
    best = max(runs, key=lambda r: r.data.metrics["best_val_accuracy"])
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert champion.run_id == best.info.run_id
    decision = json.loads((ws / "reports" / "register" / "champion.json").read_text())
    assert decision["candidate"]["run_id"] == best.info.run_id


def test_dvc_push_pull_round_trip(pipeline_run, tmp_path):
    env = base_env()
    run(
        [DVC, "remote", "modify", "--local", "local", "url", str(tmp_path / "remote")],
        pipeline_run,
        env,
    )
    pushed = run([DVC, "push"], pipeline_run, env)
    assert "pushed" in pushed.stdout
    cached_outputs = ["data", "models/model.keras", "reports/eval/predictions.csv"]
    before = {
        p: (pipeline_run / p).stat().st_size
        for p in ("models/model.keras", "data/prepared/train.npz")
    }
    shutil.rmtree(pipeline_run / ".dvc" / "cache")
    for rel in cached_outputs:
        path = pipeline_run / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    pulled = run([DVC, "pull"], pipeline_run, env)
    assert "fetched" in pulled.stdout or "added" in pulled.stdout
    assert {p: (pipeline_run / p).stat().st_size for p in before} == before
    status = run([DVC, "status"], pipeline_run, env)
    # Everything pulled is up to date; register is listed only because it always runs.
    assert status.stdout.split() == ["register:", "always", "changed"], status.stdout
