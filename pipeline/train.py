"""Stage `train`: fit the CNN described in params.yaml, tracked as an MLflow run.

Outputs models/model.keras (byte for byte the model logged to MLflow, whose SHA-256 the run
records), the per-epoch history CSV (a DVC plot), the validation metrics of the kept weights
(DVC metrics) and run.json with the MLflow run that the evaluate and register stages continue.

The training loop itself is pipeline/training/fit.py; this module runs it under an MLflow run and
writes the outputs. Progress: steps, rate and ETA within each epoch, one line per epoch
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
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import mlflow
import pandas as pd
import tensorflow as tf
from mlflow.entities import RunStatus
from mlflow.models import infer_signature

from pipeline.core.architecture import layer_table
from pipeline.core.fashion_mnist import IMAGE_SIZE, NUM_CLASSES
from pipeline.core.inference import file_sha256
from pipeline.core.params import Params, flatten, load_params
from pipeline.reporting.flops import format_table, forward_flops
from pipeline.shared.dataset import Split, content_hash, load_split, write_atomically
from pipeline.shared.tracking import (
    TrackingUnavailable,
    download_keras_file,
    lineage_tags,
    log_split,
    project_root,
    tracking_access,
    use_experiment,
)
from pipeline.training.fine_tune import FineTuneError, Start, champion_start, schedule
from pipeline.training.fit import best_epoch_metrics, distribution_strategy, fit_model
from pipeline.training.multi_worker import (
    is_chief,
    wait_for_each_other,
    worker_name,
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


def _write_json(path: Path, record: dict) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


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
        start = champion_start(params) if params.train.init == "champion" else None
        if start:  # a state is only valid for the weights it began with
            tracked["init"] = start.record()
        key = state_key(
            tracked | {"experiment": params.mlflow.experiment_name}, content_hash(train, val)
        )
        if not chief:
            chiefs = TrainState(project_root() / STATE_DIR / key)
            _train_as_worker(params, train, val, strategy, chiefs)
            return None
        where = (experiment_id, key, start)
        return _train_as_chief(params, train, val, sources, out, strategy, where)


def _train_as_chief(
    params: Params,
    train: Split,
    val: Split,
    sources: Path,
    out: dict[str, Path],
    strategy: tf.distribute.Strategy,
    where: tuple[str, str, Start | None],
) -> str:
    """Train under an MLflow run (the interrupted one, when resuming), write the outputs.
    `where`: the experiment id, the state's key and the champion it starts from (or None)."""
    experiment_id, key, start = where
    blocks, dense = params.model.conv_blocks, params.model.dense
    table = format_table(
        layer_table(IMAGE_SIZE, blocks), forward_flops(IMAGE_SIZE, blocks, dense, NUM_CLASSES)
    )
    print(table)
    trained = schedule(params.train)
    epochs = trained.epochs
    if start:
        print(start.describe(trained))
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
        continued = continued_run(saved, experiment_id)
        if saved:
            print(f"resuming from epoch {saved.epoch} of {epochs}: {state.directory}")
        # Under `dvc exp run` the run is named after the experiment: the same name in both UIs.
        run_name = os.environ.get("DVC_EXP_NAME") or None
        init_tags = start.tags() if start else {}
        with mlflow.start_run(
            run_id=continued,
            experiment_id=None if continued else experiment_id,
            run_name=None if continued else run_name,
            tags=None if continued else lineage_tags(train, val, params.train.seed) | init_tags,
        ) as active:
            run_id = active.info.run_id
            try:
                if continued:
                    mlflow.set_tag("resumed_from_epoch", saved.epoch)
                else:
                    _log_inputs(params, train, val, json.loads(sources.read_text()), table)
                if saved and not continued:  # the state's run is gone: this run gets its epochs
                    _log_saved_epochs(saved)
                started = time.perf_counter()
                resume = Resume(state, saved, {"mlflow_run_id": run_id})
                model, history = fit_model(
                    params.model, trained, train, val, strategy=strategy, resume=resume,
                    initial_weights=start.weights if start else None,
                )  # fmt: skip
                before = saved.run.get("train_seconds", 0.0) if saved else 0.0
                train_seconds = before + time.perf_counter() - started
                metrics = best_epoch_metrics(history) | {
                    "train_seconds": round(train_seconds, 1),
                    "param_count": model.count_params(),
                }
                metrics |= {k: v for k, v in history.attrs.items() if k.startswith("init_")}
                mlflow.log_metrics(metrics)
                model_sha256 = _log_and_write(model, history, val, Path(tmp), out)
                _write_json(out["metrics"], metrics)
                ran = {"mlflow_run_id": run_id, "mlflow_experiment_id": experiment_id}
                _write_json(out["run"], ran | ({"init": start.record()} if start else {}))
            except KeyboardInterrupt:  # Interrupted by SIGTERM/SIGINT, or Ctrl-C
                _mark_interrupted(run_id, state, epochs)
                raise
        state.discard()  # finished: the outputs are written
    wait_for_each_other(strategy)  # the other workers wait for this before they exit
    print(
        f"MLflow run {run_id}: trained in {train_seconds:.0f} s, best epoch {metrics['best_epoch']} "
        f"(val accuracy {metrics['best_val_accuracy']:.4f}), model sha256 {model_sha256[:12]}"
    )
    return run_id


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
    print(f"interrupted: MLflow run {run_id} marked KILLED; {where}", flush=True)


def _log_inputs(params: Params, train: Split, val: Split, provenance: dict, table: str) -> None:
    """A new run's params, datasets (with where the files came from) and layer table."""
    mlflow.log_params(flatten(params.model_dump(include={"prepare", "model", "train"})))
    mlflow.log_params({"data.train_samples": len(train), "data.val_samples": len(val)})
    log_split(train, "train", "train", provenance)
    log_split(val, "validation", "train", provenance)
    mlflow.log_text(table, "layer_table.txt")


def _log_saved_epochs(saved: Saved) -> None:
    """Resuming a state whose run is gone: this run records where it came from and its epochs."""
    mlflow.set_tags(
        {
            "resumed_from_epoch": saved.epoch,
            "resumed_from_run_id": saved.run.get("mlflow_run_id", ""),
        }
    )
    for row in saved.history:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _log_and_write(
    model: keras.Model, history: pd.DataFrame, val: Split, tmp: Path, out: dict[str, Path]
) -> str:
    """Log the model and history to the active run, then write the model and history outputs;
    returns the model file's SHA-256."""
    sample = val.x[:8]
    # A direct call, not predict(): under multi_worker, predict() would wait for the other workers.
    predicted = keras.ops.convert_to_numpy(model(sample, training=False))
    info = mlflow.keras.log_model(model, name="model", signature=infer_signature(sample, predicted))
    # The DVC output is the logged file itself, so one SHA-256 names the model everywhere.
    logged = download_keras_file(info.model_uri, tmp)
    model_sha256 = file_sha256(logged)
    mlflow.set_tag("model_sha256", model_sha256)
    mlflow.log_text(history.to_csv(index=False), "train_history.csv")
    write_atomically(out["model"], lambda dest: shutil.copyfile(logged, dest))
    write_atomically(out["history"], lambda dest: history.to_csv(dest, index=False))
    return model_sha256


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
        with tracking_access():
            run(params, args.data, args.sources, out)
    except (TrackingUnavailable, FineTuneError) as err:
        sys.exit(f"train failed: {err}")
    except Interrupted as err:
        print(f"train: stopped by {err.name}", file=sys.stderr)
        sys.exit(128 + err.signum)  # the shell's convention for "ended by a signal"


if __name__ == "__main__":
    main()
