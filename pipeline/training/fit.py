"""The training loop: the seeded, resumable, per-epoch-logged fit of the CNN (`fit_model`), with
its learning-rate schedule, optimizer, augmentation and epoch-ordered batches.

Callers (stage `train`, the training benchmark, tests) pass params and splits and get the model to
save and its history; where it is saved and logged is theirs to decide. A fine-tuning passes the
weights to start from (fine_tune.py). Past 300 lines because the loop and its callbacks are one
unit: their order matters (fit_model says why), and one file keeps it in view.
"""

from __future__ import annotations

import math
import time
from typing import TextIO

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline.core.fashion_mnist import IMAGE_SIZE, NUM_CLASSES
from pipeline.core.params import Augmentation, ModelParams, TrainParams
from pipeline.shared.dataset import Split
from pipeline.shared.keras_runtime import Classifier
from pipeline.shared.progress import Progress, duration
from pipeline.training.model import build_model, with_test_time_flip
from pipeline.training.multi_worker import gathered, is_multi_worker, keras_fixes
from pipeline.training.resume import STATE_DIR, KeepState, Resume


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

    def scores(self) -> dict[str, float]:
        """val_loss and val_accuracy of the saved model's weights as they are now."""
        self._classifier = self._classifier or Classifier(self.saved)
        proba = self._classifier.predict_proba(self.val.x)
        onehot = keras.utils.to_categorical(self.val.y, NUM_CLASSES)
        return {
            "val_loss": float(keras.ops.convert_to_numpy(self.loss(onehot, proba))),
            "val_accuracy": float((proba.argmax(axis=1) == self.val.y).mean()),
        }

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        scores = self.scores()
        if logs is not None:
            logs.update(scores)


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
    initial_weights: list[np.ndarray] | None = None,
) -> tuple[keras.Model, pd.DataFrame]:
    """Build, compile and fit the CNN; returns the model to save (best weights restored: the
    network, or with model.test_time_flip the network wrapped in it) and its history.

    verbose=0 prints nothing. With `resume`, the state is saved after every epoch, and training
    continues from resume.saved when there is one (history then includes its epochs).
    `initial_weights` (the network's, e.g. the champion's: fine_tune.py) replace the random ones
    before training; their validation scores are history.attrs' init_val_loss/init_val_accuracy.
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
        if initial_weights is not None:
            model.set_weights(initial_weights)
    validation = Validation(saved, val, train_params.label_smoothing)
    start = validation.scores() if initial_weights is not None else {}
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
                validation,
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
    history.attrs |= {f"init_{k}": v for k, v in start.items()}
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
