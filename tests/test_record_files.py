"""The prediction record files: names and parts, the retention and cap rule, and the recorder
thread that enforces it on a real directory.

The rule is a pure function (files + now + limits -> files to remove), tested on lists; the
recorder tests run a real PredictionRecorder in this process on a temporary directory holding
files of chosen sizes and modification times, beside a feedback/ folder that must stay untouched.

Past 300 lines: the record files' rotation, caps and retention, one case each, on one directory layout.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import REPO
from prometheus_client import REGISTRY
from pydantic import ValidationError

from pipeline.core.params import MonitoringParams
from pipeline.core.prediction_log import read_records
from pipeline.core.record_files import (
    LIVE_SECONDS,
    TOUCH_SECONDS,
    RecordFile,
    RecordLimits,
    file_day,
    file_name,
    file_part,
    plan_removal,
    record_files,
)

pytestmark = pytest.mark.unit

DAY = 86_400.0
NOW = 1.8e9
LIMITS = RecordLimits(max_bytes=1000, retention_seconds=30 * DAY, part_bytes=500)


def f(name: str, size: int, age_s: float) -> RecordFile:
    return RecordFile(f"predictions-2027-01-{name}.jsonl", size, NOW - age_s)


def names(files: list[RecordFile]) -> list[str]:
    return [x.name.removeprefix("predictions-2027-01-").removesuffix(".jsonl") for x in files]


def test_file_names_and_parts_are_unambiguous():
    day = dt.date(2027, 1, 5)
    assert file_name(day, "web-1", 42) == "predictions-2027-01-05-web-1-42.jsonl"
    assert file_name(day, "web-1", 42, 3) == "predictions-2027-01-05-web-1-42.3.jsonl"
    for part in (0, 1, 12):
        name = file_name(day, "web-1", 42, part)
        assert file_part(name, day, "web-1", 42) == part and file_day(name) == day
    # Host names hold dashes and dots: another process's file is never taken for a part.
    assert file_part(file_name(day, "web-1-42", 7), day, "web-1", 42) is None
    assert file_part(file_name(day, "web", 1), day, "web-1", 42) is None
    assert file_part(file_name(day, "web-1.x", 42, 2), day, "web-1", 42) is None
    assert file_part(file_name(day, "web-1", 42), dt.date(2027, 1, 6), "web-1", 42) is None
    assert file_day("predictions-2027-13-01-web-1.jsonl") is None  # no such day
    assert file_day("feedback-2027-01-05-web-1.jsonl") is None


def test_old_files_go_after_the_retention_unless_live():
    files = [f("01-a", 10, 31 * DAY), f("02-b", 10, 29 * DAY), f("03-c", 10, 40 * DAY)]
    plan = plan_removal(files, NOW, LIMITS, keep={files[2].name})
    assert names(plan.expired) == ["01-a"] and plan.over_cap == []
    assert plan.kept_bytes == 20 and not plan.capped


def test_over_the_cap_the_oldest_go_first_and_live_files_never():
    files = [
        f("05-new", 300, 60),  # modified a minute ago: live
        f("04-mid", 300, DAY),
        f("02-old", 300, 3 * DAY),
        f("03-own", 300, 5 * DAY),  # the caller's open file, however old it looks
        f("01-older", 300, 4 * DAY),
    ]
    plan = plan_removal(files, NOW, LIMITS, keep={files[3].name})
    # 1500 bytes, cap 1000: the two oldest that are not live go, oldest first.
    assert names(plan.over_cap) == ["01-older", "02-old"] and plan.expired == []
    assert plan.kept_bytes == 900 and not plan.capped
    # At the cap exactly, nothing goes.
    exact = plan_removal([f("a", 500, DAY), f("b", 500, 2 * DAY)], NOW, LIMITS)
    assert exact.over_cap == [] and exact.kept_bytes == 1000 and not exact.capped


def test_only_live_files_over_the_cap_stops_recording():
    files = [
        f("01-live", 800, LIVE_SECONDS - 1),
        f("02-skewed", 400, -120),  # another pod's clock is ahead: still live
        f("03-dead", 100, LIVE_SECONDS + 1),
    ]
    plan = plan_removal(files, NOW, LIMITS)
    assert names(plan.over_cap) == ["03-dead"]
    assert plan.kept_bytes == 1200 and plan.capped
    assert plan_removal([], NOW, LIMITS) == plan_removal([], NOW, LIMITS)
    empty = plan_removal([], NOW, LIMITS)
    assert (empty.expired, empty.over_cap, empty.kept_bytes, empty.capped) == ([], [], 0, False)


def test_ties_in_age_go_by_name():
    files = [f(f"0{i}", 400, DAY) for i in (3, 1, 2)]
    assert names(plan_removal(files, NOW, LIMITS).over_cap) == ["01"]


def test_only_top_level_record_files_are_listed(tmp_path):
    record = tmp_path / "predictions-2027-01-05-web-1-42.jsonl"
    record.write_text("x" * 7)
    (tmp_path / "predictions-2027-01-05-web-1-42.3.jsonl").write_text("x" * 3)
    (tmp_path / "feedback").mkdir()
    (tmp_path / "feedback" / "feedback-2027-01-05T00:00:00Z-web-1-42-0.jsonl").write_text("x")
    (tmp_path / "feedback" / "predictions-2027-01-05-web-1-9.jsonl").write_text("x")
    (tmp_path / "predictions-2027-01-05-dir-1.jsonl").mkdir()  # a directory, not a file
    (tmp_path / "predictions-2027-01-05-link-1.jsonl").symlink_to(record)
    (tmp_path / "predictions-notes.jsonl").write_text("x")  # no day: not a record file
    (tmp_path / "notes.txt").write_text("x")
    listed = {x.name: x.size for x in record_files(tmp_path)}
    assert listed == {
        "predictions-2027-01-05-web-1-42.jsonl": 7,
        "predictions-2027-01-05-web-1-42.3.jsonl": 3,
    }


def test_limits_are_params_and_a_part_must_fit_the_cap():
    monitoring = yaml.safe_load((REPO / "params.yaml").read_text())["serve"]["monitoring"]
    limits = MonitoringParams.model_validate(monitoring)
    assert 0 < limits.max_file_mb < limits.max_disk_mb and limits.retention_days > 0
    too_big = {**monitoring, "max_file_mb": limits.max_disk_mb + 1}
    with pytest.raises(ValidationError, match=r"max_file_mb \(\d+\) must not exceed max_disk_mb"):
        MonitoringParams.model_validate(too_big)
    missing = {k: v for k, v in monitoring.items() if k != "retention_days"}
    with pytest.raises(ValidationError, match=r"retention_days\n  Field required"):
        MonitoringParams.model_validate(missing)


# ---------------------------------------------------------------------------------------------
# The recorder thread on a real directory.


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"within {seconds} s, never: {what}"
        time.sleep(0.05)


def aged(path: Path, size: int, age_s: float) -> Path:
    path.write_text("x" * (size - 1) + "\n")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def answers(n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(class_id=1, class_name="Trouser", confidence=0.9)] * n


def bar() -> np.ndarray:
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 2:26, 12:16] = 200
    return image


def recorder(directory: Path, limits: RecordLimits, check_seconds: float = TOUCH_SECONDS):
    from service.monitoring import PredictionRecorder

    return PredictionRecorder(
        directory, "3", "m:1", 0.5, 100, limits, flush_seconds=3600, check_seconds=check_seconds
    )


def own_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"predictions-*-{socket.gethostname()}-{os.getpid()}*.jsonl"))


@pytest.fixture
def records(tmp_path) -> Path:
    """A records directory with a feedback/ folder that is old and large, as corrections are."""
    shards = tmp_path / "feedback"
    shards.mkdir()
    aged(shards / "feedback-2026-01-01T00:00:00.000Z-web-1-7-0.jsonl", 50_000, 400 * DAY)
    aged(shards / "predictions-2026-01-01-web-1-7.jsonl", 50_000, 400 * DAY)
    return tmp_path


def untouched(directory: Path) -> dict[str, tuple[int, float]]:
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime) for p in (directory / "feedback").iterdir()
    }


def test_the_recorder_thread_removes_old_files_then_the_oldest_over_the_cap(records):
    feedback = untouched(records)
    limits = RecordLimits(max_bytes=3000, retention_seconds=7 * DAY, part_bytes=10_000)
    before = {
        r: value("fashion_prediction_records_removed_files_total", reason=r)
        for r in ("retention", "cap")
    }
    removed_bytes = value("fashion_prediction_records_removed_bytes_total", reason="cap")
    rec = recorder(records, limits, check_seconds=0.05)
    try:
        # Written while the recorder runs: its periodic check must find them.
        expired = aged(records / "predictions-2027-01-01-web-2-9.jsonl", 100, 8 * DAY)
        oldest = aged(records / "predictions-2027-01-05-web-2-9.jsonl", 1500, 3 * DAY)
        old = aged(records / "predictions-2027-01-06-web-2-9.jsonl", 1000, 2 * DAY)
        kept = aged(records / "predictions-2027-01-07-web-2-9.jsonl", 1000, DAY)
        live = aged(records / "predictions-2027-01-08-web-3-9.jsonl", 1500, 10)  # another pod's
        other = aged(records / "notes.txt", 100_000, 100 * DAY)
        wait_for(lambda: not expired.exists() and not old.exists(), "old files removed")
        assert not oldest.exists()
        assert kept.exists() and live.exists() and other.exists()
        assert untouched(records) == feedback
        wait_for(
            lambda: value("fashion_prediction_records_bytes") == 2500, "the size gauge at 2,500"
        )
        assert value("fashion_prediction_records_max_bytes") == 3000
        fs = os.statvfs(records)
        size, free = fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize
        # Free space moves with whatever else writes to this disk: within 5% of it.
        measured = value("fashion_prediction_records_filesystem_free_bytes")
        assert 0 < measured <= size and abs(measured - free) < 0.05 * size
        assert (
            value("fashion_prediction_records_filesystem_size_bytes") == fs.f_blocks * fs.f_frsize
        )
        got = {
            r: value("fashion_prediction_records_removed_files_total", reason=r) - n
            for r, n in before.items()
        }
        assert got == {"retention": 1, "cap": 2}
        assert value("fashion_prediction_records_removed_bytes_total", reason="cap") == (
            removed_bytes + 2500
        )
    finally:
        rec.close()


def test_at_the_cap_with_only_live_files_records_are_dropped_then_resume(records):
    feedback = untouched(records)
    limits = RecordLimits(max_bytes=2000, retention_seconds=7 * DAY, part_bytes=10_000)
    live = aged(records / "predictions-2027-01-08-web-3-9.jsonl", 2500, 5)  # another pod's
    dropped = value("fashion_prediction_records_dropped_total", reason="records_cap")
    rec = recorder(records, limits)
    try:
        rec.record("predict", bar(), answers(1))
        rec.record("predict", np.repeat(bar(), 2, axis=0), answers(2))
        rec.flush()  # opening a file checks first: over the cap, only a live file
        assert value("fashion_prediction_records_dropped_total", reason="records_cap") == (
            dropped + 3
        )
        assert live.stat().st_size == 2500 and own_files(records) == []
        # That pod stopped writing long ago: its file can go, and recording resumes.
        os.utime(live, (time.time() - LIVE_SECONDS - 60,) * 2)
        rec.check()
        assert not live.exists()
        rec.record("predict", bar(), answers(1))
        rec.flush()
        (own,) = own_files(records)
        assert [json.loads(line)["class_name"] for line in own.read_text().splitlines()] == [
            "Trouser"
        ]
        assert value("fashion_prediction_records_dropped_total", reason="records_cap") == (
            dropped + 3
        )
        assert untouched(records) == feedback
    finally:
        rec.close()


def test_the_open_file_is_kept_live_and_never_removed(records):
    limits = RecordLimits(max_bytes=100, retention_seconds=60, part_bytes=10_000)
    rec = recorder(records, limits)
    try:
        rec.record("predict", np.repeat(bar(), 3, axis=0), answers(3))
        rec.flush()
        (own,) = own_files(records)
        # Older than the retention and alone over the cap by the clock, but open: the check
        # touches it (live for every other process) and keeps it.
        os.utime(own, (time.time() - 3600,) * 2)
        rec.check()
        assert own.exists() and time.time() - own.stat().st_mtime < LIVE_SECONDS
        size = own.stat().st_size
        assert size > limits.max_bytes
        rec.record("predict", bar(), answers(1))
        rec.flush()  # ... and over the cap with only it left: closed, records dropped
        assert own.stat().st_size == size
    finally:
        rec.close()


def part_numbers(files: list[Path]) -> list[int | None]:
    host, pid = socket.gethostname(), os.getpid()
    return sorted(file_part(p.name, file_day(p.name), host, pid) for p in files)


def test_files_are_split_into_parts_that_read_back_and_age_out(records):
    limits = RecordLimits(max_bytes=10_000, retention_seconds=7 * DAY, part_bytes=500)
    rec = recorder(records, limits)
    start = time.time()
    try:
        for n in (1, 1, 3, 1):  # 250 bytes a record here: a part is closed once it holds 500
            rec.record("predict", np.repeat(bar(), n, axis=0), answers(n))
            rec.flush()
        day, host, pid = (
            dt.datetime.fromtimestamp(start, dt.UTC).date(),
            socket.gethostname(),
            os.getpid(),
        )
        parts = [records / file_name(day, host, pid, n) for n in (0, 1, 2)]
        assert own_files(records) == sorted(parts)
        assert [len(p.read_text().splitlines()) for p in parts] == [2, 3, 1]
        t = dt.datetime.fromtimestamp
        back, bad = read_records(records, t(start - 1, dt.UTC), t(time.time() + 1, dt.UTC))
        assert len(back) == 6 and bad == 0
        # A closed part ages out like any other file while the process goes on in its own.
        os.utime(parts[0], (time.time() - 8 * DAY,) * 2)
        rec.check()
        assert not parts[0].exists() and parts[1].exists()
        rec.record("predict", bar(), answers(1))
        rec.flush()
        assert own_files(records) == sorted(parts[1:])
        assert len(parts[2].read_text().splitlines()) == 2
    finally:
        rec.close()


def test_a_file_removed_while_open_is_noticed_and_replaced(records):
    limits = RecordLimits(max_bytes=10_000, retention_seconds=7 * DAY, part_bytes=10_000)
    rec = recorder(records, limits)
    try:
        rec.record("predict", bar(), answers(1))
        rec.flush()
        (own,) = own_files(records)
        own.unlink()  # say, by hand
        rec.check()
        rec.record("predict", bar(), answers(1))
        rec.flush()
        (new,) = own_files(records)
        assert len(new.read_text().splitlines()) == 1  # a new file, with the new record
    finally:
        rec.close()
