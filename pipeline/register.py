"""Stage `register`: promote the experiment's best validated run to `@champion`, if it earns it.

The steps, each in its module under pipeline/promotion/:
- choice.py: the candidate is the best run validated on the current validation split; the gate
  (`decide`) compares validation accuracies only (a champion validated on other data is first
  re-measured on this split); test accuracy is reported, never compared.
- export.py and parity.py: the candidate's logged model file must have the SHA-256 its run
  recorded (the file `evaluate` scored); its ONNX export (the service's runtime) and its explainer
  export must reproduce evaluate's predictions on every test image.
- registry.py: a model version with its lineage tags and model card; the `champion` alias.
- bento_store.py: the champion's files in the BentoML model store, each copy hash-checked.

Promotion registers a model version, logs the checked ONNX files to the run, imports all of them
into the BentoML model store and moves the `champion` alias, in that order, checking at each step
that the bytes are still the same; a candidate that fails anywhere leaves the old champion
untouched in both stores. On a local MLflow store one register at a time decides and promotes
(registry.py's `promotion_lock`). The decision and why go to champion.json (record.py's `Decision`).
Whatever was decided, the local BentoML store ends up serving the `@champion`
(`<serve.bento_model_name>:latest`): on a teammate's machine that shares the MLflow server, the
champion is imported from MLflow; `python -m pipeline.register --import-only` does just that
(`make serve` runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from pipeline.core.inference import MODEL_FILE, ONNX_FILE, file_sha256
from pipeline.core.params import Params, load_params
from pipeline.promotion.bento_store import save_to_bentoml, sync_bentoml_store
from pipeline.promotion.choice import best_run, candidate_of, decide
from pipeline.promotion.export import (
    EXPLAINER_JSON,
    EXPLAINER_ONNX,
    export_explainer,
    export_onnx,
)
from pipeline.promotion.parity import accuracy, explainer_parity, parity_check
from pipeline.promotion.record import (
    ALIAS,
    ARTIFACTS,
    SHA256_KEYS,
    Candidate,
    Champion,
    Decision,
    RegisterError,
)
from pipeline.promotion.registry import (
    champion_summary,
    checked_artifact,
    checked_download,
    current_champion,
    model_card,
    promotion_lock,
    run_artifact,
)
from pipeline.shared.dataset import Split, content_hash, load_split, write_atomically
from pipeline.shared.tracking import (
    ModelFileError,
    TrackingUnavailable,
    download_keras_file,
    tracking_uri,
    use_experiment,
)


def run(
    params: Params, metrics_path: Path, predictions_path: Path, data_dir: Path, run_path: Path
) -> Decision:
    """Decide (and promote if warranted), then make the local BentoML store serve the champion;
    returns the record written to champion.json."""
    experiment_id = use_experiment(params.mlflow.experiment_name)
    client = MlflowClient()
    with (
        promotion_lock(tracking_uri()),
        tempfile.TemporaryDirectory(prefix="register-") as tmp,
    ):
        record = choose(
            client, params, experiment_id, (metrics_path, predictions_path, data_dir, run_path),
            Path(tmp),
        )  # fmt: skip
        record.served = sync_bentoml_store(client, params, Path(tmp) / "sync")
    return record


def choose(
    client: MlflowClient,
    params: Params,
    experiment_id: str,
    inputs: tuple[Path, Path, Path, Path],
    workdir: Path,
) -> Decision:
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
    candidate = candidate_of(best)
    version = current_champion(client, params.mlflow.registered_model_name)
    champion = champion_summary(client, version) if version else None
    record = Decision(
        decision="kept",
        reason="",
        chosen_by="validation accuracy",
        candidate=candidate,
        champion=champion,
        previous_champion=champion,
        champion_remeasured=None,
        pipeline_run=pipeline_run,
        gate=params.register.model_dump(include={"min_accuracy", "max_regression"}),
        parity=None,
    )
    if champion and champion.run_id == candidate.run_id:
        record.reason = f"the best run is already the champion (version {champion.version})"
        return record
    champion_acc = None
    if champion is not None:
        champion_acc = champion.val_accuracy
        if champion.val_data_hash != val_data_hash or champion_acc is None:
            champion_acc, record.champion_remeasured = remeasured(champion, val, workdir)
    promote_it, record.reason = decide(candidate.val_accuracy, champion_acc, params.register)
    if not promote_it:
        return record
    if candidate.run_id == pipeline_run["run_id"]:
        if abs(pipeline_run["test_accuracy"] - candidate.test_accuracy) > 1e-9:
            raise RegisterError(f"{metrics_path} disagrees with MLflow on run {candidate.run_id}")
        predictions = pd.read_csv(predictions_path)
    else:  # an older run: evaluate logged its predictions to that run
        predictions = pd.read_csv(
            run_artifact(candidate.run_id, "evaluation/predictions.csv", workdir)
        )
    files, record.parity = checked_exports(candidate, predictions, data_dir, workdir)
    record.champion = promote(client, params, candidate, best, files, workdir)
    record.decision = "promoted"
    return record


def remeasured(champion: Champion, val: Split, workdir: Path) -> tuple[float, dict[str, Any]]:
    """A champion validated on other data, measured on the candidate's validation split: its
    accuracy there and the record of why."""
    uri = f"models:/{champion.model_name}/{champion.version}"
    acc = accuracy(download_keras_file(uri, workdir / "champion"), val)
    val_data_hash = content_hash(val)
    return acc, {
        "reason": "the champion was validated on other data "
        f"(val_data_hash {champion.val_data_hash[:12]}, this split {val_data_hash[:12]})",
        "val_accuracy_before": champion.val_accuracy,
        "val_accuracy": acc,
        "val_data_hash": val_data_hash,
    }


def checked_exports(
    candidate: Candidate, predictions: pd.DataFrame, data_dir: Path, workdir: Path
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The candidate's .keras file (hash-checked), its ONNX and explainer exports, and the parity
    record they passed: file name in the model -> path, parity."""
    model_file = checked_download(
        candidate.model_uri, candidate.model_sha256, workdir / "candidate"
    )
    test = load_split(data_dir / "test.npz")
    onnx_file = export_onnx(model_file, workdir / ONNX_FILE)
    parity = parity_check(model_file, onnx_file, predictions, test)
    explainer = export_explainer(model_file, workdir / "explainer", test)
    parity |= explainer_parity(explainer, onnx_file, test)
    files = {
        MODEL_FILE: model_file,
        ONNX_FILE: onnx_file,
        EXPLAINER_ONNX: explainer.onnx_file,
        EXPLAINER_JSON: explainer.json_file,
    }
    return files, parity


def promote(
    client: MlflowClient,
    params: Params,
    candidate: Candidate,
    run: Run,
    files: dict[str, Path],
    workdir: Path,
) -> Champion:
    """Register a version, log its ONNX exports, import all into BentoML, then move the alias.
    Undone on failure. `files`: file name in the model (MODEL_FILE, ONNX_FILE, ...) -> the
    checked .keras file and its parity-checked exports."""
    import bentoml

    name = params.mlflow.registered_model_name
    keys = ("run_id", "val_accuracy", "test_accuracy", "val_data_hash", "model_sha256")
    lineage = {k: str(getattr(candidate, k)) for k in (*keys, "git_commit", "data_hash")}
    exports = {f: path for f, path in files.items() if f != MODEL_FILE}
    lineage |= {SHA256_KEYS[f]: file_sha256(path) for f, path in exports.items()}
    version = mlflow.register_model(candidate.model_uri, name, tags=lineage)
    bento_tag = None
    try:
        # What is served must be what is registered: the version's file, identical to the checked one.
        checked_download(
            f"models:/{name}/{version.version}", candidate.model_sha256, workdir / "registered"
        )
        for f, path in exports.items():
            client.log_artifact(candidate.run_id, str(path), Path(ARTIFACTS[f]).parent.name)
            checked_artifact(candidate.run_id, f, lineage[SHA256_KEYS[f]], workdir / "logged")
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
    # A register killed while writing leaves the previous champion.json, never half of one.
    write_atomically(args.out, lambda tmp: tmp.write_text(record.to_json()))
    champion = record.champion
    where = (
        f"{champion.model_name} v{champion.version} ({champion.bento_model})"
        if champion
        else "none"
    )
    print(f"register: {record.decision}: {record.reason}\nchampion: {where}")
    print(f"BentoML store serves: {record.served}")


if __name__ == "__main__":
    main()
