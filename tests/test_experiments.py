"""Experiments the DVC way, in a temporary clone on a tiny subset, with the default MLflow store.

A committed baseline plus two experiments queued and run at once (`dvc queue start -j 2`):
every commit and experiment carries its metrics and plot data, `dvc exp show`, `dvc metrics diff`
and `dvc plots diff` compare them, each experiment is one MLflow run named after it, and the
best one is promoted with `dvc exp apply` + `dvc repro` without retraining.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, SMALL_RUN, base_env, copy_workspace, run, set_params
from mlflow import MlflowClient

from pipeline.core.params import load_params

pytestmark = pytest.mark.e2e

DVC = str(BIN / "dvc")
# Two learning rates, run at once: their registers overlap on one local store (two are enough for
# that, and each experiment costs a minute or more of the suite's time on a 2-CPU machine).
EXPERIMENTS = {"lr-low": 0.001, "lr-high": 0.004}
KEY_METRICS = ("best_val_accuracy", "best_val_loss", "test_accuracy", "test_macro_f1")


def readme_command(prefix: str) -> list[str]:
    """The README's command line that starts with `prefix`, split like a shell would."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith(prefix):
            return shlex.split(line.split("  #", 1)[0])
    raise AssertionError(f"README.md has no line starting with {prefix!r}")


def wait_for_queue(ws: Path, env: dict, timeout: float = 900) -> str:
    """Poll `dvc queue status` until nothing is queued or running; returns the last status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run([DVC, "queue", "status"], ws, env).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        time.sleep(5)
    raise AssertionError(f"queue still busy after {timeout} s:\n{status}")


def revisions(ws: Path, env: dict) -> dict[str, dict]:
    """`dvc exp show --json` as {"baseline" or experiment name: its data (params, metrics...)}."""
    shown = json.loads(run([DVC, "exp", "show", "--json"], ws, env).stdout)
    (commit,) = [r for r in shown if r["rev"] != "workspace"]
    rows = {"baseline": commit["data"]}
    rows |= {e["name"]: e["revs"][0]["data"] for e in commit.get("experiments") or []}
    return rows


def metric(data: dict, file: str, key: str) -> object:
    return data["metrics"][file]["data"][key]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    ws = copy_workspace(tmp_path_factory.mktemp("sweep"))
    set_params(ws, **{**SMALL_RUN, "train.epochs": 1})
    env = base_env(BENTOML_HOME=str(ws.parent / "bentoml"))  # default MLflow store: ws/mlflow.db
    run([DVC, "repro"], ws, env)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    run([*git, "add", "-A"], ws, env)
    run([*git, "commit", "-qm", "baseline"], ws, env)
    for name, lr in EXPERIMENTS.items():
        run([DVC, "exp", "run", "--queue", "-n", name, "-S", f"train.learning_rate={lr}"], ws, env)
    # Not through `run`: the queue's worker daemons inherit the command's stdout and stderr, and a
    # worker that lingers after the queue is empty would keep captured pipes open (seen: the call
    # then waits for its timeout). A log file is held harmlessly.
    with (ws.parent / "queue-start.log").open("w") as log:
        started = subprocess.run(
            [DVC, "queue", "start", "-j", "2"],
            cwd=ws,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    assert started.returncode == 0, (ws.parent / "queue-start.log").read_text()
    status = wait_for_queue(ws, env)
    assert status.count("Success") == len(EXPERIMENTS), status
    return ws, env


def test_every_revision_has_numeric_metrics(sweep):
    ws, env = sweep
    rows = revisions(ws, env)
    assert set(rows) == {"baseline", *EXPERIMENTS}
    params_seen = {}
    for name, data in rows.items():
        metrics = {k: v for f in data["metrics"].values() for k, v in f["data"].items()}
        for key in (*KEY_METRICS, "train_seconds", "param_count", "best_epoch"):
            assert isinstance(metrics.get(key), int | float), f"{name}: {key} = {metrics.get(key)}"
        assert 0 < metrics["best_val_accuracy"] <= 1 and 0 < metrics["test_accuracy"] <= 1
        params_seen[name] = data["params"]["params.yaml"]["data"]["train"]["learning_rate"]
    baseline = load_params(REPO / "params.yaml").train.learning_rate
    assert params_seen == {"baseline": baseline, **EXPERIMENTS}


def test_metrics_and_plots_diff_load_both_experiments(sweep):
    ws, env = sweep
    a, b = list(EXPERIMENTS)[:2]
    # --all: two tiny-subset runs may tie on a metric, and diff leaves unchanged ones out.
    diff = run([DVC, "metrics", "diff", a, b, "--all", "--json"], ws, env)
    assert "failed to load" not in diff.stderr
    changes = {k: v for f in json.loads(diff.stdout).values() for k, v in f.items()}
    for key in KEY_METRICS:
        assert isinstance(changes[key]["old"], float) and isinstance(changes[key]["new"], float)
    plots = run([DVC, "plots", "diff", a, b, "--json"], ws, env)
    assert "failed to load" not in plots.stderr
    data = json.loads(plots.stdout)["data"]
    # Learning curves on the same axes, per-class scores side by side: one plot, both revisions.
    for name in ("accuracy", "loss", "reports/eval/per_class.csv"):
        (plot,) = data[name]
        assert plot["revisions"] == [a, b], name
        revs = {row["rev"] for row in plot["content"]["data"]["values"]}
        assert revs == {a, b}, name
    per_class = data["reports/eval/per_class.csv"][0]["content"]
    assert per_class["encoding"]["yOffset"]["field"] == "rev"  # bars grouped per class
    assert len(per_class["data"]["values"]) == 20


@pytest.mark.parametrize(
    ("prefix", "columns"),
    [
        # the sweep's table, and the tour's
        ("dvc exp show --only-changed", ("train.learning_rate", "best_val_accuracy")),
        ("  dvc exp show --drop", ("best_val_accuracy", "test_accuracy", "train.epochs")),
    ],
)
def test_readme_experiment_tables_fit_in_120_columns(sweep, prefix, columns):
    ws, env = sweep
    cmd = readme_command(prefix)
    table = run(cmd, ws, {**env, "COLUMNS": "120"}).stdout
    lines = table.rstrip().splitlines()
    assert max(len(line) for line in lines) <= 120, table
    assert "…" not in table, table  # nothing cut
    header = lines[1]
    for column in (*columns, "test_accuracy"):
        assert column in header, table
    for name in EXPERIMENTS:
        assert f"[{name}]" in table


def test_plain_exp_show_compares_params_not_data_sources(sweep):
    """Every key of params.yaml is a `dvc exp show` column: where the data is downloaded from and
    its checksums are not among them (they cannot change the data; fetch's code checks them)."""
    ws, env = sweep
    table = list(csv.reader(io.StringIO(run([DVC, "exp", "show", "--csv"], ws, env).stdout)))
    header, cells = table[0], [cell for row in table[1:] for cell in row]
    assert "train.learning_rate" in header and "model.conv_blocks" in header
    assert not [
        c for c in header if c.startswith("fetch.") and "timeout" not in c and "retr" not in c
    ]
    assert not [c for c in cells if "://" in c or re.fullmatch(r"[0-9a-f]{64}", c)]


def test_each_experiment_is_one_finished_mlflow_run_named_after_it(sweep):
    ws, env = sweep
    rows = revisions(ws, env)
    with sqlite3.connect(ws / "mlflow.db") as db:
        runs = db.execute(
            "select r.run_uuid, r.name, r.status, t.value from runs r join tags t "
            "on t.run_uuid = r.run_uuid and t.key = 'dvc_exp_name' where t.value != ''"
        ).fetchall()
    by_exp: dict[str, list] = {}
    for run_id, run_name, status, exp_name in runs:
        by_exp.setdefault(exp_name, []).append((run_id, run_name, status))
    assert set(by_exp) == set(EXPERIMENTS)
    for name in EXPERIMENTS:
        ((run_id, run_name, status),) = by_exp[name]
        assert (run_name, status) == (name, "FINISHED")
        # `dvc exp show` -> the MLflow run, and the run's name -> the experiment.
        assert metric(rows[name], "reports/train/run.json", "mlflow_run_id") == run_id


def test_overlapping_registers_leave_the_best_run_champion(sweep):
    """The experiments' registers ran two at a time (`-j 2`) on one MLflow store: none failed,
    and `@champion` is the run with the best validation accuracy of all."""
    ws, env = sweep
    for name in EXPERIMENTS:
        log = run([DVC, "queue", "logs", name], ws, env).stdout
        assert re.search(r"^register: (promoted|kept): ", log, re.M), log[-3000:]
    rows = revisions(ws, env)
    val = {
        metric(data, "reports/train/run.json", "mlflow_run_id"): metric(
            data, "reports/train/metrics.json", "best_val_accuracy"
        )
        for data in rows.values()
    }
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert val[champion.run_id] == max(val.values()), (champion.run_id, val)
    # ...and the BentoML store the registers shared serves it.
    store = ws.parent / "bentoml" / "models" / "fashion-mnist-cnn"
    latest = yaml.safe_load((store / (store / "latest").read_text() / "model.yaml").read_text())
    assert latest["labels"]["mlflow_model_version"] == str(champion.version)
    assert latest["labels"]["mlflow_run_id"] == champion.run_id


def test_apply_the_best_then_repro_retrains_nothing(sweep):
    ws, env = sweep
    rows = revisions(ws, env)
    val = {
        name: metric(rows[name], "reports/train/metrics.json", "best_val_accuracy")
        for name in EXPERIMENTS
    }
    best = max(val, key=val.get)
    run([DVC, "exp", "apply", best], ws, env)
    out = run([DVC, "repro"], ws, env).stdout
    assert re.findall(r"Running stage '(\w+)'", out) == ["feedback", "register"], out
    applied = json.loads((ws / "reports" / "train" / "metrics.json").read_text())
    assert applied["best_val_accuracy"] == val[best]
    branch = f"{best}-branch"
    run([DVC, "exp", "branch", best, branch], ws, env)
    assert branch in run(["git", "branch", "--list", branch], ws, env).stdout
