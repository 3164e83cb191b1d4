"""What a training leaves: the train stage's outputs and what its MLflow run logs.

The chief (the only process under multi_worker) logs a new run's inputs, or the epochs of a
resumed state whose run is gone; at the end the model, its history and metrics, then writes the
outputs: the .keras file is the file MLflow logged, byte for byte, so one SHA-256 names the model
everywhere. Each output is written atomically (a killed training leaves the previous one).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import keras
import mlflow
import pandas as pd
from mlflow.models import infer_signature

from pipeline.core.inference import file_sha256
from pipeline.core.params import Params, flatten
from pipeline.shared.dataset import Split, write_atomically
from pipeline.shared.tracking import download_keras_file, log_split
from pipeline.training.fit import best_epoch_metrics
from pipeline.training.resume import Saved

# What the logged model needs to load: the pins MLflow would otherwise infer by loading the model in
# a child process (another TensorFlow import, tens of seconds per run on a 2-CPU machine).
MODEL_REQUIREMENTS = ("mlflow", "keras", "numpy", "tensorflow")


@dataclass(frozen=True)
class TrainOutputs:
    """Where the stage writes (dvc.yaml's train outs)."""

    model: Path  # the .keras file MLflow logged
    history: Path  # one row per epoch (a DVC plot)
    metrics: Path  # the kept epoch's validation metrics (DVC metrics)
    run: Path  # run.json: the MLflow run evaluate and register continue


@dataclass(frozen=True)
class Fitted:
    """A finished fit: the model to save (best weights restored) and its history."""

    model: keras.Model
    history: pd.DataFrame
    seconds: float  # training time, a resumed state's epochs included

    def metrics(self) -> dict[str, Any]:
        """The run's final metrics: the kept epoch's, time, size; a fine-tuning's start scores."""
        metrics = best_epoch_metrics(self.history) | {
            "train_seconds": round(self.seconds, 1),
            "param_count": self.model.count_params(),
        }
        return metrics | {k: v for k, v in self.history.attrs.items() if k.startswith("init_")}


@dataclass(frozen=True)
class Trained:
    """What the chief logged and wrote: the line it ends with."""

    run_id: str
    metrics: dict[str, Any]
    model_sha256: str
    seconds: float

    def summary(self) -> str:
        return (
            f"MLflow run {self.run_id}: trained in {self.seconds:.0f} s, best epoch "
            f"{self.metrics['best_epoch']} (val accuracy {self.metrics['best_val_accuracy']:.4f}), "
            f"model sha256 {self.model_sha256[:12]}"
        )


def log_inputs(params: Params, train: Split, val: Split, provenance: dict, table: str) -> None:
    """A new run's params, datasets (with where the files came from) and layer table."""
    mlflow.log_params(flatten(params.model_dump(include={"prepare", "model", "train"})))
    mlflow.log_params({"data.train_samples": len(train), "data.val_samples": len(val)})
    log_split(train, "train", "train", provenance)
    log_split(val, "validation", "train", provenance)
    mlflow.log_text(table, "layer_table.txt")


def log_saved_epochs(saved: Saved) -> None:
    """Resuming a state whose run is gone: this run records where it came from and its epochs."""
    mlflow.set_tags(
        {
            "resumed_from_epoch": saved.epoch,
            "resumed_from_run_id": saved.run.get("mlflow_run_id", ""),
        }
    )
    for row in saved.history:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def log_and_write(fitted: Fitted, val: Split, out: TrainOutputs, run: dict[str, Any]) -> Trained:
    """Log the metrics, model and history to the active run, then write the outputs; `run` is
    run.json's content."""
    metrics = fitted.metrics()
    mlflow.log_metrics(metrics)
    model_sha256 = _log_model_and_history(fitted, val, out)
    _write_json(out.metrics, metrics)
    _write_json(out.run, run)
    return Trained(run["mlflow_run_id"], metrics, model_sha256, fitted.seconds)


def _log_model_and_history(fitted: Fitted, val: Split, out: TrainOutputs) -> str:
    """Log the model and history, write them as outputs; returns the model file's SHA-256."""
    sample = val.x[:8]
    # A direct call, not predict(): under multi_worker, predict() would wait for the other workers.
    predicted = keras.ops.convert_to_numpy(fitted.model(sample, training=False))
    signature = infer_signature(sample, predicted)
    pins = [f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS]
    info = mlflow.keras.log_model(
        fitted.model, name="model", signature=signature, pip_requirements=pins
    )
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        # The DVC output is the logged file itself, so one SHA-256 names the model everywhere.
        logged = download_keras_file(info.model_uri, Path(tmp))
        model_sha256 = file_sha256(logged)
        mlflow.set_tag("model_sha256", model_sha256)
        mlflow.log_text(fitted.history.to_csv(index=False), "train_history.csv")
        write_atomically(out.model, lambda dest: shutil.copyfile(logged, dest))
    write_atomically(out.history, lambda dest: fitted.history.to_csv(dest, index=False))
    return model_sha256


def _write_json(path: Path, record: dict) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
