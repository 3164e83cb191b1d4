"""deploy/prometheus/ and deploy/grafana/ as the monitoring tests read them: the alert rules and
the dashboard's queries. tests/test_alert_rules.py checks them with promtool;
tests/test_monitoring.py has a real Prometheus evaluate them on the session's `bentoml serve`."""

from __future__ import annotations

import json

import yaml
from conftest import REPO

# The alert rules, their promtool tests and the scrape config.
PROMETHEUS = REPO / "deploy" / "prometheus"


def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def dashboard_queries() -> list[str]:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "fashion-classifier.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
