"""Resumable training: SIGTERM or SIGINT keeps the state of the last finished epoch, and the next run
with the same params, data and code continues from it.

The state lives in <root>/.train-state/<key>/ (ignored by git and DVC: it is not a stage output),
one finished epoch at a time:

    epoch-0007/model.weights.h5   weights and optimizer state (its step count drives the LR schedule)
    epoch-0007/rng.npz            the model's random generator states (dropout), not in the weights file
    epoch-0007/best.npz           early stopping's best weights so far
    epoch-0007/state.json         epochs done, early stopping's counters, history rows, the MLflow run

Keras 3.15's BackupAndRestore keeps only weights, optimizer and epoch: dropout would draw other
masks after a restart, and EarlyStopping starts over (its best epoch and weights are lost, so the
kept model could be a worse epoch). Each epoch is written to a temporary directory that is then
renamed, so a kill during a save leaves the previous epoch intact. The data order and augmentation
of an epoch depend on (seed, epoch) only (pipeline/train.py), so a resumed run sees the same
batches as an uninterrupted one.

The key hashes everything the state is only valid for: model and train params, the data, the
project's code and the library versions. A run with another key deletes the stale states it finds
(unless another training holds them: each state directory is locked while its training runs).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

STATE_DIR = ".train-state"
_LOCK = "lock"
_EPOCH = "epoch-{:04d}"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived (raised in the main thread, between two Python instructions)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn the first SIGTERM or SIGINT into Interrupted, so `finally` blocks and MLflow's run
    status get their chance (SIGTERM's default action ends the process on the spot). A second
    signal gets the previous handler: a stuck clean-up can still be killed."""
    previous = {s: signal.getsignal(s) for s in _SIGNALS}

    def handler(signum: int, frame: object) -> None:
        for s, h in previous.items():
            signal.signal(s, h)
        raise Interrupted(signum)

    for s in _SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def state_key(params: dict, data_hash: str) -> str:
    """Names a state: a hash of the params (model and train), the data, the source of every loaded
    module of this package (changed code may train differently or not load the weights) and the
    TensorFlow and Keras versions."""
    here = Path(__file__).resolve().parent
    sources = sorted(
        {
            Path(m.__file__).resolve()
            for m in list(sys.modules.values())
            if getattr(m, "__file__", None) and Path(m.__file__).resolve().parent == here
        }
    )
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    h.update(data_hash.encode())
    for path in sources:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(f"tensorflow {version('tensorflow')} keras {keras.__version__}".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Saved:
    """The state of the last finished epoch."""

    directory: Path
    epoch: int  # epochs finished
    stopped: bool  # early stopping ended the training after `epoch`
    history: list[dict]
    early_stopping: dict
    run: dict  # the MLflow run to continue, and the training seconds spent so far

    def next_epoch(self, epochs: int) -> int:
        """The epoch index fit() starts from (0-based): no epoch is left after early stopping."""
        return epochs if self.stopped else self.epoch


def _rng_variables(model: keras.Model) -> list:
    """The model's random generator states: its variables that are not weights."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class TrainState:
    """One training's state directory: save an epoch, read the latest one, discard it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def latest(self) -> Saved | None:
        """The last saved epoch, or None."""
        epochs = sorted(self.directory.glob("epoch-[0-9]*")) if self.directory.is_dir() else []
        if not epochs:
            return None
        record = json.loads((epochs[-1] / "state.json").read_text())
        return Saved(directory=epochs[-1], **record)

    def save(
        self,
        epoch: int,
        model: keras.Model,
        stop: keras.callbacks.EarlyStopping,
        history: list[dict],
        run: dict,
    ) -> None:
        """Write the state after `epoch` epochs, atomically, and delete the previous epoch's."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for partial in self.directory.glob(".epoch-*.tmp"):  # left by a kill during a save
            shutil.rmtree(partial)
        final = self.directory / _EPOCH.format(epoch)
        tmp = self.directory / f".{final.name}.tmp"
        tmp.mkdir()
        model.save_weights(tmp / "model.weights.h5")
        np.savez(tmp / "rng.npz", *[keras.ops.convert_to_numpy(v) for v in _rng_variables(model)])
        np.savez(tmp / "best.npz", *(stop.best_weights or []))
        record = {
            "epoch": epoch,
            "stopped": bool(model.stop_training),
            "history": history,
            "early_stopping": {
                "best": None if stop.best is None else float(stop.best),
                "best_epoch": stop.best_epoch,
                "wait": stop.wait,
                "stopped_epoch": stop.stopped_epoch,
            },
            "run": run,
        }
        (tmp / "state.json").write_text(json.dumps(record, indent=1) + "\n")
        if final.exists():  # the same epoch saved before: only after a resume at its end
            shutil.rmtree(final)
        tmp.rename(final)
        for old in self.directory.glob("epoch-[0-9]*"):
            if old != final:
                shutil.rmtree(old)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def restore(
    saved: Saved, model: keras.Model, stop: keras.callbacks.EarlyStopping, history: list[dict]
) -> None:
    """Put a saved state back: weights, optimizer, random generators, early stopping, history."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded
    model.load_weights(saved.directory / "model.weights.h5")
    variables = _rng_variables(model)
    with np.load(saved.directory / "rng.npz") as rng:
        if len(rng.files) != len(variables):
            raise ValueError(
                f"{saved.directory}: {len(rng.files)} generator states, model has {len(variables)}"
            )
        for i, variable in enumerate(variables):
            variable.assign(rng[f"arr_{i}"])
    with np.load(saved.directory / "best.npz") as best:
        stop.best_weights = [best[f"arr_{i}"] for i in range(len(best.files))] or None
    for name, value in saved.early_stopping.items():
        setattr(stop, name, value)
    history[:] = saved.history


def continued_run(saved: Saved | None, experiment_id: str) -> str | None:
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


@dataclass
class Resume:
    """Where a training saves its state after each epoch, and the state it starts from."""

    state: TrainState
    saved: Saved | None = None
    run: dict = field(default_factory=dict)  # stored with each epoch: the MLflow run id


class KeepState(keras.callbacks.Callback):
    """Restores `resume.saved` when training begins and saves the state after each epoch.

    Put it after EarlyStopping (whose on_train_begin resets what this restores) and after the
    callback that appends the epoch's history row.
    """

    def __init__(
        self, resume: Resume, stop: keras.callbacks.EarlyStopping, history: list[dict]
    ) -> None:
        super().__init__()
        self.resume, self.stop, self.history = resume, stop, history
        self._began = 0.0

    @property
    def seconds_before(self) -> float:
        saved = self.resume.saved
        return saved.run.get("train_seconds", 0.0) if saved else 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._began = time.perf_counter()
        if self.resume.saved is not None:
            restore(self.resume.saved, self.model, self.stop, self.history)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = self.seconds_before + time.perf_counter() - self._began
        run = self.resume.run | {"train_seconds": round(seconds, 1)}
        self.resume.state.save(epoch + 1, self.model, self.stop, list(self.history), run)


@contextlib.contextmanager
def claimed_state(root: Path, key: str) -> Iterator[TrainState | None]:
    """The state directory of `key` under root/STATE_DIR, locked while the block runs; None when
    another process holds it (the same training running twice). Other keys' states that no
    running training holds are stale (other params, data or code) and deleted."""
    base = root / STATE_DIR
    # Our own lock first: a training starting at the same time then sees this state as in use.
    with _locked(base / key) as got:
        for other in base.iterdir():
            if other.name != key and other.is_dir():
                with _locked(other) as unused:
                    if unused:
                        shutil.rmtree(other)
                        log.info(
                            "deleted stale training state %s (other params, data or code)", other
                        )
        yield TrainState(base / key) if got else None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[bool]:
    """An exclusive, non-blocking flock on directory/lock; yields whether it was obtained."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / _LOCK).open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
