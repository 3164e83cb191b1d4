"""The drift report's verdict as Prometheus metrics, in the text format (drift.prom).

node_exporter's textfile collector reads the file: the usual way a batch job's result reaches
Prometheus. deploy/prometheus/alerts.yml alerts on a drifted verdict and on a report that stopped
running.
"""

from __future__ import annotations

from pathlib import Path


def write_metrics(records: int, drifted: bool | None, path: Path, now: float) -> None:
    """When the report ran (Unix time `now`), how many records it read, and whether the traffic
    drifted (the metric is left out when there is no verdict, `drifted` None)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    Gauge(
        "fashion_drift_report_timestamp_seconds",
        "When the last drift report (make monitor) ran, Unix time",
        registry=registry,
    ).set(now)
    Gauge(
        "fashion_drift_records",
        "Prediction records in the last drift report's window",
        registry=registry,
    ).set(records)
    if drifted is not None:
        Gauge(
            "fashion_drift_detected",
            "1 if the last drift report found the traffic drifted, 0 if not",
            registry=registry,
        ).set(int(drifted))
    write_to_textfile(str(path), registry)  # written to a temporary file, then renamed
