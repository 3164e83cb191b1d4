"""The register stage's rules on plain values: the champion/challenger gate and its feedback side,
the promotion lock of a local store, whether a register is gone, the named steps, altered files."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
from register_fixtures import sha256

from pipeline.core.inference import altered_files
from pipeline.core.params import RegisterParams
from pipeline.promotion.choice import decide, decide_feedback
from pipeline.promotion.registry import local_store, process_gone, promotion_lock, this_process
from pipeline.promotion.steps import reached

pytestmark = pytest.mark.unit


GATE = RegisterParams(min_accuracy=0.9, max_regression=0.002, max_feedback_regression=0.0)


@pytest.mark.parametrize(
    ("candidate", "champion", "promote", "words"),
    [
        (0.89, None, False, "below the floor"),
        (0.90, None, True, "no champion yet"),
        (0.95, 0.93, True, "above the champion"),
        (0.929, 0.93, True, "within max_regression"),
        (0.928, 0.93, True, "within max_regression"),  # exactly max_regression worse
        (0.927, 0.93, False, "more than max_regression"),
        (0.89, 0.85, False, "below the floor"),  # the floor holds even against a weak champion
    ],
)
def test_gate(candidate, champion, promote, words):
    decision, reason = decide(candidate, champion, GATE)
    assert decision is promote
    assert words in reason


TOLERANT = GATE.model_copy(update={"max_feedback_regression": 0.1})


@pytest.mark.parametrize(
    ("candidate", "champion", "samples", "gate", "passes", "words"),
    [
        (None, None, 0, GATE, True, "feedback slice empty: not checked"),
        (0.5, None, 8, GATE, True, "(8 images): accuracy 0.5000, no champion to compare with"),
        (0.75, 0.5, 8, GATE, True, "accuracy 0.7500 above the champion's 0.5000"),
        (0.5, 0.5, 8, GATE, True, "accuracy 0.5000 equal to the champion's 0.5000"),
        (0.625, 0.75, 8, GATE, False, "0.1250 below the champion's 0.7500, more than max_feedb"),
        (0.7, 0.75, 20, TOLERANT, True, "within max_feedback_regression of the champion's 0.75"),
        (0.6, 0.75, 20, TOLERANT, False, "more than max_feedback_regression=0.1000"),
    ],
)
def test_feedback_gate(candidate, champion, samples, gate, passes, words):
    """The slice's side of the gate: not worse than the champion, measured on the same images."""
    decision, reason = decide_feedback(candidate, champion, samples, gate)
    assert decision is passes
    assert words in reason


@pytest.mark.parametrize(
    ("uri", "store"),
    [
        ("sqlite:////srv/mlflow/mlflow.db", Path("/srv/mlflow/mlflow.db")),
        ("sqlite:///mlflow.db", Path("mlflow.db")),
        ("file:///srv/mlruns", Path("/srv/mlruns")),
        ("/srv/mlruns", Path("/srv/mlruns")),
        ("http://mlflow.internal:5000", None),
    ],
)
def test_a_local_store_is_found_from_its_tracking_uri(uri, store):
    assert local_store(uri) == store


def test_one_promotion_at_a_time_on_a_local_store(tmp_path):
    """While one register holds the lock, another open of it cannot take it; released after."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with promotion_lock(uri) as held:
        assert held == tmp_path / "mlflow.db.promotion.lock"
        with held.open("a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with held.open("a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
    with promotion_lock("http://127.0.0.1:1") as nothing:
        assert nothing is None


def test_a_register_is_known_gone_only_on_its_own_host():
    """How `repair` tells an abandoned promotion from one still running."""
    me = this_process()
    host, pid, start = me.rsplit(":", 2)
    assert process_gone(me) is False
    assert process_gone(f"{host}:{pid}:{float(start) + 1}") is True  # the pid, reused
    assert process_gone(f"{host}:999999999:1") is True
    assert process_gone(f"elsewhere.example:{pid}:{start}") is None  # cannot tell from here


def test_steps_are_named(monkeypatch):
    monkeypatch.delenv("REGISTER_STOP_AT", raising=False)
    reached("registered")  # announced, not stopped
    with pytest.raises(ValueError, match="unknown promotion step 'registred'"):
        reached("registred")


def test_altered_files_are_found_by_their_recorded_sha256(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"keras")
    (tmp_path / "model.onnx").write_bytes(b"onnx, cut sho")
    labels = {"model_sha256": sha256(tmp_path / "model.keras"), "onnx_sha256": "0" * 64}
    metadata = {"onnx_file": "model.onnx", "explainer_onnx": "explainer.onnx"}
    metadata["explainer_onnx_sha256"] = "1" * 64
    assert altered_files(tmp_path, labels, metadata) == ["model.onnx", "explainer.onnx"]
    labels["onnx_sha256"] = sha256(tmp_path / "model.onnx")
    del metadata["explainer_onnx"]  # a model saved before explainers: nothing recorded to check
    assert altered_files(tmp_path, labels, metadata) == []
