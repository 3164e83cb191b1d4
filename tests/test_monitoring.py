"""Monitoring: the service's prediction records and /metrics, and the drift report built on them.

The service tests send real requests to the session's `bentoml serve` (two workers) in three
windows: 300 test images, the same kind of images rotated 90 degrees, then inverted; each window's
/metrics counters must grow by exactly the answers given, and the report command, run on each
window, must say not drifted, then drifted naming what moved. A real Prometheus scrapes the
service with the shipped config and evaluates every alert rule and dashboard query.

The pure parts are unit-tested on tiny arrays: the records and the recorder in
tests/test_prediction_records.py, the alert rules and the dashboard in tests/test_alert_rules.py,
the drift report in tests/test_drift.py.

Past 300 lines: the service-tier monitoring tests share one served model and its windows of records.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from conftest import BIN, DRIFT_FEATURES, REPO, base_env, free_port, run, start_server, stop
from monitoring_config import PROMETHEUS, alert_rules, dashboard_queries
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from pipeline.core.prediction_log import read_records
from pipeline.monitor.metrics import write_metrics

pytest_plugins = ["service_fixtures"]  # service_url, test_images, champion
pytestmark = pytest.mark.service

UTC = dt.UTC


# ---------------------------------------------------------------------------------------------
# The real service: three windows of traffic, and the report command on each.


def class_counts(url: str) -> Counter:
    """fashion_predictions_total by (class_name, endpoint), summed over the workers by BentoML."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    counts: Counter = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "fashion_predictions":
            for sample in family.samples:
                if sample.name == "fashion_predictions_total":
                    key = (sample.labels["class_name"], sample.labels["endpoint"])
                    counts[key] += int(sample.value)
    return counts


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def send(url: str, images: np.ndarray, classify_every: int = 0) -> Counter:
    """Send each image once, on fresh connections from 8 threads (so both workers answer):
    every `classify_every`-th as a PNG to /classify, the others to /predict, some three to a
    request. Returns the answers' (class_name, endpoint) counts."""
    jobs: list[tuple[str, np.ndarray]] = []
    rest = []
    for i, image in enumerate(images):
        if classify_every and i % classify_every == 0:
            jobs.append(("classify", image[None]))
        else:
            rest.append(image)
    jobs += [("predict", np.stack(rest[i : i + 3])) for i in range(0, 60, 3)]
    jobs += [("predict", image[None]) for image in rest[60:]]

    def post(job: tuple[str, np.ndarray]) -> list[tuple[str, str]]:
        endpoint, batch = job
        if endpoint == "classify":
            files = {"image": ("item.png", png(batch[0]), "image/png")}
            resp = requests.post(f"{url}/classify", files=files, timeout=60)
            answers = [resp.json()] if resp.ok else []
        else:
            resp = requests.post(f"{url}/predict", json={"images": batch.tolist()}, timeout=60)
            answers = resp.json()["predictions"] if resp.ok else []
        assert resp.status_code == 200, resp.text
        return [(a["class_name"], endpoint) for a in answers]

    with ThreadPoolExecutor(8) as pool:
        return Counter(pair for pairs in pool.map(post, jobs) for pair in pairs)


@pytest.fixture(scope="module")
def windows(service_url, test_images) -> dict[str, dict]:
    """Three windows of 300 images each; per window its time span, the answers' class counts and
    the growth of the /metrics counters over it."""
    x, _ = test_images
    shifted = {
        "test": (x[:300], 4),  # a quarter of them as PNG files to /classify
        "rotated": (np.ascontiguousarray(np.rot90(x[300:600], axes=(1, 2))), 0),
        "inverted": (255 - x[600:900], 0),
    }
    out = {}
    for name, (images, classify_every) in shifted.items():
        before, since = class_counts(service_url), time.time()
        answers = send(service_url, images, classify_every)
        deadline = time.monotonic() + 20  # the recorder thread writes and counts within ~0.25 s
        while (grown := class_counts(service_url) - before) != answers:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out[name] = {"since": since, "until": time.time(), "answers": answers, "grown": grown}
    return out


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, UTC).isoformat()


def drift_report(workspace: Path, env: dict, window: dict, out: Path, *extra: str):
    cmd = [str(BIN / "python"), "-m", "pipeline.drift"]
    cmd += ["--since", iso(window["since"]), "--until", iso(window["until"])]
    cmd += ["--out", str(out), *extra]
    return subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=300)


def test_metrics_count_every_answer_by_class(windows):
    for name, window in windows.items():
        assert sum(window["answers"].values()) == 300
        assert window["grown"] == window["answers"], name
    assert {endpoint for _, endpoint in windows["test"]["answers"]} == {"predict", "classify"}


def test_each_worker_records_to_its_own_file(windows, pipeline_run, champion):
    directory = pipeline_run / "monitoring"  # serve.monitoring.records_dir, relative to the server
    files = sorted(directory.glob("predictions-*.jsonl"))
    assert len({f.name.rsplit("-", 1)[1] for f in files}) >= 2  # serve.workers: 2 processes
    test = windows["test"]
    since, until = (dt.datetime.fromtimestamp(test[k], UTC) for k in ("since", "until"))
    records, bad = read_records(directory, since, until)
    assert bad == 0 and len(records) == 300
    assert {r["model_version"] for r in records} == {champion["champion"]["version"]}
    assert {r["bento_model"] for r in records} == {champion["champion"]["bento_model"]}
    classified = [r for r in records if r["endpoint"] == "classify"]
    assert len(classified) == 75 and not any(r["inverted"] for r in classified)


def test_report_on_test_images_is_not_drifted(windows, pipeline_run, pipeline_env):
    """`make monitor`, the operator's command, on the window of 300 test images."""
    test = windows["test"]
    run(
        ["make", "monitor", f"SINCE={iso(test['since'])}", f"UNTIL={iso(test['until'])}"],
        pipeline_run,
        pipeline_env,
    )
    out = pipeline_run / "reports" / "monitor"
    summary = json.loads((out / "drift.json").read_text())
    assert summary["records"] == 300 and summary["unreadable_lines"] == 0
    assert summary["verdict"] == "not drifted", summary["what_moved"]
    assert summary["drifted"] is False and summary["drifted_features"] == []
    assert set(summary["features"]) == DRIFT_FEATURES
    assert summary["endpoints"] == {"predict": 225, "classify": 75}
    assert "NOT DRIFTED" in (out / "drift.html").read_text()
    shown = run(
        [str(BIN / "dvc"), "metrics", "show", str(out / "drift.json")], pipeline_run, pipeline_env
    ).stdout
    assert "features.pixel_mean.p_value" in shown
    # The verdict for Prometheus (node_exporter's textfile collector): not drifted, 300 records.
    verdict = drift_metrics(out / "drift.prom")
    assert (verdict["fashion_drift_detected"], verdict["fashion_drift_records"]) == (0, 300)
    assert abs(verdict["fashion_drift_report_timestamp_seconds"] - time.time()) < 3600


def drift_metrics(path: Path) -> dict[str, float]:
    """The drift report's Prometheus textfile: sample name -> value (each has one sample)."""
    families = text_string_to_metric_families(path.read_text())
    return {sample.name: sample.value for family in families for sample in family.samples}


def test_report_on_rotated_images_names_the_shape(windows, pipeline_run, pipeline_env, tmp_path):
    proc = drift_report(pipeline_run, pipeline_env, windows["rotated"], tmp_path, "--fail-on-drift")
    assert proc.returncode == 1, proc.stderr[-3000:]  # --fail-on-drift: for cron jobs
    summary = json.loads((tmp_path / "drift.json").read_text())
    assert summary["verdict"] == "drifted" and summary["records"] == 300
    # Rotation keeps every pixel: only the object's shape (and what the model makes of it) moved.
    assert "log2_aspect" in summary["drifted_features"]
    assert not {"pixel_mean", "pixel_std", "bright_fraction"} & set(summary["drifted_features"])
    assert "DRIFTED" in (tmp_path / "drift.html").read_text()
    assert drift_metrics(tmp_path / "drift.prom")["fashion_drift_detected"] == 1


def test_report_on_inverted_images_names_the_brightness(
    windows, pipeline_run, pipeline_env, tmp_path
):
    proc = drift_report(pipeline_run, pipeline_env, windows["inverted"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "drift.json").read_text())
    assert summary["verdict"] == "drifted"
    assert {"pixel_mean", "bright_fraction"} <= set(summary["drifted_features"])
    assert "pixel_std" not in summary["drifted_features"]  # 255 - x has the same contrast
    assert summary["features"]["pixel_mean"]["current"]["mean"] > 150
    assert "DRIFTED" in proc.stdout


def metric_samples(url: str, name: str) -> list:
    """The samples of one metric family in the service's /metrics (all workers, as BentoML merges)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return [s for f in text_string_to_metric_families(text) if f.name == name for s in f.samples]


def records_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("predictions-*.jsonl"))


def test_metrics_give_the_records_disk_once_not_per_worker(windows, service_url, pipeline_run):
    """Both workers measure the same directory: /metrics shows the latest measurement, not the
    sum of two (which would be twice the directory's size and twice the filesystem's)."""
    directory = pipeline_run / "monitoring"
    monitoring = yaml.safe_load((pipeline_run / "params.yaml").read_text())["serve"]["monitoring"]
    (cap,) = metric_samples(service_url, "fashion_prediction_records_max_bytes")
    assert cap.value == monitoring["max_disk_mb"] * 1_000_000 and "pid" not in cap.labels
    fs = os.statvfs(directory)
    (size,) = metric_samples(service_url, "fashion_prediction_records_filesystem_size_bytes")
    assert size.value == fs.f_blocks * fs.f_frsize
    (free,) = metric_samples(service_url, "fashion_prediction_records_filesystem_free_bytes")
    # Free space moves with whatever else writes to this disk: within 5% of it.
    assert abs(free.value - fs.f_bavail * fs.f_frsize) < 0.05 * size.value
    # The windows' records are on disk; each worker measures every 30 s (TOUCH_SECONDS).
    deadline = time.monotonic() + 120
    while True:
        (measured,) = metric_samples(service_url, "fashion_prediction_records_bytes")
        if measured.value == records_size(directory) > 0:
            break
        assert time.monotonic() < deadline, (
            f"fashion_prediction_records_bytes {measured.value} never showed the "
            f"{records_size(directory)} bytes of {directory}"
        )
        time.sleep(1)


BYTES_PER_RECORD = re.compile(r"(\d[\d,]*) bytes per record\b")


def test_records_take_the_bytes_the_docs_and_the_volume_say(windows, pipeline_run):
    """The figure the cap, the volume and the docs are sized by (docs/monitoring.md, the PVC's
    comment, params.yaml) against what the real service wrote for the windows' test images."""
    lines = [
        len(line) + 1  # and its newline
        for path in (pipeline_run / "monitoring").glob("predictions-*.jsonl")
        for line in path.read_bytes().splitlines()
    ]
    assert len(lines) >= 900  # the three windows at least
    mean = sum(lines) / len(lines)
    stated = {
        path: {int(m.replace(",", "")) for m in BYTES_PER_RECORD.findall(path.read_text())}
        for path in (
            REPO / "docs" / "monitoring.md",
            REPO / "deploy" / "k8s" / "records-pvc.yaml",
            REPO / "params.yaml",
        )
    }
    figures = set().union(*stated.values())
    assert all(stated.values()) and len(figures) == 1, f"one figure in each file: {stated}"
    (figure,) = figures
    assert abs(mean - figure) <= 0.1 * figure, f"records take {mean:.0f} bytes, docs say {figure}"


# deploy/prometheus/'s scrape config and alert rules (tests/test_alert_rules.py checks them with
# promtool), run by a real Prometheus (Debian's package: `make system-test`) against the session's
# `bentoml serve`.


def test_prometheus_scrapes_the_service_and_evaluates_every_rule(
    service_url, test_images, tmp_path
):
    """The shipped scrape config, pointed at the session's service and at a node_exporter reading
    a drifted verdict written by `write_metrics`: after known traffic, Prometheus's API gives the
    per-class counts sent, every alert expression evaluates, and the drift alert fires."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"fashion-classifier", "drift-report"}
    jobs["fashion-classifier"]["static_configs"] = [
        {"targets": [service_url.removeprefix("http://")]}
    ]
    textfiles = tmp_path / "monitor"
    textfiles.mkdir()
    write_metrics(500, True, textfiles / "drift.prom", time.time())
    exporter_port = free_port()
    exporter = start_server(
        [
            shutil.which("prometheus-node-exporter") or "prometheus-node-exporter",
            f"--web.listen-address=127.0.0.1:{exporter_port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textfiles}",
        ],
        tmp_path,
        base_env(),
        tmp_path / "node-exporter.log",
        f"http://127.0.0.1:{exporter_port}/metrics",
        60,
    )
    jobs["drift-report"]["static_configs"] = [{"targets": [f"127.0.0.1:{exporter_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config_file = tmp_path / "prometheus.yml"
    cmd = [shutil.which("prometheus") or "prometheus", f"--config.file={config_file}"]
    cmd += [f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"]
    try:
        proc = start_server(
            cmd, tmp_path, base_env(), tmp_path / "prometheus.log", f"{url}/-/ready", 60
        )
    except BaseException:
        stop(exporter)
        raise
    try:
        x, _ = test_images
        before = class_counts(service_url)
        sent = send(service_url, x[1000:1080])
        expected = Counter()
        for (name, _), n in (before + sent).items():
            expected[name] += n

        def query(expr: str) -> dict:
            answer = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
            assert answer.status_code == 200, f"{expr}: {answer.text}"
            return answer.json()["data"]

        deadline = time.monotonic() + 60
        while True:
            result = query("sum by (class_name) (fashion_predictions_total)")["result"]
            seen = Counter({r["metric"]["class_name"]: int(float(r["value"][1])) for r in result})
            if seen == expected:
                break
            assert time.monotonic() < deadline, f"Prometheus never showed {expected}: {seen}"
            time.sleep(0.5)
        assert query('up{job="fashion-classifier"}')["result"][0]["value"][1] == "1"
        # The records panel's series, scraped from the service: one value per target, the cap.
        (cap,) = query("fashion_prediction_records_max_bytes")["result"]
        monitoring = yaml.safe_load((REPO / "params.yaml").read_text())["serve"]["monitoring"]
        assert float(cap["value"][1]) == monitoring["max_disk_mb"] * 1_000_000
        for expr in [rule["expr"] for rule in alert_rules().values()] + dashboard_queries():
            query(expr)  # 200: it parses and evaluates on the scraped series
        deadline = time.monotonic() + 60
        while True:  # the dashboard's per-class panel, once two scrapes give a rate
            per_class = query("sum by (class_name) (rate(fashion_predictions_total[5m]))")
            shown = {r["metric"]["class_name"] for r in per_class["result"]}
            if shown == set(expected):
                break
            assert time.monotonic() < deadline, f"per-class rates never covered {expected}: {shown}"
            time.sleep(0.5)
        deadline = time.monotonic() + 60
        while True:
            rules = requests.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
            health = {r["name"]: r["health"] for g in rules for r in g["rules"]}
            if set(health) == set(alert_rules()) and set(health.values()) == {"ok"}:
                break
            assert time.monotonic() < deadline, f"rules never all evaluated ok: {health}"
            time.sleep(0.5)
        deadline = time.monotonic() + 60
        while True:  # make monitor's verdict, through node_exporter, fires the drift alert
            alerts = requests.get(f"{url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
            if "FashionTrafficDrifted" in firing:
                break
            assert time.monotonic() < deadline, f"FashionTrafficDrifted never fired: {alerts}"
            time.sleep(0.5)
        assert "FashionDriftReportStale" not in firing  # the report just ran
    finally:
        stop(proc)
        stop(exporter)
