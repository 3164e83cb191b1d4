"""Stage `train`: fit the CNN described in params.yaml, tracked as an MLflow run.

Outputs models/model.keras (byte for byte the model logged to MLflow, whose SHA-256 the run
records), the per-epoch history CSV (a DVC plot), the validation metrics of the kept weights
(DVC metrics) and run.json with the MLflow run that the evaluate and register stages continue.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from mlflow.models import infer_signature

from pipeline.architecture import format_table, layer_table
from pipeline.dataset import Split, load_split, write_atomically
from pipeline.inference import file_sha256
from pipeline.model import build_model
from pipeline.params import IMAGE_SIZE, NUM_CLASSES, ModelParams, Params, TrainParams, load_params
from pipeline.tracking import (
    TrackingUnavailable,
    download_keras_file,
    flatten,
    lineage_tags,
    log_split,
    use_experiment,
)


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and ask TensorFlow for deterministic kernels."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def distribution_strategy(kind: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy named by params `train.distribution`."""
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":  # cluster layout comes from the TF_CONFIG environment variable
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()  # the default (no-op) strategy


def learning_rate(
    params: TrainParams, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Constant rate, or cosine decay to zero after a linear warm-up from 10% of the peak."""
    if params.lr_schedule == "constant":
        return params.learning_rate
    warmup = params.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=params.learning_rate * (0.1 if warmup else 1.0),
        decay_steps=max(params.epochs * steps_per_epoch - warmup, 1),
        warmup_target=params.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(params: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    lr = learning_rate(params, steps_per_epoch)
    if params.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=params.weight_decay)
    if params.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.SGD(
        lr, momentum=0.9, nesterov=True, weight_decay=params.weight_decay or None
    )


def augmenter(params: TrainParams, seed: int) -> keras.Sequential | None:
    """Random flips/shifts of (N, 28, 28, 1) batches, for training only (not in the saved model)."""
    aug = params.augmentation
    stack: list[keras.layers.Layer] = []
    if aug.horizontal_flip:
        stack.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if aug.translate:
        stack.append(
            keras.layers.RandomTranslation(
                aug.translate, aug.translate, fill_mode="constant", seed=seed
            )
        )
    return keras.Sequential(stack, name="augmentation") if stack else None


def make_datasets(
    train: Split, val: Split, params: TrainParams
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Batched tf.data pipelines of (uint8 pixels, one-hot label), the raw pixels the model takes;
    training is shuffled and augmented."""

    def pairs(split: Split) -> tf.data.Dataset:
        y = keras.utils.to_categorical(split.y, NUM_CLASSES).astype(np.float32)
        return tf.data.Dataset.from_tensor_slices((split.x, y))

    train_ds = pairs(train).shuffle(len(train), seed=params.seed, reshuffle_each_iteration=True)
    train_ds = train_ds.batch(params.batch_size)
    aug = augmenter(params, params.seed)
    if aug is not None:

        def augment(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            # The layers work on float images with a channel; back to uint8 pixels afterwards
            # (exact for flips; shifts interpolate, so they are rounded).
            moved = aug(tf.cast(x[..., None], tf.float32), training=True)[..., 0]
            return tf.cast(tf.clip_by_value(tf.round(moved), 0, 255), tf.uint8), y

        train_ds = train_ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    val_ds = pairs(val).batch(max(params.batch_size, 256))
    return train_ds.prefetch(tf.data.AUTOTUNE), val_ds.prefetch(tf.data.AUTOTUNE)


class EpochLogger(keras.callbacks.Callback):
    """Logs each epoch's metrics and learning rate to the active MLflow run as they happen."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        row |= {"learning_rate": lr, "epoch_seconds": time.perf_counter() - self._start}
        self.rows.append({"epoch": epoch + 1, **row})
        if mlflow.active_run() is not None:
            mlflow.log_metrics(row, step=epoch + 1)


def fit_model(
    model_params: ModelParams,
    train_params: TrainParams,
    train: Split,
    val: Split,
    callbacks: list[keras.callbacks.Callback] = (),
    verbose: int | str = 2,
) -> tuple[keras.Model, pd.DataFrame]:
    """Build, compile and fit the CNN; returns the model (best weights restored) and its history."""
    set_seeds(train_params.seed)
    train_ds, val_ds = make_datasets(train, val, train_params)
    steps = math.ceil(len(train) / train_params.batch_size)
    with distribution_strategy(train_params.distribution).scope():
        model = build_model(model_params)
        model.compile(
            optimizer=make_optimizer(train_params, steps),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=train_params.label_smoothing),
            metrics=["accuracy"],
        )
    logger = EpochLogger()
    stop = keras.callbacks.EarlyStopping(
        monitor="val_accuracy",
        patience=train_params.early_stopping_patience,
        restore_best_weights=True,
        verbose=1,
    )
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=train_params.epochs,
        callbacks=[logger, stop, *callbacks],
        verbose=verbose,
        shuffle=False,  # tf.data shuffles
    )
    history = pd.DataFrame(logger.rows)
    # EarlyStopping restores the weights of the first epoch with the best val_accuracy.
    history.attrs["best_epoch"] = int(history["val_accuracy"].idxmax()) + 1
    return model, history


def best_epoch_metrics(history: pd.DataFrame) -> dict[str, float]:
    """The validation metrics of the kept (best) epoch: what `register` chooses by."""
    best = history.attrs["best_epoch"]
    row = history.iloc[best - 1]
    return {
        "best_epoch": best,
        "best_val_accuracy": float(row["val_accuracy"]),
        "best_val_loss": float(row["val_loss"]),
    }


def _write_json(path: Path, record: dict) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def run(params: Params, data_dir: Path, sources: Path, out: dict[str, Path]) -> str:
    """Train under an MLflow run and write the stage's outputs; returns the run id.

    `out` names the outputs: model (.keras), history (CSV), metrics and run (JSON).
    """
    experiment_id = use_experiment(params.mlflow.experiment_name)  # fails fast if unreachable
    train, val = load_split(data_dir / "train.npz"), load_split(data_dir / "val.npz")
    provenance = json.loads(sources.read_text())
    table = format_table(layer_table(IMAGE_SIZE, params.model.conv_blocks))
    print(table)
    tags = lineage_tags(train, val, params.train.seed)
    # Under `dvc exp run` the run is named after the experiment: the same name in both UIs.
    run_name = os.environ.get("DVC_EXP_NAME") or None
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as active,
        tempfile.TemporaryDirectory(prefix="train-") as tmp,
    ):
        mlflow.log_params(flatten(params.model_dump(include={"prepare", "model", "train"})))
        mlflow.log_params({"data.train_samples": len(train), "data.val_samples": len(val)})
        log_split(train, "train", "train", provenance)
        log_split(val, "validation", "train", provenance)
        mlflow.log_text(table, "layer_table.txt")
        started = time.perf_counter()
        model, history = fit_model(params.model, params.train, train, val)
        train_seconds = time.perf_counter() - started
        metrics = best_epoch_metrics(history) | {
            "train_seconds": round(train_seconds, 1),
            "param_count": model.count_params(),
        }
        mlflow.log_metrics(metrics)
        sample = val.x[:8]
        info = mlflow.keras.log_model(
            model, name="model", signature=infer_signature(sample, model.predict(sample, verbose=0))
        )
        # The DVC output is the logged file itself, so one SHA-256 names the model everywhere.
        logged = download_keras_file(info.model_uri, Path(tmp))
        model_sha256 = file_sha256(logged)
        mlflow.set_tag("model_sha256", model_sha256)
        mlflow.log_text(history.to_csv(index=False), "train_history.csv")
        run_id = active.info.run_id
        write_atomically(out["model"], lambda dest: shutil.copyfile(logged, dest))
    write_atomically(out["history"], lambda dest: history.to_csv(dest, index=False))
    _write_json(out["metrics"], metrics)
    _write_json(out["run"], {"mlflow_run_id": run_id, "mlflow_experiment_id": experiment_id})
    print(
        f"MLflow run {run_id}: trained in {train_seconds:.0f} s, best epoch {metrics['best_epoch']} "
        f"(val accuracy {metrics['best_val_accuracy']:.4f}), model sha256 {model_sha256[:12]}"
    )
    return run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--data", type=Path, required=True, help="directory of prepared .npz splits"
    )
    parser.add_argument(
        "--sources", type=Path, required=True, help="fetch's sources.json (data provenance)"
    )
    parser.add_argument("--model", type=Path, required=True, help="output .keras file")
    parser.add_argument("--history", type=Path, required=True, help="output per-epoch CSV")
    parser.add_argument("--metrics", type=Path, required=True, help="output validation metrics")
    parser.add_argument(
        "--run", type=Path, required=True, help="output JSON with the MLflow run id"
    )
    args = parser.parse_args()
    params = load_params(args.params)
    out = {"model": args.model, "history": args.history, "metrics": args.metrics, "run": args.run}
    try:
        run(params, args.data, args.sources, out)
    except TrackingUnavailable as err:
        sys.exit(f"train failed: {err}")


if __name__ == "__main__":
    main()
