"""Fine-tuning: a training that starts from the MLflow `@champion`'s weights (`train.init: champion`).

The alias is read once, to a version (it may move while training runs); that version's .keras
file comes from the registry (`models:/<name>/<version>`, as register's re-measuring gets it) and
must have the SHA-256 its version records. The network inside it must be the one params `model:`
builds, layer for layer and setting for setting: fine-tuning changes weights, never the
architecture. Its weights are where `fit_model` starts (fit.py); the schedule is
`train.fine_tune`'s (epochs, learning rate, warm-up), every other training value `train`'s own.
The run says where it started (tags `init_*`, run.json's `init`), and its starting weights'
validation scores (metrics `init_val_accuracy`, `init_val_loss`; nothing of this from scratch).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.core.inference import file_sha256
from pipeline.core.params import Params, TrainParams
from pipeline.shared.tracking import download_keras_file
from pipeline.training.model import build_model, network

# The alias `register` moves (pipeline/promotion/record.py's ALIAS; a test keeps them equal).
CHAMPION_ALIAS = "champion"


class FineTuneError(RuntimeError):
    """There is no champion to start from, or it is not this architecture; the message says why."""


@dataclass(frozen=True)
class Start:
    """Where a fine-tuning starts: the champion version and its network's weights."""

    model_name: str
    version: str
    run_id: str
    model_sha256: str
    weights: list[np.ndarray]

    def record(self) -> dict[str, str]:
        """What run.json and the run's tags say about it."""
        return {
            "from": CHAMPION_ALIAS,
            "model_name": self.model_name,
            "model_version": self.version,
            "run_id": self.run_id,
            "model_sha256": self.model_sha256,
        }

    def tags(self) -> dict[str, str]:
        return {f"init_{k}" if k != "from" else "init": v for k, v in self.record().items()}

    def describe(self, train: TrainParams) -> str:
        return (
            f"fine-tuning {self.model_name} v{self.version} (run {self.run_id}): "
            f"{train.epochs} epochs from learning rate {train.learning_rate:g}"
        )


def schedule(train: TrainParams) -> TrainParams:
    """The training values a run uses: train's own, or from the champion fine_tune's schedule."""
    if train.init == "scratch":
        return train
    tune = train.fine_tune
    changes = {"epochs": tune.epochs, "learning_rate": tune.learning_rate}
    return train.model_copy(update=changes | {"warmup_epochs": tune.warmup_epochs})


def champion_start(params: Params) -> Start:
    """The @champion's version and weights (its file hash-checked, its network checked against
    params `model:`); MLflow's tracking URI must be set. Params refuse init: champion under
    multi_worker (every worker would need the same champion; only the chief talks to MLflow)."""
    name = params.mlflow.registered_model_name
    try:
        version = MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in err.message:
            raise
        raise FineTuneError(
            f"train.init is champion, but {name} has no @{CHAMPION_ALIAS} to start from: train "
            "one from scratch first (train.init: scratch)"
        ) from None
    recorded = version.tags.get("model_sha256", "unknown")
    with tempfile.TemporaryDirectory(prefix="fine-tune-") as tmp:
        path = download_keras_file(f"models:/{name}/{version.version}", Path(tmp))
        if recorded != "unknown" and file_sha256(path) != recorded:
            raise FineTuneError(
                f"{name} v{version.version}: its model file is not the {recorded[:12]} its "
                "version records"
            )
        champion = network(keras.saving.load_model(path, compile=False))
        check_architecture(champion, build_model(params.model), f"{name} v{version.version}")
        weights = champion.get_weights()
    return Start(name, str(version.version), version.run_id or "", recorded, weights)


def _layers(model: keras.Model) -> list[tuple[str, str, dict[str, Any]]]:
    return [(layer.name, type(layer).__name__, layer.get_config()) for layer in model.layers]


def check_architecture(champion: keras.Model, built: keras.Model, what: str) -> None:
    """Refuse a champion network that is not the one params build (names the first difference)."""
    theirs, ours = _layers(champion), _layers(built)
    for (name, kind, config), (our_name, our_kind, our_config) in zip(theirs, ours, strict=False):
        if (name, kind) != (our_name, our_kind):
            raise FineTuneError(
                f"{what} has layer {name} ({kind}) where params `model:` build {our_name} "
                f"({our_kind}): fine-tuning keeps the champion's architecture (train.init: "
                "scratch to train another)"
            )
        differ = sorted(
            k for k in config.keys() | our_config.keys() if config.get(k) != our_config.get(k)
        )
        if differ:
            shown = ", ".join(f"{k} {config.get(k)!r} vs {our_config.get(k)!r}" for k in differ)
            raise FineTuneError(
                f"{what}: layer {name} differs from params `model:` ({shown}): fine-tuning keeps "
                "the champion's architecture (train.init: scratch to train another)"
            )
    if len(theirs) != len(ours):
        raise FineTuneError(
            f"{what} has {len(theirs)} layers, params `model:` build {len(ours)}: fine-tuning "
            "keeps the champion's architecture (train.init: scratch to train another)"
        )
