"""Monitoring: the service's prediction records and /metrics, and the drift report built on them.

Unit tests check the pure parts on tiny arrays (the drift report's: tests/test_drift.py). The
service tests send real requests to the session's `bentoml serve` (two workers) in three windows:
300 test images, the same kind of images rotated 90 degrees, then inverted; each window's /metrics
counters must grow by exactly the answers given, and the report command, run on each window, must
say not drifted, then drifted naming what moved.
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
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import yaml
from conftest import BIN, DRIFT_FEATURES, REPO, base_env, free_port, run, start_server, stop
from PIL import Image
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.prediction_log import (
    FIELDS,
    format_time,
    image_features,
    read_records,
    record_lines,
)
from pipeline.core.record_files import RecordLimits
from pipeline.monitor.metrics import write_metrics

pytest_plugins = ["service_fixtures"]  # service_url, test_images, champion

ROOMY = RecordLimits(max_bytes=10**9, retention_seconds=86_400, part_bytes=10**8)
UTC = dt.UTC


def tall_bar() -> np.ndarray:
    image = np.zeros((28, 28), np.uint8)
    image[2:26, 12:16] = 200  # 24 rows x 4 columns
    return image


@pytest.mark.unit
def test_image_features_describe_brightness_and_shape():
    bar = tall_bar()
    f = image_features(np.stack([np.zeros_like(bar), bar, np.rot90(bar), 255 - bar]))
    assert f["pixel_mean"][0] == f["pixel_std"][0] == f["log2_aspect"][0] == 0  # blank
    assert f["bright_fraction"][1] == pytest.approx(24 * 4 / 784)
    assert f["log2_aspect"][1] > 2  # 24 rows tall, 4 columns wide
    assert f["log2_aspect"][2] == pytest.approx(-f["log2_aspect"][1])  # rotated: as wide
    assert f["pixel_mean"][3] == pytest.approx(255 - f["pixel_mean"][1])  # inverted
    assert f["pixel_std"][3] == pytest.approx(f["pixel_std"][1])  # ... same contrast


def fake_records(pixels: np.ndarray, class_ids: np.ndarray, start: float = 1.8e9) -> list[dict]:
    text = record_lines(
        times=[start + i for i in range(len(pixels))],
        endpoints=["predict"] * len(pixels),
        inverted=[False] * len(pixels),
        pixels=pixels,
        class_ids=class_ids.tolist(),
        class_names=[CLASS_NAMES[i] for i in class_ids],
        confidences=[0.9] * len(pixels),
        model_version="3",
        bento_model="fashion-mnist-cnn:abc",
    )
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.unit
def test_records_are_read_back_by_window(tmp_path):
    pixels = np.stack([tall_bar()] * 4)
    start = dt.datetime(2026, 11, 26, 23, 59, 58, tzinfo=UTC).timestamp()
    records = fake_records(pixels, np.array([1, 1, 3, 9]), start)
    assert list(records[0]) == list(FIELDS)
    assert records[0]["time"] == "2026-11-26T23:59:58.000Z"
    lines = [json.dumps(r) for r in records]
    (tmp_path / "predictions-2026-11-26-host-1.jsonl").write_text("\n".join(lines[:2]) + "\n")
    # the next day's file of another process, with a line cut short by a crash
    (tmp_path / "predictions-2026-11-27-host-2.jsonl").write_text(
        "\n".join(lines[2:]) + '\n{"time": "2026-11-2'
    )
    t = dt.datetime.fromtimestamp
    everything, bad = read_records(tmp_path, t(start - 1, UTC), t(start + 10, UTC))
    assert [r["class_id"] for r in everything] == [1, 1, 3, 9] and bad == 1
    window, _ = read_records(tmp_path, t(start + 1, UTC), t(start + 3, UTC))
    assert [r["time"] for r in window] == [format_time(start + 1), format_time(start + 2)]
    assert read_records(tmp_path, t(start + 86400 * 3, UTC), t(start + 86400 * 4, UTC))[0] == []


@pytest.mark.unit
def test_recorder_writes_its_own_file_and_drops_rather_than_block(tmp_path):
    from service.monitoring import PredictionRecorder

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    low = value("fashion_low_confidence_predictions_total", endpoint="predict")
    dropped = value("fashion_prediction_records_dropped_total", reason="queue_full")
    trousers = value("fashion_predictions_total", class_name="Trouser", endpoint="predict")
    recorder = PredictionRecorder(
        tmp_path, "3", "m:1", 0.5, queue_size=2, limits=ROOMY, flush_seconds=3600
    )
    answers = [SimpleNamespace(class_id=1, class_name="Trouser", confidence=c) for c in (0.4, 0.9)]
    two = np.stack([tall_bar(), 255 - tall_bar()])
    recorder.record("predict", two, answers)
    recorder.record("predict", two[:1], answers[:1])
    recorder.record("predict", two, answers)  # the queue holds 2 requests: dropped, counted
    recorder.close()  # writes what was queued
    (path,) = tmp_path.iterdir()
    assert path.name.endswith(f"-{os.getpid()}.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["confidence"] for r in lines] == [0.4, 0.9, 0.4]
    assert lines[1]["pixel_mean"] == pytest.approx(255 - lines[0]["pixel_mean"], abs=0.01)
    assert value("fashion_prediction_records_dropped_total", reason="queue_full") == dropped + 2
    assert value("fashion_low_confidence_predictions_total", endpoint="predict") == low + 2
    assert (
        value("fashion_predictions_total", class_name="Trouser", endpoint="predict") == trousers + 3
    )


@pytest.mark.unit
def test_monitoring_disabled_records_and_counts_nothing(tmp_path, monkeypatch):
    import yaml

    from service import monitoring, settings

    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    raw["serve"]["monitoring"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("FASHION_MNIST_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.setenv("FASHION_MNIST_MONITORING_DIR", str(tmp_path / "records"))
    settings.serve_params.cache_clear()
    try:
        recorder = monitoring.recorder("3", "m:1")
        labels = {"class_name": "Trouser", "endpoint": "predict"}
        before = REGISTRY.get_sample_value("fashion_predictions_total", labels) or 0.0
        answer = SimpleNamespace(class_id=1, class_name="Trouser", confidence=0.9)
        recorder.record("predict", tall_bar()[None], [answer])
        assert isinstance(recorder, monitoring.NoRecorder)
        assert not (tmp_path / "records").exists()
        assert (REGISTRY.get_sample_value("fashion_predictions_total", labels) or 0.0) == before
    finally:
        settings.serve_params.cache_clear()


@pytest.mark.unit
def test_recorder_survives_an_unwritable_directory(tmp_path):
    from service.monitoring import PredictionRecorder

    (tmp_path / "file").write_text("not a directory")
    recorder = PredictionRecorder(tmp_path / "file" / "records", "3", "m:1", 0.5, 10, ROOMY, 3600)
    before = REGISTRY.get_sample_value(
        "fashion_prediction_records_dropped_total", {"reason": "write_error"}
    )
    answer = SimpleNamespace(class_id=1, class_name="Trouser", confidence=0.9)
    recorder.record("predict", tall_bar()[None], [answer])
    recorder.flush()
    assert recorder._thread.is_alive()
    recorder.close()
    after = REGISTRY.get_sample_value(
        "fashion_prediction_records_dropped_total", {"reason": "write_error"}
    )
    assert after == (before or 0) + 1


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


@pytest.mark.service
def test_metrics_count_every_answer_by_class(windows):
    for name, window in windows.items():
        assert sum(window["answers"].values()) == 300
        assert window["grown"] == window["answers"], name
    assert {endpoint for _, endpoint in windows["test"]["answers"]} == {"predict", "classify"}


@pytest.mark.service
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


@pytest.mark.service
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


@pytest.mark.service
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


@pytest.mark.service
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


@pytest.mark.service
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


@pytest.mark.service
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


# deploy/prometheus/: the alert rules (unit-tested with promtool) and the scrape config, run by a
# real Prometheus (Debian's package: `make system-test`) against the session's `bentoml serve`.
PROMETHEUS = REPO / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: `make system-test` installs Debian's prometheus package"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def dashboard_queries() -> list[str]:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "fashion-classifier.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.mark.unit
def test_the_dashboard_is_provisionable_and_covers_the_alerts():
    """Grafana is not installable here: its queries are evaluated by the real Prometheus below."""
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


@pytest.mark.unit
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


@pytest.mark.service
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
