"""The drift report's parts (pipeline/monitor/) on tiny synthetic data, and its command.

The statistics on seeded random arrays; the report on toy images (bars of random size and
brightness) sent as clean, rotated, inverted, noise and one-class windows; the page's escaping;
the Prometheus text; `python -m pipeline.drift` itself where no model is needed. The same command
on the real service's records: the service tests in tests/test_monitoring.py.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, DRIFT_FEATURES, REPO, base_env
from prometheus_client.parser import text_string_to_metric_families
from record_factory import MODEL, records_of

from pipeline.core.params import MonitorParams
from pipeline.drift import parse_when
from pipeline.monitor.metrics import write_metrics
from pipeline.monitor.page import render_html
from pipeline.monitor.report import DriftReport, ServedModel, build_report
from pipeline.monitor.statistics import Outputs, class_drift, numeric_drift
from pipeline.shared.dataset import Split, save_split

pytestmark = pytest.mark.unit

THRESHOLDS = MonitorParams(window_hours=24, min_records=50, p_value=0.01, min_distance=0.1)


def test_numeric_drift_needs_significance_and_size():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 5000)
    assert not numeric_drift(reference, rng.normal(0, 1, 300), THRESHOLDS).drifted
    moved = numeric_drift(reference, rng.normal(1, 1, 300), THRESHOLDS)
    assert moved.drifted and moved.distance > 0.3 and moved.p_value < 1e-10
    assert moved.current["mean"] == pytest.approx(1, abs=0.2)
    # A trivial shift in a huge window is significant, but too small to call drift.
    tiny = numeric_drift(reference, rng.normal(0.05, 1, 200_000), THRESHOLDS)
    assert tiny.p_value < THRESHOLDS.p_value and not tiny.drifted
    # ...and a large shift in a tiny window is large, but not significant.
    few = numeric_drift(reference, np.array([0.3, 0.5, 0.7]), THRESHOLDS)
    assert few.distance > 0.3 and few.p_value > 0.1 and not few.drifted


def test_class_drift_compares_shares():
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 10, 2000)
    same = class_drift(reference, rng.integers(0, 10, 300), THRESHOLDS)
    assert not same.drifted and sum(same.current.values()) == pytest.approx(1)
    bags = np.concatenate([rng.integers(0, 10, 150), np.full(150, 8)])  # half of them "Bag"
    moved = class_drift(reference, bags, THRESHOLDS)
    assert moved.drifted and moved.distance == pytest.approx(0.45, abs=0.05)
    assert moved.current["Bag"] > 0.5 > moved.reference["Bag"]
    # Classes nobody predicted are left out of the test instead of breaking it.
    assert not class_drift(np.full(100, 3), np.full(100, 3), THRESHOLDS).drifted


@pytest.fixture
def toy():
    """A toy dataset (bars of random size and brightness), and a model answering at random."""
    rng = np.random.default_rng(2)

    def images(n: int) -> np.ndarray:
        out = np.zeros((n, 28, 28), np.uint8)
        for image, h, w, v in zip(
            out,
            rng.integers(8, 27, n),
            rng.integers(3, 12, n),
            rng.integers(120, 256, n),
            strict=True,
        ):
            image[14 - h // 2 : 14 - h // 2 + h, 14 - w // 2 : 14 - w // 2 + w] = v
        return out

    asked = []

    def outputs_of(tag: str, x: np.ndarray) -> Outputs:
        asked.append(tag)
        return Outputs(rng.integers(0, 10, len(x)), np.full(len(x), 0.9))

    def report(records: list[dict], model: str | None = None) -> DriftReport:
        return build_report(
            records, train, val, THRESHOLDS, 0.5, outputs_of=outputs_of, model=model
        )

    train, val = images(2000), images(500)
    return images, report, asked, rng


def test_report_verdicts_on_synthetic_windows(toy):
    images, report, asked, rng = toy

    def answers(n: int) -> np.ndarray:
        return rng.integers(0, 10, n)

    few = report(records_of(images(10), answers(10)))
    assert few.verdict == "insufficient data" and few.drifted is None and few.features == {}
    assert asked == []  # no verdict: the model is not even asked
    same = report(records_of(images(300), answers(300)))
    assert same.verdict == "not drifted" and same.drifted is False and same.drifted_features == []
    assert same.model == ServedModel(MODEL, "3", records=300, other_models_records=0)
    assert asked == [MODEL]
    rotated = report(records_of(np.rot90(images(300), axes=(1, 2)), answers(300)))
    assert rotated.verdict == "drifted" and rotated.drifted is True
    assert rotated.drifted_features == ["log2_aspect"]
    assert any(line.startswith("log2_aspect:") for line in rotated.what_moved)
    inverted = report(records_of(255 - images(300), answers(300)))
    assert {"pixel_mean", "bright_fraction"} <= set(inverted.drifted_features)
    noise = report(records_of(rng.integers(0, 256, (300, 28, 28), dtype=np.uint8), answers(300)))
    assert set(noise.drifted_features) == {
        "pixel_mean",
        "pixel_std",
        "bright_fraction",
        "log2_aspect",
    }
    # Inputs as ever, but every answer "Bag": only the class mix moved.
    one_class = report(records_of(images(300), np.full(300, 8)))
    assert one_class.verdict == "drifted" and one_class.drifted_features == ["predicted_class"]
    assert one_class.features["predicted_class"].current["Bag"] == 1.0


def test_outputs_are_one_models_answers_inputs_are_everyones(toy):
    images, report, asked, rng = toy
    records = records_of(images(200), rng.integers(0, 10, 200))
    records += records_of(images(60), np.full(60, 8), model="fashion-mnist-cnn:old", start=2e9)
    result = report(records)
    assert (result.model.bento_model, result.model.records) == (MODEL, 200)
    assert result.model.other_models_records == 60 and asked == [MODEL]
    assert len(result.compared.current["pixel_mean"]) == 260
    assert len(result.compared.current["confidence"]) == 200
    assert result.verdict == "not drifted"  # the old model's 60 "Bag"s are not in the class test
    named = report(records, model="fashion-mnist-cnn:old")  # --model: that one's answers
    assert named.model.records == 60 and named.drifted_features == ["predicted_class"]


def test_summary_is_drift_json(toy):
    """drift.json's layout: the verdict first (DVC and the docs read it), plain JSON values."""
    images, report, _, rng = toy
    result = report(records_of(images(120), rng.integers(0, 10, 120), endpoint="classify"))
    summary = json.loads(json.dumps(result.summary()))
    assert list(summary)[:3] == ["verdict", "drifted", "drifted_features"]
    assert summary["thresholds"] == THRESHOLDS.model_dump()
    assert summary["endpoints"] == {"classify": 120} and summary["classify_inverted_share"] == 0
    assert summary["low_confidence_share"] == {"threshold": 0.5, "reference": 0, "current": 0}
    assert set(summary["features"]) == DRIFT_FEATURES
    assert summary["features"]["pixel_mean"]["test"] == "ks"
    assert summary["what_moved"] == result.what_moved and len(summary["what_moved"]) == 6
    few = report(records_of(images(3), rng.integers(0, 10, 3))).summary()
    assert few["drifted"] is None and few["features"] == {} and "low_confidence_share" not in few


def test_page_shows_the_verdict_and_escapes_what_it_shows(toy):
    images, report, _, rng = toy
    tag = 'm:<script>alert("x")</script>'
    page = render_html(
        report(records_of(np.rot90(images(300), axes=(1, 2)), rng.integers(0, 10, 300), model=tag))
    )
    assert "<script>" not in page and "m:&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert '<p class="verdict drifted">DRIFTED</p>' in page
    assert page.count('<tr class="drifted">') == 1 and "<td>log2_aspect</td>" in page
    assert page.count("<img ") == 2 and page.count("data:image/png;base64,") == 2
    few = render_html(report(records_of(images(3), rng.integers(0, 10, 3))))
    assert "INSUFFICIENT DATA" in few and "<img " not in few and "<td>" not in few


def prometheus_text(path: Path) -> dict[str, float]:
    families = text_string_to_metric_families(path.read_text())
    return {sample.name: sample.value for family in families for sample in family.samples}


def test_the_verdict_metric_is_absent_without_a_verdict(tmp_path):
    for drifted, expected in ((True, 1), (False, 0), (None, None)):
        write_metrics(12, drifted, tmp_path / "drift.prom", 1.7e9)
        got = prometheus_text(tmp_path / "drift.prom")
        assert got.get("fashion_drift_detected") == expected
        assert got["fashion_drift_records"] == 12
        assert got["fashion_drift_report_timestamp_seconds"] == 1.7e9


def test_window_bounds_are_times_or_durations():
    now = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
    assert parse_when("30m", now) == now - dt.timedelta(minutes=30)
    assert parse_when("1.5d", now) == now - dt.timedelta(hours=36)
    assert parse_when("2026-11-26T09:00", now) == dt.datetime(2026, 11, 26, 9, tzinfo=dt.UTC)
    with pytest.raises(Exception, match="expected an ISO time"):
        parse_when("yesterday", now)


def drift_command(tmp_path: Path, records: list[dict], *extra: str) -> subprocess.CompletedProcess:
    """`python -m pipeline.drift` on these records, a tiny prepared dataset and an empty store."""
    (tmp_path / "records").mkdir()
    lines = "".join(json.dumps(r) + "\n" for r in records) + '{"time": "2027-0\n'  # one cut short
    (tmp_path / "records" / "predictions-2027-01-15-host-1.jsonl").write_text(lines)
    rng = np.random.default_rng(3)
    for name in ("train", "val"):
        x = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
        save_split(Split(x, np.zeros(40, np.int64)), tmp_path / "data" / f"{name}.npz")
    cmd = [str(BIN / "python"), "-m", "pipeline.drift", "--params", str(REPO / "params.yaml")]
    cmd += ["--records", str(tmp_path / "records"), "--data", str(tmp_path / "data")]
    cmd += ["--since", "2027-01-15T00:00", "--until", "2027-01-16T00:00"]
    cmd += ["--out", str(tmp_path / "out"), *extra]
    env = base_env(BENTOML_HOME=str(tmp_path / "bentoml"))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_command_without_a_verdict_writes_all_three_files(tmp_path):
    """Too few records: no model needed, the three files say so; the result line on stdout,
    diagnostics on stderr."""
    pixels = np.random.default_rng(4).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    proc = drift_command(tmp_path, records_of(pixels, np.arange(5), start=1.8e9), "--fail-on-drift")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("INSUFFICIENT DATA: 5 records, 2027-01-15 00:00 to 2027-01-16")
    assert "5 records in" in proc.stderr and "(unreadable lines: 1)" in proc.stderr
    summary = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert (summary["verdict"], summary["records"], summary["unreadable_lines"]) == (
        "insufficient data",
        5,
        1,
    )
    assert summary["window"] == {
        "since": "2027-01-15T00:00:00.000Z",
        "until": "2027-01-16T00:00:00.000Z",
    }
    assert "fashion_drift_detected" not in prometheus_text(tmp_path / "out" / "drift.prom")
    assert "INSUFFICIENT DATA" in (tmp_path / "out" / "drift.html").read_text()


def test_command_names_a_model_missing_from_the_store(tmp_path):
    """Enough records, but their model is not in the (empty) BentoML store: exit 2, not 1 (which
    --fail-on-drift gives a drifted window), a message saying what to do, no report written."""
    pixels = np.random.default_rng(5).integers(0, 256, (120, 28, 28), dtype=np.uint8)
    proc = drift_command(tmp_path, records_of(pixels, np.zeros(120, np.int64), start=1.8e9))
    assert proc.returncode == 2, proc.stderr
    assert f"the served model {MODEL} is not in the BentoML store" in proc.stderr
    assert "--model" in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists()
