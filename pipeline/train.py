"""Stage `train`: fit the CNN described in params.yaml, tracked as an MLflow run.

Outputs models/model.keras (byte for byte the model logged to MLflow, whose SHA-256 the run
records), the per-epoch history CSV (a DVC plot), the validation metrics of the kept weights
(DVC metrics) and run.json with the MLflow run that the evaluate and register stages continue.

The training loop itself is pipeline/training/fit.py; this module runs it under an MLflow run, in
named steps (`_train_as_chief`), and pipeline/training/outputs.py logs and writes the outputs. Progress: steps, rate and ETA within each epoch, one line per epoch
(pipeline/shared/progress.py). Resumable: SIGTERM/SIGINT marks the MLflow run KILLED and keeps the
last finished epoch's state; the next run with the same params, data and code continues it, in the
same MLflow run (pipeline/training/resume.py). With `train.distribution: multi_worker` only the
chief logs and writes the outputs (pipeline/training/multi_worker.py). `train.init: champion`
fine-tunes the MLflow @champion instead (pipeline/training/fine_tune.py).
"""

from __future__ import annotations

import pipeline.training.quiet_tensorflow  # noqa: F401 (first: it filters TensorFlow's start-up log)

# isort: split

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import tensorflow as tf
from mlflow.entities import RunStatus

from pipeline.core import paths
from pipeline.core.architecture import layer_table
from pipeline.core.fashion_mnist import IMAGE_SIZE, NUM_CLASSES
from pipeline.core.params import ModelParams, Params, TrainParams, load_params
from pipeline.reporting.flops import format_table, forward_flops
from pipeline.shared.dataset import Split, content_hash, load_split
from pipeline.shared.logs import configure_logging
from pipeline.shared.machine import trained_on
from pipeline.shared.tracking import (
    TrackingUnavailable,
    lineage_tags,
    project_root,
    tracking_access,
    use_experiment,
)
from pipeline.training.fine_tune import FineTuneError, Start, champion_start, schedule
from pipeline.training.fit import distribution_strategy, fit_model
from pipeline.training.multi_worker import is_chief, wait_for_each_other, worker_name
from pipeline.training.outputs import (
    Fitted,
    TrainOutputs,
    log_and_write,
    log_inputs,
    log_saved_epochs,
)
from pipeline.training.resume import (
    STATE_DIR,
    Interrupted,
    Resume,
    Saved,
    TrainState,
    claimed_state,
    continued_run,
    signals_raise,
    state_key,
)

log = logging.getLogger("pipeline.train")


@dataclass(frozen=True)
class Training:
    """One training, as the chief and every other worker run it."""

    params: Params
    schedule: TrainParams  # train's values, or fine_tune's epochs and learning rate
    train: Split
    val: Split
    strategy: tf.distribute.Strategy
    key: str  # names the saved state: params, data and code (resume.py's state_key)
    start: Start | None  # the champion a fine-tuning starts from; None: from scratch


def run(params: Params, data_dir: Path, sources: Path, out: TrainOutputs) -> str | None:
    """Train under an MLflow run and write the stage's outputs; returns the run id.

    An interrupted run's state (same params, data and code) is resumed. Under multi_worker,
    workers other than the chief only train, and return None.
    """
    # Before any other TensorFlow op: MultiWorkerMirroredStrategy must configure the runtime.
    strategy = distribution_strategy(params.train.distribution)
    # After the strategy: MultiWorkerMirroredStrategy installs its own SIGTERM handler (TF's
    # preemption notifier, which would swallow the signal and let training go on).
    with signals_raise():
        chief = is_chief(strategy)
        experiment_id = use_experiment(params.mlflow.experiment_name) if chief else ""  # fail fast
        train = load_split(data_dir / paths.SPLIT_FILES["train"])
        val = load_split(data_dir / paths.SPLIT_FILES["val"])
        tracked = params.model_dump(include={"model", "train"})
        start = champion_start(params) if params.train.init == "champion" else None
        if start:  # a state is only valid for the weights it began with
            tracked["init"] = start.record()
        key = state_key(
            tracked | {"experiment": params.mlflow.experiment_name}, content_hash(train, val)
        )
        job = Training(params, schedule(params.train), train, val, strategy, key, start)
        if not chief:
            _train_as_worker(job, TrainState(project_root() / STATE_DIR / key))
            return None
        return _train_as_chief(job, experiment_id, sources, out)


def _train_as_worker(job: Training, chiefs: TrainState) -> None:
    """A worker other than the chief: trains in step with it from the same saved state (the
    chief's, read only), logs nothing, and saves its state and model to a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="train-worker-") as tmp:
        resume = Resume(TrainState(Path(tmp) / "state"), chiefs.latest())
        model, history = fit_model(
            job.params.model, job.schedule, job.train, job.val, strategy=job.strategy, resume=resume
        )
        model.save(Path(tmp) / "model.keras")  # what the chief does; the file is thrown away
    wait_for_each_other(job.strategy)  # the chief, once it has logged and written the outputs
    print(
        f"{worker_name(job.strategy)}: trained {len(history)} epochs; the chief logs the run and "
        "writes the outputs"
    )


def _train_as_chief(job: Training, experiment_id: str, sources: Path, out: TrainOutputs) -> str:
    """Train under an MLflow run (the interrupted one, when resuming), write the outputs."""
    table = layer_table_text(job.params.model)
    print(table)
    if job.start:
        print(job.start.describe(job.schedule))
    with _state_directory(job.key) as state:
        saved = state.latest()
        continued = continued_run(saved, experiment_id)
        if saved:
            print(f"resuming from epoch {saved.epoch} of {job.schedule.epochs}: {state.directory}")
        with _start_run(job, experiment_id, continued) as active:
            run_id = active.info.run_id
            try:
                _log_start(job, saved, continued, json.loads(sources.read_text()), table)
                fitted = _fit(job, Resume(state, saved, {"mlflow_run_id": run_id}))
                # The machine beside the run: train_seconds means nothing without it.
                ran = {
                    "mlflow_run_id": run_id,
                    "mlflow_experiment_id": experiment_id,
                    "machine": trained_on(),
                }
                ran |= {"init": job.start.record()} if job.start else {}
                mlflow.set_tag("machine", ran["machine"])
                trained = log_and_write(fitted, job.val, out, ran)
            except KeyboardInterrupt:  # Interrupted by SIGTERM/SIGINT, or Ctrl-C
                _mark_interrupted(run_id, state, job.schedule.epochs)
                raise
        state.discard()  # finished: the outputs are written
    wait_for_each_other(job.strategy)  # the other workers wait for this before they exit
    print(trained.summary())
    return run_id


def layer_table_text(model: ModelParams) -> str:
    """The layer table with each layer's FLOPs, as train prints it and logs it to the run."""
    blocks, dense = model.conv_blocks, model.dense
    return format_table(
        layer_table(IMAGE_SIZE, blocks), forward_flops(IMAGE_SIZE, blocks, dense, NUM_CLASSES)
    )


@contextlib.contextmanager
def _state_directory(key: str) -> Iterator[TrainState]:
    """This training's state: .train-state/<key>/, held while it trains; a temporary one when
    another training with the same params and data holds that."""
    with (
        claimed_state(project_root(), key) as state,
        tempfile.TemporaryDirectory(prefix="train-") as tmp,
    ):
        if state is None:
            log.warning(
                "another training with these params and data holds %s/%s/: this one keeps its "
                "state in a temporary directory",
                STATE_DIR,
                key,
            )
            state = TrainState(Path(tmp) / "state")
        yield state


def _start_run(job: Training, experiment_id: str, continued: str | None) -> mlflow.ActiveRun:
    """The saved state's MLflow run, continued, or a new one with the lineage tags."""
    if continued:
        return mlflow.start_run(run_id=continued)
    # Under `dvc exp run` the run is named after the experiment: the same name in both UIs.
    tags = lineage_tags(job.train, job.val, job.params.train.seed)
    return mlflow.start_run(
        experiment_id=experiment_id,
        run_name=os.environ.get("DVC_EXP_NAME") or None,
        tags=tags | (job.start.tags() if job.start else {}),
    )


def _log_start(
    job: Training, saved: Saved | None, continued: str | None, provenance: dict, table: str
) -> None:
    """A continued run notes the epoch it resumes from; a new one logs its inputs, and the epochs
    of a saved state whose run is gone."""
    if continued:
        mlflow.set_tag("resumed_from_epoch", saved.epoch)
        return
    log_inputs(job.params, job.train, job.val, provenance, table)
    if saved:
        log_saved_epochs(saved)


def _fit(job: Training, resume: Resume) -> Fitted:
    """fit_model from the saved state (if any), timed across resumes."""
    started = time.perf_counter()
    model, history = fit_model(
        job.params.model,
        job.schedule,
        job.train,
        job.val,
        strategy=job.strategy,
        resume=resume,
        initial_weights=job.start.weights if job.start else None,
    )
    before = resume.saved.run.get("train_seconds", 0.0) if resume.saved else 0.0
    return Fitted(model, history, before + time.perf_counter() - started)


def _mark_interrupted(run_id: str, state: TrainState, epochs: int) -> None:
    """The run is KILLED in MLflow; say what the next run will resume from."""
    mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
    kept = state.latest()
    where = (
        f"the state of epoch {kept.epoch} of {epochs} is kept in {state.directory}: "
        "the next run with the same params and data resumes from it"
        if kept
        else "no epoch finished: the next run starts over"
    )
    log.warning("interrupted: MLflow run %s marked KILLED; %s", run_id, where)


def main() -> None:
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    parser.add_argument("--data", type=Path, default=paths.PREPARED, help="prepared .npz splits")
    parser.add_argument(
        "--sources", type=Path, default=paths.SOURCES, help="fetch's sources.json (provenance)"
    )
    parser.add_argument("--model", type=Path, default=paths.MODEL, help="output .keras file")
    parser.add_argument("--history", type=Path, default=paths.HISTORY, help="output per-epoch CSV")
    parser.add_argument(
        "--metrics", type=Path, default=paths.TRAIN_METRICS, help="output validation metrics"
    )
    parser.add_argument(
        "--run", type=Path, default=paths.TRAIN_RUN, help="output JSON with the MLflow run id"
    )
    args = parser.parse_args()
    params = load_params(args.params)
    out = TrainOutputs(args.model, args.history, args.metrics, args.run)
    try:
        with tracking_access():
            run(params, args.data, args.sources, out)
    except (TrackingUnavailable, FineTuneError) as err:
        sys.exit(f"train failed: {err}")
    except Interrupted as err:
        log.error("train: stopped by %s", err.name)
        sys.exit(128 + err.signum)  # the shell's convention for "ended by a signal"


if __name__ == "__main__":
    main()
