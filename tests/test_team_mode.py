"""Team mode: a shared `mlflow server` with MLflow's own authentication on a real PostgreSQL,
its artifacts on an S3 API (moto's server mode), and DVC remotes (a directory, the S3 API).

Past 300 lines: PostgreSQL, the S3 API and the authenticated server are fixtures of this file only.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import boto3
import pytest
import requests
from conftest import (
    BIN,
    SMALL_RUN,
    base_env,
    copy_workspace,
    free_port,
    run,
    set_params,
    start_mlflow,
    start_server,
    stop,
)
from mlflow.tracking import MlflowClient

from pipeline.shared.tracking import CREDENTIALS

pytestmark = pytest.mark.e2e

DVC = str(BIN / "dvc")
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; Debian's package creates the `postgres` user.
    if os.geteuid() != 0:
        return cmd
    # runuser is in /usr/sbin, which a PATH need not hold (a user's PATH, or one set by hand).
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
    assert runuser, "running as root, and no runuser (util-linux) to start postgres as `postgres`"
    return [runuser, "-u", "postgres", "--", *cmd]


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


ADMIN = ("admin", "admin-password-1")  # MLflow's basic auth wants 12 characters or more
USERS = {"trainer": "trainer-password-1", "viewer": "viewer-password-1"}
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # moto takes any
BUCKETS = ("mlflow-artifacts", "dvc-remote")


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> str:
    """A local S3 API (moto's server mode) on a free loopback port with the buckets: its URL."""
    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    proc = start_server(cmd, root, base_env(**S3_KEYS), root / "moto.log", f"{url}/moto-api/", 60)
    client = s3_client(url)
    for bucket in BUCKETS:
        client.create_bucket(Bucket=bucket)
    yield url
    stop(proc)


def s3_client(url: str):
    """boto3's client of the S3 API at `url`, with S3_KEYS as its credentials."""
    keys = {key.lower(): value for key, value in S3_KEYS.items()}  # aws_access_key_id=...
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", **keys)


def s3_keys(url: str, bucket: str) -> list[str]:
    pages = s3_client(url).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def shared_tracking(postgres, s3, tmp_path_factory) -> str:
    """`mlflow server --app-name basic-auth` on PostgreSQL, artifacts on the S3 API, users
    `trainer` and `viewer` (default permission READ: the viewer may read everything, change
    nothing of what the trainer made)."""
    root = tmp_path_factory.mktemp("shared-mlflow")
    config = root / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    proc, url = start_mlflow(
        root,
        postgres,
        "s3://mlflow-artifacts/mlflow",
        ("--app-name", "basic-auth"),
        MLFLOW_AUTH_CONFIG_PATH=str(config),
        MLFLOW_FLASK_SERVER_SECRET_KEY="test-secret-key",
        MLFLOW_S3_ENDPOINT_URL=s3,
        **S3_KEYS,
    )
    for user, password in USERS.items():
        created = requests.post(
            f"{url}/api/2.0/mlflow/users/create",
            json={"username": user, "password": password},
            auth=ADMIN,
            timeout=30,
        )
        assert created.status_code == 200, created.text
    yield url
    stop(proc)


def as_user(user: str | None, password: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a process run by `user` (None: no credentials at all)."""
    env = base_env(**extra)
    for key in CREDENTIALS:
        env.pop(key, None)
    if user is not None:
        env |= {CREDENTIALS[0]: user, CREDENTIALS[1]: password or USERS[user]}
    return env


@pytest.fixture
def admin(shared_tracking, monkeypatch) -> MlflowClient:
    monkeypatch.setenv(CREDENTIALS[0], ADMIN[0])
    monkeypatch.setenv(CREDENTIALS[1], ADMIN[1])
    return MlflowClient(tracking_uri=shared_tracking, registry_uri=shared_tracking)


@pytest.fixture(scope="module")
def team_run(shared_tracking, tmp_path_factory) -> tuple[Path, dict, str]:
    """Two experiments run by `trainer`: (workspace, its environment, their output)."""
    ws = copy_workspace(tmp_path_factory.mktemp("team"))
    set_params(ws, **SMALL_RUN)
    env = as_user("trainer", MLFLOW_TRACKING_URI=shared_tracking)
    env["BENTOML_HOME"] = str(ws.parent / "bentoml")
    output = ""
    for name, epochs in (("one-epoch", 1), ("two-epochs", 2)):
        proc = run([DVC, "exp", "run", "-n", name, "-S", f"train.epochs={epochs}"], ws, env)
        output += proc.stdout + proc.stderr
    return ws, env, output


def test_a_team_server_with_auth_and_s3_promotes_the_better_run(team_run, s3, admin):
    ws, _, output = team_run
    experiment = admin.get_experiment_by_name("fashion-mnist-cnn")
    runs = admin.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["dvc_exp_name"] for r in runs) == ["one-epoch", "two-epochs"]
    best = max(runs, key=lambda r: r.data.metrics["best_val_accuracy"])
    champion = admin.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert champion.run_id == best.info.run_id
    decision = json.loads((ws / "reports" / "register" / "champion.json").read_text())
    assert decision["candidate"]["run_id"] == best.info.run_id
    assert decision["champion"]["version"] == champion.version
    # Every artifact went through the server to the S3 API: the runs' models, the promoted exports.
    keys = s3_keys(s3, "mlflow-artifacts")
    exports = champion.tags["exports_dir"]
    assert any(k.endswith(f"{best.info.run_id}/artifacts/{exports}/model.onnx") for k in keys)
    assert sum(k.endswith("/data/model.keras") for k in keys) >= len(runs)
    # The credentials came from the environment and went nowhere else.
    password = USERS["trainer"]
    stored = [output, (ws / "params.yaml").read_text(), (ws / "dvc.lock").read_text()]
    stored += [p.read_text() for p in (ws / "reports").rglob("*.json")]
    for r in runs:
        stored += [json.dumps(r.data.params), json.dumps(r.data.tags)]
    for v in admin.search_model_versions("name='fashion-mnist-cnn'"):
        stored += [json.dumps(v.tags), v.description or ""]
    assert not [text for text in stored if password in text]


def test_wrong_or_missing_credentials_fail_fast_and_create_nothing(
    team_run, shared_tracking, admin, tmp_path
):
    ws, _, _ = team_run
    experiment = admin.get_experiment_by_name("fashion-mnist-cnn")
    before = len(admin.search_runs([experiment.experiment_id]))
    train = [str(BIN / "python"), "-m", "pipeline.train"]  # data and sources: the defaults
    train += ["--model", str(tmp_path / "model.keras"), "--history", str(tmp_path / "history.csv")]
    train += ["--metrics", str(tmp_path / "metrics.json"), "--run", str(tmp_path / "run.json")]
    serve = [str(BIN / "python"), "-m", "pipeline.register", "--import-only"]
    for user, password, cmd in (
        ("trainer", "not-the-password", train),
        ("trainer", "not-the-password", serve),
        (None, None, serve),
    ):
        env = as_user(user, password, MLFLOW_TRACKING_URI=shared_tracking)
        proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0, proc.stdout
        assert f"MLflow tracking server {shared_tracking} refused the credentials" in proc.stderr
        assert "HTTP 401" in proc.stderr and "MLFLOW_TRACKING_PASSWORD" in proc.stderr
        assert ("user 'trainer'" if user else "MLFLOW_TRACKING_USERNAME is not set") in proc.stderr
        assert "Traceback" not in proc.stderr
    assert len(admin.search_runs([experiment.experiment_id])) == before
    assert not (tmp_path / "run.json").exists()


def test_a_read_only_user_can_serve_but_not_promote(team_run, shared_tracking, admin, tmp_path):
    ws, _, _ = team_run
    name = "fashion-mnist-cnn"
    env = as_user("viewer", MLFLOW_TRACKING_URI=shared_tracking, BENTOML_HOME=str(tmp_path))
    champion = admin.get_model_version_by_alias(name, "champion")
    # `make serve`'s import: reading is all it needs.
    out = run([str(BIN / "python"), "-m", "pipeline.register", "--import-only"], ws, env).stdout
    assert f"imported the champion (models:/{name}/{champion.version})" in out
    # With no champion, register would promote the best run: the viewer may not, and fails
    # before exporting anything, having changed nothing.
    admin.delete_registered_model_alias(name, "champion")
    try:
        versions = admin.search_model_versions(f"name='{name}'")
        tags = admin.get_registered_model(name).tags
        proc = subprocess.run(
            [str(BIN / "python"), "-m", "pipeline.register", "--out", str(tmp_path / "c.json")],
            cwd=ws,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode != 0, proc.stdout
        message = proc.stderr
        assert f"MLflow tracking server {shared_tracking} denied user 'viewer'" in message
        assert "HTTP 403" in message and "EDIT permission" in message
        assert "Traceback" not in proc.stderr and "step registered" not in proc.stderr
        assert admin.search_model_versions(f"name='{name}'") == versions
        assert admin.get_registered_model(name).tags == tags
        assert not (tmp_path / "c.json").exists()
    finally:
        admin.set_registered_model_alias(name, "champion", champion.version)


@pytest.mark.parametrize("remote", ["local", "s3"])
def test_dvc_push_pull_round_trip(remote, pipeline_run, s3, tmp_path):
    """The default remote (a directory), and one on the S3 API (dvc-s3)."""
    env = base_env(**S3_KEYS)
    if remote == "local":
        url = str(tmp_path / "remote")
        run([DVC, "remote", "modify", "--local", "local", "url", url], pipeline_run, env)
        use = []
    else:
        prefix = f"store-{tmp_path.name}"
        run(
            [DVC, "remote", "add", "--local", "-f", "s3", f"s3://dvc-remote/{prefix}"],
            pipeline_run,
            env,
        )
        run([DVC, "remote", "modify", "--local", "s3", "endpointurl", s3], pipeline_run, env)
        use = ["-r", "s3"]
    pushed = run([DVC, "push", *use], pipeline_run, env)
    assert "pushed" in pushed.stdout
    if remote == "s3":
        assert any(k.startswith(f"{prefix}/files/md5/") for k in s3_keys(s3, "dvc-remote"))
    cached_outputs = ["data", "models/model.keras", "reports/eval/predictions.csv"]
    before = {
        p: (pipeline_run / p).stat().st_size
        for p in ("models/model.keras", "data/prepared/train.npz")
    }
    shutil.rmtree(pipeline_run / ".dvc" / "cache")
    for rel in cached_outputs:
        path = pipeline_run / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    pulled = run([DVC, "pull", *use], pipeline_run, env)
    assert "fetched" in pulled.stdout or "added" in pulled.stdout
    assert {p: (pipeline_run / p).stat().st_size for p in before} == before
    status = run([DVC, "status"], pipeline_run, env)
    # Everything pulled is up to date; feedback and register are listed because they always run.
    expected = ["feedback:", "always", "changed", "register:", "always", "changed"]
    assert status.stdout.split() == expected, status.stdout
