"""What model a measurement is of: the served BentoML model, by the SHA-256 of its file and in
words (tag, MLflow version, architecture, training data and epochs)."""

from __future__ import annotations

import logging
from pathlib import Path

from harness.results import architecture, model_entry
from pipeline.core.inference import file_sha256

log = logging.getLogger(__name__)


def training_summary(run_params: dict[str, str]) -> str:
    """How a model was trained, from its MLflow run's params (params.yaml flattened)."""
    parts = []
    limit = run_params.get("prepare.max_train_samples", "None")
    train, val = run_params.get("data.train_samples"), run_params.get("data.val_samples")
    if train:
        images = f"{int(train):,} training images" + (f" (+{int(val):,} validation)" if val else "")
        subset = f"subset of {int(limit):,}" if limit not in ("None", "null", "") else "full data"
        parts.append(f"{images}, {subset}")
    if "train.epochs" in run_params:
        parts.append(f"{run_params['train.epochs']} epochs")
    return ", ".join(parts)


def bento_model(tag: str, tracking_uri: str | None = None) -> dict:
    """The BentoML model `tag` (e.g. `fashion-mnist-cnn:latest`) as a result file's model entry:
    SHA-256 of its `model.keras` (what `register` logged as model_sha256), the ONNX file's, and
    what it is: tag, MLflow model version and run, architecture and training from the run's params
    when MLflow at `tracking_uri` has the run, test accuracy."""
    import bentoml

    model = bentoml.models.get(tag)
    labels = model.info.labels
    keras_file = Path(model.path_of("model.keras"))
    run_id = labels.get("mlflow_run_id", "")
    run_params: dict[str, str] = {}
    if run_id and tracking_uri:
        try:
            from mlflow.tracking import MlflowClient

            run_params = MlflowClient(tracking_uri).get_run(run_id).data.params
        except Exception as err:  # MLflow out of reach: the labels still identify the model
            log.warning("model description without MLflow run params: %s", err)
    words = [str(model.tag)]
    if labels.get("mlflow_model_version"):
        words.append(
            f"MLflow {labels.get('mlflow_model_name', '?')} v{labels['mlflow_model_version']}"
            f" (run {run_id[:8]})"
        )
    if run_params:
        words.append(architecture(run_params))
        if summary := training_summary(run_params):
            words.append(summary)
    if labels.get("test_accuracy"):
        words.append(f"test accuracy {labels['test_accuracy']}")
    entry = model_entry(str(model.tag), keras_file, "; ".join(words))
    onnx = Path(model.path_of("model.onnx"))
    if onnx.exists():
        entry["onnx_sha256"] = file_sha256(onnx)
    if labels.get("model_sha256") and labels["model_sha256"] != entry["sha256"]:
        entry["note"] = f"differs from the registered model_sha256 {labels['model_sha256']}"
    return entry
