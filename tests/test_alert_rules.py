"""The alert rules and the dashboard, from deploy/prometheus/ and deploy/grafana/: promtool checks
the rules and runs their tests, which cover every alert both ways; the dashboard is provisionable
and covers the alerts' series. A real Prometheus evaluates them in tests/test_monitoring.py."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from conftest import REPO
from monitoring_config import PROMETHEUS, alert_rules, dashboard_queries

pytestmark = pytest.mark.unit


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: `make system-test` installs Debian's prometheus package"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def test_the_dashboard_is_provisionable_and_covers_the_alerts():
    """Grafana is not installable here: its queries are evaluated by the real Prometheus of
    tests/test_monitoring.py."""
    dashboard = json.loads((REPO / "deploy" / "grafana" / "fashion-classifier.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
    queries = " ".join(dashboard_queries())
    for series in (
        "bentoml_service_request_total",
        "bentoml_service_request_duration_seconds",
        "fashion_predictions_total",
        "fashion_prediction_confidence_bucket",
        "fashion_low_confidence_predictions_total",
        "fashion_drift_detected",
        "fashion_prediction_records_dropped_total",
        "fashion_prediction_records_bytes",
        "fashion_prediction_records_max_bytes",
        "fashion_prediction_records_filesystem_free_bytes",
        "fashion_prediction_records_removed_bytes_total",
        "fashion_feedback_corrections_total",
        "fashion_feedback_refused_total",
        "fashion_requests_shed_total",
        "fashion_requests_in_flight",
    ):
        assert series in queries, series


def test_every_alert_fires_on_its_case_and_stays_silent_on_normal_traffic():
    checked = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # ...and the tests cover every alert both ways, with a `for:` on all but the records counter.
    cases = [
        (test["name"], case["alertname"], bool(case["exp_alerts"]))
        for test in yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    rules = alert_rules()
    assert {name for _, name, fires in cases if fires} == set(rules)
    assert {name for test, name, fires in cases if test.startswith("normal") and not fires} == set(
        rules
    )
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
