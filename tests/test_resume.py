"""Resumable training: an interrupted run continues to the weights of an uninterrupted one, and
SIGTERM during the train stage leaves a KILLED MLflow run and a state the next run resumes.

The state's key and claiming: tests/test_resume_state.py.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import base_env, set_params
from test_quiet_tensorflow import NOISE
from test_train import small_params, tiny

from pipeline.training.fit import fit_model, train_batches
from pipeline.training.model import network
from pipeline.training.resume import STATE_DIR, Resume, TrainState

pytestmark = pytest.mark.model


class StopAtEpoch(keras.callbacks.Callback):
    """Interrupts training as a signal would: an exception at the start of epoch `epoch` (0-based)."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def assert_same_weights(a: keras.Model, b: keras.Model) -> None:
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_resumed_training_ends_with_the_uninterrupted_weights_and_history(tmp_path):
    # Dropout, flips and shifts, a cosine schedule with warm-up: every source of randomness and
    # every piece of state that a restart could lose.
    model_params, train_params = small_params(epochs=4, warmup_epochs=1)
    model_params = model_params.model_copy(
        update={
            "conv_blocks": [b.model_copy(update={"dropout": 0.2}) for b in model_params.conv_blocks]
        }
    )
    train_params = train_params.model_copy(
        update={"augmentation": train_params.augmentation.model_copy(update={"translate": 0.1})}
    )
    data, val = tiny(80, 0), tiny(20, 1)
    whole, whole_history = fit_model(model_params, train_params, data, val, verbose=0)

    state = TrainState(tmp_path / "state")
    with pytest.raises(KeyboardInterrupt):
        fit_model(model_params, train_params, data, val, [StopAtEpoch(2)], 0, resume=Resume(state))
    saved = state.latest()
    assert saved.epoch == 2 and len(saved.history) == 2
    resumed, history = fit_model(
        model_params, train_params, data, val, verbose=0, resume=Resume(state, saved)
    )
    assert_same_weights(whole, resumed)
    iterations = [int(network(m).optimizer.iterations) for m in (resumed, whole)]
    assert iterations[0] == iterations[1]
    cols = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
    pd.testing.assert_frame_equal(history[cols], whole_history[cols])
    assert history.attrs == whole_history.attrs


def test_early_stopped_state_resumes_to_the_best_weights_without_training(tmp_path):
    model_params, train_params = small_params(epochs=8, early_stopping_patience=1)
    data, val = tiny(64, 0), tiny(20, 1)
    state = TrainState(tmp_path / "state")
    first, history = fit_model(
        model_params, train_params, data, val, verbose=0, resume=Resume(state)
    )
    saved = state.latest()
    assert saved.stopped and saved.epoch == len(history) < 8  # early stopping ended it
    again, history_again = fit_model(
        model_params, train_params, data, val, verbose=0, resume=Resume(state, saved)
    )
    assert_same_weights(first, again)  # the best epoch's weights, restored from the state
    assert history_again.equals(history) and history_again.attrs == history.attrs


def test_an_epochs_batches_do_not_depend_on_where_training_started():
    _, train_params = small_params(epochs=3)
    train_params = train_params.model_copy(
        update={"augmentation": train_params.augmentation.model_copy(update={"translate": 0.1})}
    )
    data = tiny(40, 0)
    steps = 3  # 40 images in batches of 16

    def batches(first_epoch: int) -> list[np.ndarray]:
        return [x.numpy() for x, _ in train_batches(data, train_params, first_epoch)]

    from_start, from_epoch_2 = batches(0), batches(1)
    assert len(from_start) == 3 * steps and len(from_epoch_2) == 2 * steps
    for a, b in zip(from_start[steps:], from_epoch_2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(from_start[0], from_start[steps])  # epochs differ


def train_command(params: Path, out: Path) -> list[str]:
    """The data and sources at their defaults (dvc.yaml's paths); the outputs in `out`."""
    cmd = [sys.executable, "-m", "pipeline.train", "--params", str(params)]
    cmd += ["--model", str(out / "model.keras"), "--history", str(out / "history.csv")]
    return [*cmd, "--metrics", str(out / "metrics.json"), "--run", str(out / "run.json")]


def test_sigterm_keeps_the_state_and_the_next_run_resumes_it(
    prepared_workspace, mlflow_server, tmp_path
):
    ws = prepared_workspace
    shutil.copy(ws / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, **{"train.epochs": 3, "mlflow.experiment_name": "resume-test"})
    # DVC_ROOT: the state goes under tmp_path. No TF_CPP_MIN_LOG_LEVEL: the stage is quiet alone.
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server, DVC_ROOT=str(tmp_path))
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    out = tmp_path / "out"
    cmd = train_command(tmp_path / "params.yaml", out)
    client = mlflow.MlflowClient(mlflow_server)

    with (tmp_path / "first.err").open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        first = []
        for line in proc.stdout:  # a pipe, not a TTY: plain progress lines, flushed
            first.append(line)
            if line.startswith("epoch 1/3 done"):
                proc.send_signal(signal.SIGTERM)  # during epoch 2
                break
        first.append(proc.communicate(timeout=120)[0])
    first_out, first_err = "".join(first), (tmp_path / "first.err").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, first_out + first_err
    assert "stopped by SIGTERM" in first_err
    assert not NOISE.search(first_err), first_err
    saved = list((tmp_path / STATE_DIR).glob("*/epoch-0001/state.json"))
    assert len(saved) == 1, first_out
    run_id = json.loads(saved[0].read_text())["run"]["mlflow_run_id"]
    # a diagnostic: on stderr, through logging
    assert f"MLflow run {run_id} marked KILLED; the state of epoch 1 of 3 is kept in" in first_err
    assert client.get_run(run_id).info.status == "KILLED"
    assert not out.exists()

    second = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert not NOISE.search(second.stderr), second.stderr
    assert re.search(r"^resuming from epoch 1 of 3: .*/\.train-state/\w+$", second.stdout, re.M)
    assert "epoch 1/3 done" not in second.stdout and "epoch 3/3 done" in second.stdout
    assert json.loads((out / "run.json").read_text())["mlflow_run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_epoch"] == "1"
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1, 2, 3]
    steps = [m.step for m in client.get_metric_history(run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2, 3]
    assert list((tmp_path / STATE_DIR).iterdir()) == []  # finished: its state is deleted
