"""MLflow tracking without a server: where the tracking URI comes from, an unreachable server
refused fast and by name, a password never shown; params flattened as MLflow logs them."""

from __future__ import annotations

import time

import pytest
from conftest import free_port

from pipeline.core.params import flatten
from pipeline.shared.tracking import TrackingUnavailable, check_server, shown, tracking_uri

pytestmark = pytest.mark.unit


def test_tracking_uri_prefers_env_then_dvc_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking_uri() == "http://tracking:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"


def test_unreachable_server_fails_fast_naming_it():
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=f"MLflow tracking server {uri} is not reachable"):
        check_server(uri, timeout=2)
    assert time.monotonic() - started < 5


def test_a_password_in_the_tracking_uri_is_never_shown():
    uri = f"http://alice:s3cret-pass@127.0.0.1:{free_port()}"
    assert shown(uri) == uri.replace("s3cret-pass", "***")
    assert shown("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    with pytest.raises(TrackingUnavailable) as err:
        check_server(uri, timeout=2)
    assert "s3cret-pass" not in str(err.value) and "alice:***@" in str(err.value)


def test_flatten_nested_params():
    assert flatten({"a": {"b": [1, {"c": 2}], "d": [3, 4]}}) == {
        "a.b.0": 1,
        "a.b.1.c": 2,
        "a.d": [3, 4],
    }
