"""Stage `train`: fit the CNN described in params.yaml, tracked as an MLflow run.

Outputs models/model.keras (byte for byte the model logged to MLflow, whose SHA-256 the run
records), the per-epoch history CSV (a DVC plot), the validation metrics of the kept weights
(DVC metrics) and run.json with the MLflow run that the evaluate and register stages continue.

Progress: steps, rate and ETA within each epoch, one line per epoch (pipeline/progress.py).
Resumable: SIGTERM/SIGINT marks the MLflow run KILLED and keeps the last finished epoch's state;
the next run with the same params, data and code continues it, in the same MLflow run
(pipeline/resume.py). With `train.distribution: multi_worker` only the chief logs and writes the
outputs (pipeline/multi_worker.py).
"""

from __future__ import annotations

import pipeline.quiet_tensorflow  # noqa: F401 (first: it filters TensorFlow's start-up log)

# isort: split

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from pipeline.architecture import format_table, forward_flops, layer_table
from pipeline.dataset import Split, content_hash, load_split, write_atomically
from pipeline.inference import Classifier, file_sha256
from pipeline.model import build_model, with_test_time_flip
from pipeline.multi_worker import (
    gathered,
    is_chief,
    is_multi_worker,
    keras_fixes,
    wait_for_each_other,
    worker_name,
)
from pipeline.params import (
    IMAGE_SIZE,
    NUM_CLASSES,
    Augmentation,
    ModelParams,
    Params,
    TrainParams,
    load_params,
)
from pipeline.progress import Progress, duration
from pipeline.resume import (
    STATE_DIR,
    Interrupted,
    KeepState,
    Resume,
    Saved,
    TrainState,
    claimed_state,
    signals_raise,
    state_key,
)
from pipeline.tracking import (
    TrackingUnavailable,
    download_keras_file,
    flatten,
    lineage_tags,
    log_split,
    project_root,
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


def steps_per_epoch(samples: int, batch_size: int) -> int:
    return math.ceil(samples / batch_size)


def augment(images: tf.Tensor, params: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    """Random flips/shifts of a uint8 (N, 28, 28) batch, drawn from a stateless `seed` (2 ints).

    What keras.layers.RandomFlip("horizontal") and RandomTranslation(t, t, fill_mode="constant")
    do, without their random state: it advances with every batch, so a resumed run would draw
    other transformations than an uninterrupted one.
    """
    flip_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    n = tf.shape(images)[0]
    if params.horizontal_flip:
        flip = tf.random.stateless_uniform([n, 1, 1], flip_seed) < 0.5
        images = tf.where(flip, tf.reverse(images, axis=[2]), images)  # exact on uint8
    if params.translate:
        limit = params.translate * IMAGE_SIZE
        dx, dy = tf.unstack(tf.random.stateless_uniform([2, n, 1], shift_seed, -limit, limit))
        one, zero = tf.ones_like(dx), tf.zeros_like(dx)
        # Output pixel (x, y) samples the input at (x - dx, y - dy).
        transform = tf.concat([one, zero, -dx, zero, one, -dy, zero, zero], axis=1)
        moved = keras.ops.image.affine_transform(
            tf.cast(images[..., None], tf.float32), transform, fill_mode="constant"
        )[..., 0]
        # Shifts interpolate: round back to uint8 pixels, the model's input.
        images = tf.cast(tf.clip_by_value(tf.round(moved), 0, 255), tf.uint8)
    return images


def _pairs(split: Split) -> tf.data.Dataset:
    y = keras.utils.to_categorical(split.y, NUM_CLASSES).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((split.x, y))


def _sharded_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Under multi_worker each worker takes its part of every batch: there are no files to shard
    by (the default policy tries files first, and logs a warning when it falls back)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def train_batches(train: Split, params: TrainParams, first_epoch: int = 0) -> tf.data.Dataset:
    """(uint8 pixels, one-hot label) batches of epochs first_epoch+1 .. params.epochs, one epoch
    after another: fit it with steps_per_epoch.

    Epoch e's order and augmentation come from seeds derived from (params.seed, e) only, never
    from a random state that earlier epochs advanced: a run resumed at epoch e sees exactly the
    batches an uninterrupted run sees.
    """
    examples = _pairs(train)
    steps = steps_per_epoch(len(train), params.batch_size)
    aug = params.augmentation

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        order = examples.shuffle(
            len(train), seed=params.seed * 10_000 + e, reshuffle_each_iteration=False
        )
        batches = order.batch(params.batch_size)
        if not (aug.horizontal_flip or aug.translate):
            return batches

        def augmented(i: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]) -> tuple:
            seed = tf.stack([tf.constant(params.seed, tf.int64), e * steps + i])
            return augment(batch[0], aug, seed), batch[1]

        return batches.enumerate().map(
            augmented, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )

    # Never empty: under a distribution strategy fit() reads one batch even when no epoch is left.
    epochs = tf.data.Dataset.range(min(first_epoch, params.epochs - 1), params.epochs)
    return _sharded_by_data(epochs.flat_map(epoch).prefetch(tf.data.AUTOTUNE))


class Validation(keras.callbacks.Callback):
    """val_loss and val_accuracy of the model that will be saved, into each epoch's logs.

    First in the callback list, so EarlyStopping and the loggers read its numbers: the epoch kept
    is the one whose saved model (with model.test_time_flip, the flip-averaged answers) does best
    on the validation split. Direct calls on each worker, no collective step: under multi_worker
    every worker computes the same numbers.
    """

    def __init__(self, saved: keras.Model, val: Split, label_smoothing: float) -> None:
        super().__init__()
        self.saved = saved
        self.val = val
        self.loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        self._classifier: Classifier | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._classifier = self._classifier or Classifier(self.saved)
        proba = self._classifier.predict_proba(self.val.x)
        onehot = keras.utils.to_categorical(self.val.y, NUM_CLASSES)
        if logs is not None:
            logs["val_loss"] = float(keras.ops.convert_to_numpy(self.loss(onehot, proba)))
            logs["val_accuracy"] = float((proba.argmax(axis=1) == self.val.y).mean())


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


class EpochProgress(keras.callbacks.Callback):
    """Steps done, rate and ETA within each epoch, then one line per epoch with its metrics."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream
        self._progress: Progress | None = None

    def _label(self, epoch: int) -> str:
        return f"epoch {epoch + 1}/{self.params['epochs']}"

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._progress = Progress(self.params["steps"], self._label(epoch), stream=self.stream)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._progress.update(batch + 1)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        lr = self.model.optimizer.learning_rate  # where the schedule has got to
        logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(lr)))
        metrics = ", ".join(f"{name} {value:.4g}" for name, value in logs.items())
        took = duration(self._progress.elapsed)
        self._progress.finish(f"{self._label(epoch)} done in {took}: {metrics}")


def _same_start_everywhere(strategy: tf.distribute.Strategy, first_epoch: int) -> None:
    """Workers starting from different epochs would wait for each other forever."""
    if is_multi_worker(strategy) and len(set(starts := gathered(strategy, first_epoch))) > 1:
        raise RuntimeError(
            f"workers would start from different epochs {starts}: every worker must see the "
            f"chief's {STATE_DIR}/ (a shared filesystem), or delete it to start over"
        )


def fit_model(
    model_params: ModelParams,
    train_params: TrainParams,
    train: Split,
    val: Split,
    callbacks: list[keras.callbacks.Callback] = (),
    verbose: int = 1,
    strategy: tf.distribute.Strategy | None = None,
    resume: Resume | None = None,
) -> tuple[keras.Model, pd.DataFrame]:
    """Build, compile and fit the CNN; returns the model to save (best weights restored: the
    network, or with model.test_time_flip the network wrapped in it) and its history.

    verbose=0 prints nothing. With `resume`, the state is saved after every epoch, and training
    continues from resume.saved when there is one (history then includes its epochs).
    """
    strategy = strategy or distribution_strategy(train_params.distribution)
    set_seeds(train_params.seed)
    saved = resume.saved if resume else None
    first_epoch = saved.next_epoch(train_params.epochs) if saved else 0
    _same_start_everywhere(strategy, first_epoch)
    steps = steps_per_epoch(len(train), train_params.batch_size)
    with strategy.scope():
        model = build_model(model_params)
        saved = with_test_time_flip(model) if model_params.test_time_flip else model
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
        verbose=min(verbose, 1),
    )
    # Order matters: KeepState restores after EarlyStopping resets, and saves after the logger's
    # row and EarlyStopping's update; the epoch's line is printed once its state is on disk.
    keep = [KeepState(resume, stop, logger.rows)] if resume else []
    shown = [EpochProgress()] if verbose else []
    with keras_fixes(strategy):
        model.fit(
            train_batches(train, train_params, first_epoch),
            epochs=train_params.epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=steps,
            callbacks=[
                Validation(saved, val, train_params.label_smoothing),
                logger,
                stop,
                *keep,
                *shown,
                *callbacks,
            ],
            verbose=0,
            shuffle=False,  # the dataset shuffles, by epoch
        )
    history = pd.DataFrame(logger.rows)
    # EarlyStopping restores the weights of the first epoch with the best val_accuracy.
    history.attrs["best_epoch"] = int(history["val_accuracy"].idxmax()) + 1
    return saved, history


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


def _continued_run(saved: Saved | None, experiment_id: str) -> str | None:
    """The MLflow run of the saved state, if this tracking store still has it in the experiment."""
    run_id = saved.run.get("mlflow_run_id") if saved else None
    if not run_id:
        return None
    try:
        found = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        return None
    same = found.info.experiment_id == experiment_id and found.info.lifecycle_stage == "active"
    return run_id if same else None


def _train_as_worker(
    params: Params, train: Split, val: Split, strategy: tf.distribute.Strategy, state: TrainState
) -> None:
    """A worker other than the chief: trains in step with it from the same saved state (the
    chief's, read only), logs nothing, and saves its state and model to a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="train-worker-") as tmp:
        resume = Resume(TrainState(Path(tmp) / "state"), state.latest())
        model, history = fit_model(
            params.model, params.train, train, val, strategy=strategy, resume=resume
        )
        model.save(Path(tmp) / "model.keras")  # what the chief does; the file is thrown away
    wait_for_each_other(strategy)  # the chief, once it has logged and written the outputs
    print(
        f"{worker_name(strategy)}: trained {len(history)} epochs; the chief logs the run and "
        "writes the outputs"
    )


def run(params: Params, data_dir: Path, sources: Path, out: dict[str, Path]) -> str | None:
    """Train under an MLflow run and write the stage's outputs; returns the run id.

    `out` names the outputs: model (.keras), history (CSV), metrics and run (JSON). An interrupted
    run's state (same params, data and code) is resumed. Under multi_worker, workers other than the
    chief only train, and return None.
    """
    # Before any other TensorFlow op: MultiWorkerMirroredStrategy must configure the runtime.
    strategy = distribution_strategy(params.train.distribution)
    # After the strategy: MultiWorkerMirroredStrategy installs its own SIGTERM handler (TF's
    # preemption notifier, which would swallow the signal and let training go on).
    with signals_raise():
        chief = is_chief(strategy)
        experiment_id = use_experiment(params.mlflow.experiment_name) if chief else ""  # fail fast
        train, val = load_split(data_dir / "train.npz"), load_split(data_dir / "val.npz")
        tracked = params.model_dump(include={"model", "train"})
        key = state_key(
            tracked | {"experiment": params.mlflow.experiment_name}, content_hash(train, val)
        )
        if not chief:
            chiefs = TrainState(project_root() / STATE_DIR / key)
            _train_as_worker(params, train, val, strategy, chiefs)
            return None
        return _train_as_chief(params, train, val, sources, out, strategy, experiment_id, key)


def _train_as_chief(
    params: Params,
    train: Split,
    val: Split,
    sources: Path,
    out: dict[str, Path],
    strategy: tf.distribute.Strategy,
    experiment_id: str,
    key: str,
) -> str:
    """Train under an MLflow run (the interrupted one, when resuming), write the outputs."""
    provenance = json.loads(sources.read_text())
    blocks, dense = params.model.conv_blocks, params.model.dense
    table = format_table(
        layer_table(IMAGE_SIZE, blocks), forward_flops(IMAGE_SIZE, blocks, dense, NUM_CLASSES)
    )
    print(table)
    epochs = params.train.epochs
    with (
        claimed_state(project_root(), key) as state,
        tempfile.TemporaryDirectory(prefix="train-") as tmp,
    ):
        if state is None:
            print(
                f"another training with these params and data holds {STATE_DIR}/{key}/: "
                "this one keeps its state in a temporary directory"
            )
            state = TrainState(Path(tmp) / "state")
        saved = state.latest()
        continued = _continued_run(saved, experiment_id)
        if saved:
            print(f"resuming from epoch {saved.epoch} of {epochs}: {state.directory}")
        # Under `dvc exp run` the run is named after the experiment: the same name in both UIs.
        run_name = os.environ.get("DVC_EXP_NAME") or None
        with mlflow.start_run(
            run_id=continued,
            experiment_id=None if continued else experiment_id,
            run_name=None if continued else run_name,
            tags=None if continued else lineage_tags(train, val, params.train.seed),
        ) as active:
            run_id = active.info.run_id
            try:
                if continued:
                    mlflow.set_tag("resumed_from_epoch", saved.epoch)
                else:
                    mlflow.log_params(
                        flatten(params.model_dump(include={"prepare", "model", "train"}))
                    )
                    mlflow.log_params(
                        {"data.train_samples": len(train), "data.val_samples": len(val)}
                    )
                    log_split(train, "train", "train", provenance)
                    log_split(val, "validation", "train", provenance)
                    mlflow.log_text(table, "layer_table.txt")
                if saved and not continued:  # the state's run is gone: this run gets its epochs
                    mlflow.set_tags(
                        {
                            "resumed_from_epoch": saved.epoch,
                            "resumed_from_run_id": saved.run.get("mlflow_run_id", ""),
                        }
                    )
                    for row in saved.history:
                        mlflow.log_metrics(
                            {k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]
                        )
                started = time.perf_counter()
                resume = Resume(state, saved, {"mlflow_run_id": run_id})
                model, history = fit_model(
                    params.model, params.train, train, val, strategy=strategy, resume=resume
                )
                before = saved.run.get("train_seconds", 0.0) if saved else 0.0
                train_seconds = before + time.perf_counter() - started
                metrics = best_epoch_metrics(history) | {
                    "train_seconds": round(train_seconds, 1),
                    "param_count": model.count_params(),
                }
                mlflow.log_metrics(metrics)
                sample = val.x[:8]
                # A direct call, not predict(): under multi_worker, predict() would wait for the
                # other workers.
                predicted = keras.ops.convert_to_numpy(model(sample, training=False))
                info = mlflow.keras.log_model(
                    model, name="model", signature=infer_signature(sample, predicted)
                )
                # The DVC output is the logged file itself, so one SHA-256 names the model
                # everywhere.
                logged = download_keras_file(info.model_uri, Path(tmp))
                model_sha256 = file_sha256(logged)
                mlflow.set_tag("model_sha256", model_sha256)
                mlflow.log_text(history.to_csv(index=False), "train_history.csv")
                write_atomically(out["model"], lambda dest: shutil.copyfile(logged, dest))
                write_atomically(out["history"], lambda dest: history.to_csv(dest, index=False))
                _write_json(out["metrics"], metrics)
                _write_json(
                    out["run"], {"mlflow_run_id": run_id, "mlflow_experiment_id": experiment_id}
                )
            except KeyboardInterrupt:  # Interrupted by SIGTERM/SIGINT, or Ctrl-C
                mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
                kept = state.latest()
                where = (
                    f"the state of epoch {kept.epoch} of {epochs} is kept in {state.directory}: "
                    "the next run with the same params and data resumes from it"
                    if kept
                    else "no epoch finished: the next run starts over"
                )
                print(f"interrupted: MLflow run {run_id} marked KILLED; {where}", flush=True)
                raise
        state.discard()  # finished: the outputs are written
    wait_for_each_other(strategy)  # the other workers wait for this before they exit
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
    except Interrupted as err:
        print(f"train: stopped by {err.name}", file=sys.stderr)
        sys.exit(128 + err.signum)  # the shell's convention for "ended by a signal"


if __name__ == "__main__":
    main()
