"""Stage `register`: promote the experiment's best validated run to the `@champion` model, if it earns it.

Choosing uses validation data only; test accuracy is carried along and reported, never compared.
- Candidates are the experiment's finished, evaluated runs validated on the current validation
  split (tag `val_data_hash`): validation accuracies measured on other data are not comparable.
  The candidate is the one with the highest `best_val_accuracy` (oldest first on ties).
- The gate (`decide`): validation accuracy >= `register.min_accuracy`, and not worse than the
  current champion's by more than `register.max_regression` (with no champion, only the floor).
  A champion validated on other data is first re-measured on this validation split.
- Integrity: the candidate's logged model file must have the SHA-256 its run recorded (the file
  `evaluate` scored). It is exported to ONNX, the service's runtime (pipeline/export.py), and both
  runtimes must reproduce evaluate's predictions on every test image: the same class, with
  probabilities within 1e-4 (pipeline/inference.py). Its explainer export (the per-layer
  activations behind the service's /explain and /ui) must give the ONNX model's probabilities on
  every test image and Keras's activations on the test images it ships.

Promotion registers a model version (with a model card as its description), logs the checked ONNX
files to the run, imports all of them into the BentoML model store and moves the `champion` alias,
in that order, checking at each step that the bytes are still the same; a candidate that fails
anywhere leaves the old champion untouched in both stores. The decision and why go to
champion.json. Whatever was decided, the local BentoML store ends up serving the `@champion`
(`<serve.bento_model_name>:latest`): on a teammate's machine that shares the MLflow server, the
champion is imported from MLflow; `python -m pipeline.register --import-only` does just that
(`make serve` runs it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipeline.dataset import CLASS_NAMES, Split, content_hash, load_split
from pipeline.export import (
    EXPLAINER_JSON,
    EXPLAINER_ONNX,
    ExplainerExport,
    export_explainer,
    export_onnx,
)
from pipeline.inference import (
    MODEL_FILE,
    ONNX_FILE,
    Classifier,
    OnnxClassifier,
    file_sha256,
    in_chunks,
)
from pipeline.params import Params, RegisterParams, load_params
from pipeline.tracking import (
    ModelFileError,
    TrackingUnavailable,
    download_keras_file,
    use_experiment,
)

ALIAS = "champion"
# predictions.csv keeps 6 decimals; TensorFlow's graph vs eager differ by ~1e-7, ONNX Runtime's
# kernels from TensorFlow's by ~1e-6.
PROBABILITY_TOLERANCE = 1e-4
# The explainer's activations against Keras's, relative to the layer's largest activation.
ACTIVATION_TOLERANCE = 1e-3
ONNX_ARTIFACT = f"onnx/{ONNX_FILE}"  # where promotion logs the checked export in the run
# Every file of a served model: its SHA-256's key (a version tag, the champion summary's field) and
# where promotion logs it in the run (the .keras file is the registered model itself).
SHA256_KEYS = {
    MODEL_FILE: "model_sha256",
    ONNX_FILE: "onnx_sha256",
    EXPLAINER_ONNX: "explainer_onnx_sha256",
    EXPLAINER_JSON: "explainer_json_sha256",
}
ARTIFACTS = {
    ONNX_FILE: ONNX_ARTIFACT,
    EXPLAINER_ONNX: f"explainer/{EXPLAINER_ONNX}",
    EXPLAINER_JSON: f"explainer/{EXPLAINER_JSON}",
}


class RegisterError(RuntimeError):
    """The candidate cannot be promoted (e.g. failed parity); the message says why."""


def decide(
    candidate_acc: float, champion_acc: float | None, params: RegisterParams
) -> tuple[bool, str]:
    """The gate on validation accuracy: (promote?, why). Pure, so every branch is unit-testable."""
    floor = params.min_accuracy
    if candidate_acc < floor:
        return (
            False,
            f"validation accuracy {candidate_acc:.4f} is below the floor min_accuracy={floor:.4f}",
        )
    if champion_acc is None:
        return (
            True,
            f"no champion yet; validation accuracy {candidate_acc:.4f} >= min_accuracy={floor:.4f}",
        )
    drop = champion_acc - candidate_acc
    if drop > params.max_regression + 1e-12:
        return False, (
            f"validation accuracy {candidate_acc:.4f} is {drop:.4f} below the champion's "
            f"{champion_acc:.4f}, more than max_regression={params.max_regression:.4f}"
        )
    relation = "above" if drop < 0 else "within max_regression of"
    return True, (
        f"validation accuracy {candidate_acc:.4f} >= min_accuracy={floor:.4f} and {relation} "
        f"the champion's {champion_acc:.4f}"
    )


def best_run(client: MlflowClient, experiment_id: str, val_data_hash: str) -> Run | None:
    """The finished, evaluated run with the highest validation accuracy on this validation data."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            "metrics.best_val_accuracy >= 0 and metrics.test_accuracy >= 0 "
            f"and tags.val_data_hash = '{val_data_hash}' and attributes.status = 'FINISHED'"
        ),
        order_by=["metrics.best_val_accuracy DESC", "attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0] if runs else None


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as err:
        # No such model: RESOURCE_DOES_NOT_EXIST; a model whose alias was removed (a rollback
        # to "no champion"): INVALID_PARAMETER_VALUE "...alias champion not found".
        if err.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in err.message:
            return None
        raise


def logged_model_uri(run: Run) -> str:
    """models:/<model_id> of the Keras model `train` logged in this run (name "model")."""
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'model'",
        output_format="list",
    )
    if not models:
        raise RegisterError(f"run {run.info.run_id} has no logged model named 'model'")
    return f"models:/{models[0].model_id}"


def run_summary(run: Run) -> dict[str, Any]:
    tags, metrics = run.data.tags, run.data.metrics
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "model_uri": logged_model_uri(run),
        "val_accuracy": metrics["best_val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "val_data_hash": tags.get("val_data_hash", "unknown"),
        "model_sha256": tags.get("model_sha256", "unknown"),
        "git_commit": tags.get("git_commit", "unknown"),
        "data_hash": tags.get("data_hash", "unknown"),
    }


def champion_summary(client: MlflowClient, version: ModelVersion) -> dict[str, Any]:
    """The champion's identity and metrics, from its version tags (its run's as fallback)."""
    tags = dict(version.tags)
    if version.run_id and not {"val_accuracy", "val_data_hash"} <= tags.keys():
        run = client.get_run(version.run_id)  # a version registered by hand or by older code
        tags.setdefault("val_data_hash", run.data.tags.get("val_data_hash", "unknown"))
        for key, metric in (
            ("val_accuracy", "best_val_accuracy"),
            ("test_accuracy", "test_accuracy"),
        ):
            if key not in tags and metric in run.data.metrics:
                tags[key] = run.data.metrics[metric]

    def number(key: str) -> float | None:
        return None if tags.get(key) is None else float(tags[key])

    return {
        "model_name": version.name,
        "version": str(version.version),
        "run_id": version.run_id,
        "val_accuracy": number("val_accuracy"),
        "test_accuracy": number("test_accuracy"),
        "val_data_hash": tags.get("val_data_hash", "unknown"),
        "model_sha256": tags.get("model_sha256", "unknown"),
        "onnx_sha256": tags.get("onnx_sha256", "unknown"),
        "explainer_onnx_sha256": tags.get("explainer_onnx_sha256", "unknown"),
        "explainer_json_sha256": tags.get("explainer_json_sha256", "unknown"),
        "git_commit": tags.get("git_commit", "unknown"),
        "data_hash": tags.get("data_hash", "unknown"),
        "bento_model": tags.get("bento_model"),
    }


def accuracy(model_file: Path, split: Split) -> float:
    """Accuracy of a saved model on a split, through the one inference path."""
    import pipeline.quiet_tensorflow  # noqa: F401 (TensorFlow without its start-up noise)

    predicted = Classifier.from_file(model_file).predict_proba(split.x).argmax(axis=1)
    return float((predicted == split.y).mean())


def checked_download(model_uri: str, expected_sha256: str, dest: Path) -> Path:
    """The .keras file of an MLflow model, refused unless it has the expected SHA-256."""
    path = download_keras_file(model_uri, dest)
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise RegisterError(
            f"{model_uri}: model file sha256 {actual[:12]} is not the {expected_sha256[:12]} "
            "that training recorded and evaluate scored"
        )
    return path


def parity_check(
    model_file: Path, onnx_file: Path, predictions: pd.DataFrame, test: Split
) -> dict[str, Any]:
    """Both runtimes on every test image: they must give evaluate's classes and confidences."""
    expected = predictions.sort_values("index")
    if (
        len(expected) != len(test)
        or not (expected["actual"].to_numpy() == np.array(CLASS_NAMES)[test.y]).all()
    ):
        raise RegisterError(
            "parity: predictions.csv was evaluated on other test data (labels differ)"
        )
    keras_proba = Classifier.from_file(model_file).predict_proba(test.x)
    onnx_proba = OnnxClassifier(onnx_file).predict_proba(test.x)
    record: dict[str, Any] = {"samples": len(test)}
    for runtime, proba in (("keras", keras_proba), ("onnx", onnx_proba)):
        mismatched = np.flatnonzero(proba.argmax(axis=1) != expected["predicted_id"].to_numpy())
        if mismatched.size:
            raise RegisterError(
                f"parity: {runtime} gives {mismatched.size} of {len(test)} test images another "
                f"class than evaluate did (first: image {int(mismatched[0])})"
            )
        diff = float(np.abs(proba.max(axis=1) - expected["confidence"].to_numpy()).max())
        if diff > PROBABILITY_TOLERANCE:
            raise RegisterError(
                f"parity: {runtime} confidences differ from evaluate's by up to {diff:.2e}"
            )
        record[f"{runtime}_max_confidence_diff"] = diff
    diff = float(np.abs(onnx_proba - keras_proba).max())
    if diff > PROBABILITY_TOLERANCE:
        raise RegisterError(f"parity: ONNX and Keras probabilities differ by up to {diff:.2e}")
    record["onnx_vs_keras_max_probability_diff"] = diff
    return record


def explainer_parity(explainer: ExplainerExport, onnx_file: Path, test: Split) -> dict[str, Any]:
    """The explainer export: the served ONNX model's probabilities on every test image (what the
    page shows beside the activations is what /classify answers), and Keras's activations on the
    test images it ships."""
    runtime = OnnxClassifier(explainer.onnx_file)
    names = [o.name for o in runtime.session.get_outputs()]
    if len(names) != len(explainer.keras_outputs):
        raise RegisterError(
            f"explainer: {len(names)} ONNX outputs, Keras has {len(explainer.keras_outputs)}"
        )
    proba = in_chunks(
        lambda chunk: runtime.session.run(names[-1:], {runtime.input: chunk})[0], test.x
    )
    diff = float(np.abs(proba - OnnxClassifier(onnx_file).predict_proba(test.x)).max())
    if diff > PROBABILITY_TOLERANCE:
        raise RegisterError(f"parity: explainer and model probabilities differ by up to {diff:.2e}")
    worst = 0.0
    got = runtime.session.run(None, {runtime.input: explainer.sample_images})
    for name, ours, theirs in zip(names, got, explainer.keras_outputs, strict=True):
        if ours.shape != theirs.shape:
            raise RegisterError(f"explainer output {name}: {ours.shape}, Keras {theirs.shape}")
        relative = float(np.abs(ours - theirs).max() / max(float(np.abs(theirs).max()), 1e-6))
        if relative > ACTIVATION_TOLERANCE:
            raise RegisterError(
                f"parity: explainer output {name} differs from Keras by {relative:.2e}"
            )
        worst = max(worst, relative)
    return {
        "explainer_vs_onnx_max_probability_diff": diff,
        "explainer_vs_keras_max_relative_activation_diff": worst,
        "explainer_samples": len(explainer.sample_images),
    }


def run_artifact(run_id: str, path: str, dest: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{path}", dst_path=str(dest)))


def model_card(candidate: dict[str, Any], run: Run, version: str, name: str, workdir: Path) -> str:
    """The registered version's description (Markdown): what it is, how good, where from, how to use."""
    layers = run_artifact(run.info.run_id, "layer_table.txt", workdir).read_text()
    per_class = pd.read_csv(run_artifact(run.info.run_id, "evaluation/per_class.csv", workdir))
    f1 = "\n".join(f"| {r['class']} | {r['f1']:.3f} |" for _, r in per_class.iterrows())
    metrics = run.data.metrics
    flip = "yes" if run.data.params.get("model.test_time_flip") == "True" else "no"
    return f"""\
Fashion-MNIST CNN (Keras 3). Input: uint8 pixels (N, 28, 28), light on dark; output: the ten
class probabilities (N, 10). Scaling to [0, 1] is built into the model.

| | |
|---|---|
| validation accuracy (chosen by) | {candidate["val_accuracy"]:.4f} |
| test accuracy (reported only) | {candidate["test_accuracy"]:.4f} |
| test macro F1 | {metrics.get("test_macro_f1", float("nan")):.4f} |
| parameters | {int(metrics.get("param_count", 0)):,} |
| test-time flip (answers averaged with the mirror image's) | {flip} |
| best epoch | {int(metrics.get("best_epoch", 0))} |
| training run | {run.info.run_id} ({run.info.run_name}) |
| git commit | {candidate["git_commit"]} |
| data hash (train+val) | {candidate["data_hash"]} |
| model file sha256 | {candidate["model_sha256"]} |

Layers (each conv/pool maps n to floor((n + 2p - f) / s) + 1):
```
{layers.rstrip()}
```

| class | test F1 |
|---|---|
{f1}

Use: `mlflow.pyfunc.load_model("models:/{name}/{version}").predict(images_uint8)`,
`mlflow models serve -m models:/{name}@{ALIAS}`, or this project's `bentoml serve`, which runs
the ONNX export logged to the run as `{ONNX_ARTIFACT}` (same classes on every test image).
"""


def promote(
    client: MlflowClient,
    params: Params,
    candidate: dict[str, Any],
    run: Run,
    files: dict[str, Path],
    workdir: Path,
) -> dict[str, Any]:
    """Register a version, log its ONNX exports, import all into BentoML, then move the alias.
    Undone on failure. `files`: file name in the model (MODEL_FILE, ONNX_FILE, ...) -> the
    checked .keras file and its parity-checked exports."""
    import bentoml

    name = params.mlflow.registered_model_name
    keys = ("run_id", "val_accuracy", "test_accuracy", "val_data_hash", "model_sha256")
    lineage = {k: str(candidate[k]) for k in (*keys, "git_commit", "data_hash")}
    exports = {f: path for f, path in files.items() if f != MODEL_FILE}
    lineage |= {SHA256_KEYS[f]: file_sha256(path) for f, path in exports.items()}
    version = mlflow.register_model(candidate["model_uri"], name, tags=lineage)
    bento_tag = None
    try:
        # What is served must be what is registered: the version's file, identical to the checked one.
        checked_download(
            f"models:/{name}/{version.version}", candidate["model_sha256"], workdir / "registered"
        )
        for f, path in exports.items():
            client.log_artifact(candidate["run_id"], str(path), Path(ARTIFACTS[f]).parent.name)
            checked_artifact(candidate["run_id"], f, lineage[SHA256_KEYS[f]], workdir / "logged")
        card = model_card(candidate, run, version.version, name, workdir / "card")
        client.update_model_version(name, version.version, description=card)
        client.update_registered_model(
            name,
            description="Fashion-MNIST classifier trained by this project's DVC pipeline; "
            f"`@{ALIAS}` is the version `register` promoted (chosen on validation accuracy).\n\n"
            f"Latest promoted: version {version.version}.\n\n{card}",
        )
        summary = champion_summary(client, client.get_model_version(name, version.version))
        bento_tag = save_to_bentoml(params.serve.bento_model_name, summary, files)
        client.set_model_version_tag(name, version.version, "bento_model", bento_tag)
        client.set_registered_model_alias(name, ALIAS, version.version)
    except BaseException:
        if bento_tag is not None:
            bentoml.models.delete(bento_tag)
        client.delete_model_version(name, version.version)
        raise
    return champion_summary(client, client.get_model_version(name, version.version))


def checked_artifact(run_id: str, file: str, expected_sha256: str, dest: Path) -> Path:
    """An export (ONNX_FILE, EXPLAINER_ONNX, ...) logged to a run at promotion, refused unless it
    has the expected SHA-256."""
    path = run_artifact(run_id, ARTIFACTS[file], dest)
    if file_sha256(path) != expected_sha256:
        raise RegisterError(f"run {run_id}: {ARTIFACTS[file]} is not the export register checked")
    return path


def save_to_bentoml(bento_name: str, champion: dict[str, Any], files: dict[str, Path]) -> str:
    """A new BentoML model (it becomes `<bento_name>:latest`) holding the champion's .keras file,
    its ONNX export, its explainer (when it has one) and its identity as labels; returns its tag."""
    import bentoml

    labels = {
        "mlflow_model_name": champion["model_name"],
        "mlflow_model_version": champion["version"],
        "mlflow_run_id": champion["run_id"],
        "val_accuracy": f"{champion['val_accuracy']:.4f}",
        "test_accuracy": f"{champion['test_accuracy']:.4f}",
        "model_sha256": champion["model_sha256"],
        "onnx_sha256": champion["onnx_sha256"],
        "git_commit": champion["git_commit"],
        "data_hash": champion["data_hash"],
    }
    metadata = {
        "val_accuracy": float(champion["val_accuracy"]),
        "test_accuracy": float(champion["test_accuracy"]),
        "class_names": list(CLASS_NAMES),
        "model_file": MODEL_FILE,
        "onnx_file": ONNX_FILE,
    }
    if EXPLAINER_ONNX in files:  # the service's /explain; without it, /explain answers 503
        metadata |= {"explainer_onnx": EXPLAINER_ONNX, "explainer_json": EXPLAINER_JSON}
        metadata |= {SHA256_KEYS[f]: champion[SHA256_KEYS[f]] for f in ARTIFACTS}
    with bentoml.models.create(bento_name, labels=labels, metadata=metadata) as bm:
        for name, path in files.items():
            shutil.copyfile(path, bm.path_of(name))
            if file_sha256(bm.path_of(name)) != champion[SHA256_KEYS[name]]:
                raise RegisterError(f"the copy of {name} in the BentoML store differs")
    return str(bm.tag)


def sync_bentoml_store(client: MlflowClient, params: Params, workdir: Path) -> str | None:
    """Make the local BentoML store's `<serve.bento_model_name>:latest` the MLflow `@champion`,
    importing it (hash-checked) when it is missing, e.g. on a teammate's machine; its tag."""
    import bentoml

    version = current_champion(client, params.mlflow.registered_model_name)
    if version is None:
        return None
    champion = champion_summary(client, version)
    try:
        latest = bentoml.models.get(f"{params.serve.bento_model_name}:latest")
    except bentoml.exceptions.NotFound:
        latest = None
    identity = ("mlflow_model_name", "mlflow_model_version", "model_sha256", "onnx_sha256")
    wanted = dict(zip(identity, (champion["model_name"], champion["version"],
                                 champion["model_sha256"], champion["onnx_sha256"]), strict=True))  # fmt: skip
    if latest is not None and all(latest.info.labels.get(k) == v for k, v in wanted.items()):
        return str(latest.tag)
    if champion["onnx_sha256"] == "unknown":
        raise RegisterError(
            f"champion {champion['model_name']} v{champion['version']} has no ONNX export "
            "(promoted by an older register): promote a new run to serve it"
        )
    uri = f"models:/{champion['model_name']}/{champion['version']}"
    files = {MODEL_FILE: checked_download(uri, champion["model_sha256"], workdir / "import")}
    for f in ARTIFACTS:  # the explainer is missing for champions promoted before it existed
        if champion[SHA256_KEYS[f]] != "unknown":
            files[f] = checked_artifact(
                champion["run_id"], f, champion[SHA256_KEYS[f]], workdir / "import"
            )
    tag = save_to_bentoml(params.serve.bento_model_name, champion, files)
    print(f"register: imported the champion ({uri}) into the BentoML store as {tag}")
    return tag


def run(
    params: Params, metrics_path: Path, predictions_path: Path, data_dir: Path, run_path: Path
) -> dict[str, Any]:
    """Decide (and promote if warranted), then make the local BentoML store serve the champion;
    returns the record written to champion.json."""
    experiment_id = use_experiment(params.mlflow.experiment_name)
    client = MlflowClient()
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        record = choose(
            client, params, experiment_id, (metrics_path, predictions_path, data_dir, run_path),
            Path(tmp),
        )  # fmt: skip
        record["served"] = sync_bentoml_store(client, params, Path(tmp) / "sync")
    return record


def choose(
    client: MlflowClient,
    params: Params,
    experiment_id: str,
    inputs: tuple[Path, Path, Path, Path],
    workdir: Path,
) -> dict[str, Any]:
    """The decision record; promotes the best validated run if it passes the gate and parity."""
    metrics_path, predictions_path, data_dir, run_path = inputs
    pipeline_run = {
        "run_id": json.loads(run_path.read_text())["mlflow_run_id"],
        "test_accuracy": json.loads(metrics_path.read_text())["test_accuracy"],
    }
    val = load_split(data_dir / "val.npz")
    val_data_hash = content_hash(val)
    best = best_run(client, experiment_id, val_data_hash)
    if best is None:
        raise RegisterError(
            f"experiment {params.mlflow.experiment_name!r} has no evaluated run validated on "
            f"this validation data (val_data_hash {val_data_hash[:12]})"
        )
    candidate = run_summary(best)
    version = current_champion(client, params.mlflow.registered_model_name)
    champion = champion_summary(client, version) if version else None
    record: dict[str, Any] = {
        "decision": "kept",
        "reason": "",
        "chosen_by": "validation accuracy",
        "candidate": candidate,
        "champion": champion,
        "previous_champion": champion,
        "champion_remeasured": None,
        "pipeline_run": pipeline_run,
        "gate": params.register.model_dump(include={"min_accuracy", "max_regression"}),
        "parity": None,
    }
    if champion and champion["run_id"] == candidate["run_id"]:
        record["reason"] = f"the best run is already the champion (version {champion['version']})"
        return record
    champion_acc = None
    if champion is not None:
        champion_acc = champion["val_accuracy"]
        if champion["val_data_hash"] != val_data_hash or champion_acc is None:
            # Validated on other data: measure it on the candidate's validation split.
            uri = f"models:/{champion['model_name']}/{champion['version']}"
            champion_acc = accuracy(download_keras_file(uri, workdir / "champion"), val)
            record["champion_remeasured"] = {
                "reason": "the champion was validated on other data "
                f"(val_data_hash {champion['val_data_hash'][:12]}, "
                f"this split {val_data_hash[:12]})",
                "val_accuracy_before": champion["val_accuracy"],
                "val_accuracy": champion_acc,
                "val_data_hash": val_data_hash,
            }
    promote_it, record["reason"] = decide(candidate["val_accuracy"], champion_acc, params.register)
    if not promote_it:
        return record
    model_file = checked_download(
        candidate["model_uri"], candidate["model_sha256"], workdir / "candidate"
    )
    if candidate["run_id"] == pipeline_run["run_id"]:
        if abs(pipeline_run["test_accuracy"] - candidate["test_accuracy"]) > 1e-9:
            raise RegisterError(
                f"{metrics_path} disagrees with MLflow on run {candidate['run_id']}"
            )
        predictions = pd.read_csv(predictions_path)
    else:  # an older run: evaluate logged its predictions to that run
        predictions = pd.read_csv(
            run_artifact(candidate["run_id"], "evaluation/predictions.csv", workdir)
        )
    test = load_split(data_dir / "test.npz")
    onnx_file = export_onnx(model_file, workdir / ONNX_FILE)
    record["parity"] = parity_check(model_file, onnx_file, predictions, test)
    explainer = export_explainer(model_file, workdir / "explainer", test)
    record["parity"] |= explainer_parity(explainer, onnx_file, test)
    files = {
        MODEL_FILE: model_file,
        ONNX_FILE: onnx_file,
        EXPLAINER_ONNX: explainer.onnx_file,
        EXPLAINER_JSON: explainer.json_file,
    }
    record["champion"] = promote(client, params, candidate, best, files, workdir)
    record["decision"] = "promoted"
    return record


def import_champion(params: Params) -> str | None:
    """`--import-only`: the local BentoML store serves the MLflow @champion; decide nothing."""
    use_experiment(params.mlflow.experiment_name)  # checks the tracking server answers
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        return sync_bentoml_store(MlflowClient(), params, Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", type=Path, default=Path("reports/eval/metrics.json"))
    parser.add_argument("--predictions", type=Path, default=Path("reports/eval/predictions.csv"))
    parser.add_argument(
        "--data", type=Path, default=Path("data/prepared"), help="prepared .npz splits"
    )
    parser.add_argument(
        "--run", type=Path, default=Path("reports/train/run.json"), help="train's run id"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/register/champion.json"))
    parser.add_argument(
        "--import-only",
        action="store_true",
        help="only bring the MLflow @champion into the local BentoML store (for `make serve`)",
    )
    args = parser.parse_args()
    params = load_params(args.params)
    try:
        if args.import_only:
            served = import_champion(params)
            print(f"register: serving {served or 'nothing: there is no @champion yet'}")
            return
        record = run(params, args.metrics, args.predictions, args.data, args.run)
    except (TrackingUnavailable, RegisterError, ModelFileError) as err:
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
    print(f"BentoML store serves: {record['served']}")


if __name__ == "__main__":
    main()
