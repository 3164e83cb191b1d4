"""Training on several workers (params `train.distribution: multi_worker`, cluster from TF_CONFIG).

Every worker trains (MultiWorkerMirroredStrategy keeps their weights identical); only the chief
logs to MLflow and writes the stage's outputs, and the others write what they must save to a
temporary directory, as TensorFlow's multi-worker guide asks.

Keras 3.15's `fit` fails under MultiWorkerMirroredStrategy as soon as there are two workers
(keras-team/keras#20585, open; also in Keras's current source); `keras_fixes()` patches the two
places while `fit` runs:

- `TensorFlowTrainer._maybe_symbolic_build` averages one input batch across workers with
  `strategy.reduce("MEAN", (x, y), axis=None)`, which cannot reduce a nested batch ("Attempt to
  convert a value (PerReplica ...) with an unsupported type ... to a Tensor"). It needs only the
  batch's shapes and dtypes, so the fix takes this worker's own batch.
- `reduce_per_replica` averages each step's loss and metrics with `strategy.reduce("MEAN", v,
  axis=0)`, which fails on scalars ("Invalid reduction dimension 0 for input with 0 dimensions");
  the fix averages them across workers with axis=None, so every worker sees the same metrics and
  early stopping decides the same on all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf
from keras import tree
from keras.src.backend.tensorflow import trainer as tf_trainer


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the one process that logs and writes outputs (always, without multi_worker)."""
    return strategy.extended.should_checkpoint


def worker_name(strategy: tf.distribute.Strategy) -> str:
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type} {resolver.task_id}" if resolver else "worker"


def gathered(strategy: tf.distribute.Strategy, value: int) -> list[int]:
    """`value` from every replica, in replica order (a collective: all workers must call it)."""
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([value], tf.int64)
    )
    return [int(v) for v in strategy.gather(per_replica, axis=0).numpy()]


def wait_for_each_other(strategy: tf.distribute.Strategy) -> None:
    """Return when every worker got here. A worker that exits while the chief still logs makes the
    chief's runtime report it "unhealthy (stopped sending heartbeats)"; so all end together."""
    if is_multi_worker(strategy):
        gathered(strategy, 0)


def _local_symbolic_build(
    self: keras.Model, iterator: object = None, data_batch: object = None
) -> None:
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tree.map_structure(
                lambda v: (
                    self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                batch,
            )
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


@contextlib.contextmanager
def keras_fixes(strategy: tf.distribute.Strategy) -> Iterator[None]:
    """Patch Keras for multi-worker `fit` while the block runs (nothing to do otherwise)."""
    if not is_multi_worker(strategy):
        yield
        return
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(
        values: object, strategy: tf.distribute.Strategy, reduction: str
    ) -> object:
        if reduction in ("auto", "mean"):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _local_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.TensorFlowTrainer._maybe_symbolic_build = original_build
        tf_trainer.reduce_per_replica = original_reduce
