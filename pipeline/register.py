"""Stage `register`: promote the experiment's best run to the `@champion` model, if it earns it.

The candidate is the experiment's best finished run by test accuracy (all runs, not only the
last). The gate (`decide`): test accuracy >= `register.min_accuracy`, and not worse than the
current champion's by more than `register.max_regression` (with no champion, only the floor).
Before promoting, the candidate's model is loaded exactly as the service loads it
(service/inference.py) and must reproduce the evaluate stage's predictions on the first
`register.parity_samples` test images. Promotion registers a model version in the MLflow
registry, imports that version into the BentoML model store (with its lineage as labels and
metadata) and moves the `champion` alias, in that order; a candidate that fails anywhere leaves
the old champion untouched in both stores. models/champion.json records the decision and why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.dataset import CLASS_NAMES, Split, load_split
from pipeline.params import Params, RegisterParams, load_params
from pipeline.tracking import TrackingUnavailable, use_experiment

# Keep the stage's log readable: no download progress bars.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
ALIAS = "champion"
CONFIDENCE_TOLERANCE = 1e-4  # predictions.csv keeps 6 decimals; graph vs eager differ by ~1e-7


class RegisterError(RuntimeError):
    """The candidate cannot be promoted (e.g. failed parity); the message says why."""


def decide(
    candidate_acc: float, champion_acc: float | None, params: RegisterParams
) -> tuple[bool, str]:
    """The gate: (promote?, why). Pure, so every branch is unit-testable."""
    floor = params.min_accuracy
    if candidate_acc < floor:
        return (
            False,
            f"test accuracy {candidate_acc:.4f} is below the floor min_accuracy={floor:.4f}",
        )
    if champion_acc is None:
        return (
            True,
            f"no champion yet; test accuracy {candidate_acc:.4f} >= min_accuracy={floor:.4f}",
        )
    drop = champion_acc - candidate_acc
    if drop > params.max_regression + 1e-12:
        return False, (
            f"test accuracy {candidate_acc:.4f} is {drop:.4f} below the champion's "
            f"{champion_acc:.4f}, more than max_regression={params.max_regression:.4f}"
        )
    relation = "above" if drop < 0 else "within max_regression of"
    return True, (
        f"test accuracy {candidate_acc:.4f} >= min_accuracy={floor:.4f} and {relation} "
        f"the champion's {champion_acc:.4f}"
    )


def best_run(client: MlflowClient, experiment_id: str) -> mlflow.entities.Run | None:
    """The experiment's finished run with the highest test accuracy (oldest first on ties)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string="metrics.test_accuracy >= 0 and attributes.status = 'FINISHED'",
        order_by=["metrics.test_accuracy DESC", "attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0] if runs else None


def current_champion(
    client: MlflowClient, name: str
) -> mlflow.entities.model_registry.ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def logged_model_uri(run: mlflow.entities.Run) -> str:
    """models:/<model_id> of the Keras model `train` logged in this run (name "model")."""
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'model'",
        output_format="list",
    )
    if not models:
        raise RegisterError(f"run {run.info.run_id} has no logged model named 'model'")
    return f"models:/{models[0].model_id}"


def run_summary(run: mlflow.entities.Run) -> dict[str, Any]:
    tags = run.data.tags
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "model_uri": logged_model_uri(run),
        "test_accuracy": run.data.metrics["test_accuracy"],
        "git_commit": tags.get("git_commit", "unknown"),
        "data_hash": tags.get("data_hash", "unknown"),
    }


def champion_summary(
    client: MlflowClient, version: mlflow.entities.model_registry.ModelVersion
) -> dict[str, Any]:
    """The champion's identity and metrics, from its version tags (its run's metric as fallback)."""
    accuracy = version.tags.get("test_accuracy")
    if accuracy is None and version.run_id:
        accuracy = client.get_run(version.run_id).data.metrics.get("test_accuracy")
    return {
        "model_name": version.name,
        "version": version.version,
        "run_id": version.run_id,
        "test_accuracy": None if accuracy is None else float(accuracy),
        "git_commit": version.tags.get("git_commit", "unknown"),
        "data_hash": version.tags.get("data_hash", "unknown"),
        "bento_model": version.tags.get("bento_model"),
    }


def download_keras_file(model_uri: str, dest: Path) -> Path:
    """Download an MLflow Keras model and return the path of its .keras file."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"].get("keras")
    if flavor is None:
        raise RegisterError(f"{model_uri} is not a Keras model (no keras flavor in its MLmodel)")
    path = local / flavor.get("data", "data") / "model.keras"
    if not path.is_file():
        raise RegisterError(f"{model_uri} has no {path.relative_to(local)}")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parity_check(
    model_file: Path, predictions: pd.DataFrame, test: Split, samples: int
) -> dict[str, Any]:
    """Predict the first `samples` test images as the service does; they must match evaluate's."""
    from service.inference import Classifier  # TensorFlow: only when a candidate gets this far

    n = min(samples, len(test), len(predictions))
    expected = predictions.sort_values("index").iloc[:n]
    if not (expected["actual"].to_numpy() == np.array(CLASS_NAMES)[test.y[:n]]).all():
        raise RegisterError(
            "parity: predictions.csv was evaluated on other test data (labels differ)"
        )
    proba = Classifier(model_file).predict_proba(test.x[:n])
    predicted = proba.argmax(axis=1)
    mismatched = np.flatnonzero(predicted != expected["predicted_id"].to_numpy())
    if mismatched.size:
        raise RegisterError(
            f"parity: {mismatched.size} of {n} test images get another class than in evaluate "
            f"(first: image {int(mismatched[0])})"
        )
    diff = float(np.abs(proba.max(axis=1) - expected["confidence"].to_numpy()).max()) if n else 0.0
    if diff > CONFIDENCE_TOLERANCE:
        raise RegisterError(f"parity: confidences differ from evaluate's by up to {diff:.2e}")
    return {"samples": n, "max_confidence_diff": diff}


def promote(
    client: MlflowClient, params: Params, candidate: dict[str, Any], model_file: Path, workdir: Path
) -> dict[str, Any]:
    """Register a version, import it into BentoML, then move the alias. Undone on failure."""
    import bentoml

    from service.inference import MODEL_FILE

    name = params.mlflow.registered_model_name
    lineage = {k: str(candidate[k]) for k in ("run_id", "test_accuracy", "git_commit", "data_hash")}
    version = mlflow.register_model(candidate["model_uri"], name, tags=lineage)
    bento_tag = None
    try:
        # What is served must be what is registered: the version's file, identical to the checked one.
        registered = download_keras_file(
            f"models:/{name}/{version.version}", workdir / "registered"
        )
        if sha256(registered) != sha256(model_file):
            raise RegisterError(f"models:/{name}/{version.version} differs from the checked model")
        labels = {
            "mlflow_model_name": name,
            "mlflow_model_version": str(version.version),
            "mlflow_run_id": candidate["run_id"],
            "test_accuracy": f"{candidate['test_accuracy']:.4f}",
            "git_commit": candidate["git_commit"],
            "data_hash": candidate["data_hash"],
        }
        metadata = {**labels, "test_accuracy": float(candidate["test_accuracy"])}
        metadata |= {"class_names": list(CLASS_NAMES), "model_file": MODEL_FILE}
        with bentoml.models.create(
            params.register.bento_model_name, labels=labels, metadata=metadata
        ) as bm:
            shutil.copyfile(registered, bm.path_of(MODEL_FILE))
        bento_tag = str(bm.tag)
        client.set_model_version_tag(name, version.version, "bento_model", bento_tag)
        client.set_registered_model_alias(name, ALIAS, version.version)
    except BaseException:
        if bento_tag is not None:
            bentoml.models.delete(bento_tag)
        client.delete_model_version(name, version.version)
        raise
    return champion_summary(client, client.get_model_version(name, version.version))


def run(
    params: Params, metrics_path: Path, predictions_path: Path, data_dir: Path, run_path: Path
) -> dict[str, Any]:
    """Decide (and promote if warranted); returns the record written to champion.json."""
    experiment_id = use_experiment(params.mlflow.experiment_name)
    client = MlflowClient()
    pipeline_run = {
        "run_id": json.loads(run_path.read_text())["run_id"],
        "test_accuracy": json.loads(metrics_path.read_text())["test_accuracy"],
    }
    best = best_run(client, experiment_id)
    if best is None:
        raise RegisterError(f"experiment {params.mlflow.experiment_name!r} has no evaluated run")
    candidate = run_summary(best)
    version = current_champion(client, params.mlflow.registered_model_name)
    champion = champion_summary(client, version) if version else None
    record: dict[str, Any] = {
        "decision": "kept",
        "reason": "",
        "candidate": candidate,
        "champion": champion,
        "previous_champion": champion,
        "pipeline_run": pipeline_run,
        "gate": params.register.model_dump(include={"min_accuracy", "max_regression"}),
        "parity": None,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if champion and champion["run_id"] == candidate["run_id"]:
        record["reason"] = f"the best run is already the champion (version {champion['version']})"
        return record
    champion_acc = champion["test_accuracy"] if champion else None
    promote_it, record["reason"] = decide(candidate["test_accuracy"], champion_acc, params.register)
    if not promote_it:
        return record
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        workdir = Path(tmp)
        model_file = download_keras_file(candidate["model_uri"], workdir / "candidate")
        if candidate["run_id"] == pipeline_run["run_id"]:
            if abs(pipeline_run["test_accuracy"] - candidate["test_accuracy"]) > 1e-9:
                raise RegisterError(
                    f"{metrics_path} disagrees with MLflow on run {candidate['run_id']}"
                )
            predictions = pd.read_csv(predictions_path)
        else:  # an older run: evaluate logged its predictions to that run
            uri = f"runs:/{candidate['run_id']}/evaluation/predictions.csv"
            predictions = pd.read_csv(mlflow.artifacts.download_artifacts(uri, dst_path=tmp))
        record["parity"] = parity_check(
            model_file,
            predictions,
            load_split(data_dir / "test.npz"),
            params.register.parity_samples,
        )
        record["champion"] = promote(client, params, candidate, model_file, workdir)
    record["decision"] = "promoted"
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", type=Path, default=Path("reports/eval/metrics.json"))
    parser.add_argument("--predictions", type=Path, default=Path("reports/eval/predictions.csv"))
    parser.add_argument(
        "--data", type=Path, default=Path("data/prepared"), help="prepared .npz splits"
    )
    parser.add_argument("--run", type=Path, default=Path("models/run.json"), help="train's run id")
    parser.add_argument("--out", type=Path, default=Path("models/champion.json"))
    args = parser.parse_args()
    params = load_params(args.params)
    try:
        record = run(params, args.metrics, args.predictions, args.data, args.run)
    except (TrackingUnavailable, RegisterError) as err:
        sys.exit(f"register failed: {err}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    champion = record["champion"]
    where = (
        f"{champion['model_name']} v{champion['version']} ({champion['bento_model']})"
        if champion
        else "none"
    )
    print(f"register: {record['decision']}: {record['reason']}\nchampion: {where}")


if __name__ == "__main__":
    main()
