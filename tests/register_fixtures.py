"""Crafted MLflow runs and the register stage run on them, for the tests of promotion.

A test module loads them with `pytest_plugins = ["register_fixtures"]`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import BIN, run
from mlflow import MlflowClient

from pipeline.shared.dataset import Split, load_split, save_split


def register_cmd(*extra: str) -> list[str]:
    return [str(BIN / "python"), "-m", "pipeline.register", *extra]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bento_models(home: Path, name: str) -> dict[str, dict]:
    """The BentoML store's models called `name`: version -> model.yaml (labels, metadata...)."""
    root = home / "models" / name
    if not root.is_dir():
        return {}
    return {
        d.name: yaml.safe_load((d / "model.yaml").read_text()) for d in root.iterdir() if d.is_dir()
    }


def latest_version(home: Path, name: str) -> str | None:
    """The MLflow version the BentoML store's `<name>:latest` holds (None: no model)."""
    latest = home / "models" / name / "latest"
    if not latest.is_file():
        return None
    info = yaml.safe_load((latest.parent / latest.read_text().strip() / "model.yaml").read_text())
    return info["labels"]["mlflow_model_version"]


# Crafted runs: the pipeline's model ("base") or a copy whose class-0 bias is raised, so that it
# answers otherwise on many images ("shifted"), logged like `train` and `evaluate` do (model, its
# SHA-256, layer table, validation split hash, evaluation tables), with chosen validation and test
# accuracies; the predictions table is optionally tampered with, so the parity check must fail;
# a run left RUNNING is no candidate until the test ends it (a run that finishes later).
# Also written: disagree.npz, the validation and test images where the two models' classes
# differ, with each model's class (feedback slices on which one is right and the other wrong).
MAKE_RUNS = r"""
import json, os, sys, tempfile
from pathlib import Path
import keras, mlflow, numpy as np
from pipeline.shared.dataset import content_hash, load_split
from pipeline.evaluate import evaluate_predictions
from pipeline.core.inference import file_sha256
from pipeline.shared.keras_runtime import Classifier
from pipeline.shared.tracking import download_keras_file
from pipeline.training.model import network

mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
models = {"base": keras.saving.load_model("models/model.keras")}
models["shifted"] = keras.saving.load_model("models/model.keras")
bias = network(models["shifted"]).get_layer("probabilities").bias
bias.assign(bias.numpy() + np.eye(10, dtype="float32")[0] * 3.0)
data = Path(sys.argv[2])
test, val = load_split(data / "test.npz"), load_split(data / "val.npz")
val_hash = content_hash(val)
images = np.concatenate([val.x, test.x])
answers = {}
for kind, model in models.items():
    with tempfile.TemporaryDirectory() as tmp:  # as register will load it: from the saved file
        model.save(f"{tmp}/m.keras")
        answers[kind] = Classifier.from_file(f"{tmp}/m.keras").predict_proba(images).argmax(axis=1)
differ = answers["base"] != answers["shifted"]
np.savez(data / "disagree.npz", x=images[differ], base=answers["base"][differ],
         shifted=answers["shifted"][differ])
results = {k: evaluate_predictions(test.y, Classifier(m).predict_proba(test.x))
           for k, m in models.items()}
run_ids = {}
for spec in json.loads(sys.argv[1]):
    mlflow.set_experiment(spec["experiment"])
    model, result = models[spec["model"]], results[spec["model"]]
    tags = {"git_commit": "crafted", "data_hash": "crafted", "val_data_hash": val_hash}
    with mlflow.start_run(tags=tags) as active, tempfile.TemporaryDirectory() as tmp:
        info = mlflow.keras.log_model(model, name="model", pip_requirements=["tensorflow", "keras"])
        mlflow.set_tag("model_sha256", file_sha256(download_keras_file(info.model_uri, Path(tmp))))
        mlflow.log_text("conv_0 ... (crafted)", "layer_table.txt")
        logged = result.predictions.copy()
        if spec["tamper"]:
            logged["predicted_id"] = (logged["predicted_id"] + 1) % 10
        logged.to_csv(f"{tmp}/predictions.csv", index_label="index", float_format="%.6f")
        result.per_class.to_csv(f"{tmp}/per_class.csv", index=False)
        mlflow.log_artifact(f"{tmp}/predictions.csv", artifact_path="evaluation")
        mlflow.log_artifact(f"{tmp}/per_class.csv", artifact_path="evaluation")
        mlflow.log_metrics({"best_val_accuracy": spec["val"], "test_accuracy": spec["test"]})
    if spec["running"]:  # not a candidate until the test finishes it
        mlflow.MlflowClient().update_run(active.info.run_id, status="RUNNING")
    run_ids[spec["key"]] = active.info.run_id
print("RUNS=" + json.dumps(run_ids))
"""


# experiment: {run: (validation accuracy, test accuracy, tampered, left running[, model])}; the
# model is "base" unless named
SCENARIOS = {
    "floor": {"floor": (0.40, 0.95, False, False)},
    "first": {"first": (0.80, 0.80, False, False)},
    "parity": {"parity": (0.85, 0.85, True, False)},
    "worse": {"worse": (0.70, 0.80, False, False)},
    "better-test-worse-val": {"better-test-worse-val": (0.75, 0.99, False, False)},
    "better": {"better": (0.90, 0.60, False, False)},
    "remeasure": {"remeasure": (0.95, 0.80, False, False)},
    # overlapping registers: the better run finishes while the worse one's register promotes
    "race-first": {"worse": (0.80, 0.80, False, False), "better": (0.90, 0.80, False, True)},
    "race-last": {"worse": (0.80, 0.80, False, False), "better": (0.90, 0.80, False, True)},
    # registers killed at each step of promoting `new` over `old`
    "killed": {"old": (0.80, 0.80, False, False), "new": (0.90, 0.80, False, True)},
    # the gate's two sides, on a feedback slice where "base" is right and "shifted" wrong
    "fb-first": {"fb-first": (0.80, 0.80, False, False, "shifted")},
    "fb-both": {"fb-both": (0.85, 0.80, False, False, "base")},
    "fb-val": {"fb-val": (0.70, 0.80, False, False, "base")},
    "fb-slice": {"fb-slice": (0.90, 0.80, False, False, "shifted")},
    # a rollback: `new` finishes after `old` was promoted, replaces it, then is rolled back
    "rollback": {"old": (0.80, 0.80, False, False), "new": (0.90, 0.80, False, True)},
}
SPEC_FIELDS = ("val", "test", "tamper", "running", "model")


# The crafted runs are evaluated on the first 1,000 test images of the small run (all ten
# classes), and register runs on them with that test split: its parity checks cover every image of
# it, as always, in half the time (the promotion tests run over a dozen registers).
CRAFTED_TEST_IMAGES = 1000


def crafted_data(ws: Path) -> Path:
    """The prepared splits register reads for the crafted runs: the pipeline's validation split,
    and its first CRAFTED_TEST_IMAGES test images."""
    return ws.parent / "crafted-data"


@pytest.fixture(scope="session")
def crafted(pipeline_run: Path, pipeline_env: dict) -> dict[str, str]:
    """{"prefix": the experiments' prefix} and "<prefix>-<experiment>[/<run>]" -> run id (the
    run's own name is left out where it is the experiment's only run)."""
    prefix = f"reg-{uuid.uuid4().hex[:8]}"
    specs = [
        {
            "key": f"{prefix}-{experiment}" + ("" if name == experiment else f"/{name}"),
            "experiment": f"{prefix}-{experiment}",
            **dict(zip(SPEC_FIELDS, (*spec, "base")[: len(SPEC_FIELDS)], strict=True)),
        }
        for experiment, runs in SCENARIOS.items()
        for name, spec in runs.items()
    ]
    data = crafted_data(pipeline_run)
    data.mkdir()
    prepared = pipeline_run / "data" / "prepared"
    shutil.copyfile(prepared / "val.npz", data / "val.npz")
    test = load_split(prepared / "test.npz")
    save_split(Split(test.x[:CRAFTED_TEST_IMAGES], test.y[:CRAFTED_TEST_IMAGES]), data / "test.npz")
    proc = run(
        [str(BIN / "python"), "-c", MAKE_RUNS, json.dumps(specs), str(data)],
        pipeline_run,
        pipeline_env,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RUNS="))
    return {"prefix": prefix, **json.loads(line.removeprefix("RUNS="))}


def params_file(ws: Path, tmp: Path, experiment: str, model: str) -> Path:
    """The workspace's params with their own experiment and registered/BentoML model names."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["mlflow"] |= {"experiment_name": experiment, "registered_model_name": model}
    params["serve"]["bento_model_name"] = model
    path = tmp / f"params-{experiment}-{model}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def register_args(
    ws: Path, tmp: Path, experiment: str, model: str, data: Path | None = None, *extra: str
) -> tuple[list[str], Path]:
    """The stage's command with its own experiment and registered/BentoML model names, on the
    crafted data (or `data`), and the champion.json it writes."""
    out = tmp / f"champion-{experiment}-{uuid.uuid4().hex[:6]}.json"
    cmd = register_cmd("--params", str(params_file(ws, tmp, experiment, model)), "--out", str(out))
    return [*cmd, "--data", str(data or crafted_data(ws)), *extra], out


def rollback_args(ws: Path, tmp: Path, model: str, *args: str) -> tuple[list[str], Path]:
    """`python -m pipeline.rollback` on a registered model of crafted runs, and its champion.json."""
    out = tmp / f"rollback-{model}-{uuid.uuid4().hex[:6]}.json"
    cmd = [str(BIN / "python"), "-m", "pipeline.rollback", *args, "--out", str(out)]
    return [*cmd, "--params", str(params_file(ws, tmp, model, model))], out


def register(
    ws: Path,
    env: dict,
    tmp: Path,
    experiment: str,
    model: str,
    data: Path | None = None,
    *extra: str,
):
    """Run the stage on an experiment of crafted runs: (process, champion.json or None)."""
    return finished(ws, env, *register_args(ws, tmp, experiment, model, data, *extra))


def finished(ws: Path, env: dict, cmd: list[str], out: Path):
    """Run a command that writes a champion.json: (process, that record or None)."""
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    return proc, (json.loads(out.read_text()) if proc.returncode == 0 else None)


class Stopped:
    """A register (or `command`: (argv, its champion.json)) started with REGISTER_STOP_AT=<step>,
    waited for until it stops there; then resumed (`finish`) or killed (`kill`)."""

    def __init__(
        self,
        ws: Path,
        env: dict,
        tmp: Path,
        experiment: str,
        model: str,
        step: str,
        command: tuple[list[str], Path] | None = None,
    ):
        cmd, self.out = command or register_args(ws, tmp, experiment, model)
        self.log = tmp / f"register-{uuid.uuid4().hex[:6]}.log"
        self.step = step
        self.proc = subprocess.Popen(
            cmd,
            cwd=ws,
            env={**env, "REGISTER_STOP_AT": step},
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 600
        while not self.stopped():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(
                    f"register never stopped at step {step!r} (exit {self.proc.poll()}):\n"
                    + self.log.read_text()[-3000:]
                )
            time.sleep(0.2)

    def stopped(self) -> bool:
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] == "T"

    def finish(self) -> dict:
        """Resume it; its champion.json once it exits 0."""
        os.kill(self.proc.pid, signal.SIGCONT)
        code = self.proc.wait(timeout=600)
        assert code == 0, (
            f"register resumed at {self.step} exited {code}:\n" + self.log.read_text()[-3000:]
        )
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        """SIGKILL it where it stopped: no `except`, no `finally` runs."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        assert not self.out.exists(), "a killed register wrote champion.json"


def registry_state(client: MlflowClient, model: str) -> tuple[list[str], str | None]:
    """(all version numbers, the @champion's version) of a registered model."""
    versions = sorted(v.version for v in client.search_model_versions(f"name='{model}'"))
    try:
        alias = client.get_model_version_by_alias(model, "champion").version
    except mlflow.exceptions.MlflowException:
        alias = None
    return versions, alias
