"""What the service answered, recorded off the request path: JSON lines and Prometheus metrics.

A request pays for one `deque.append` in `PredictionRecorder.record` (or, when the recorder is
`queue_size` requests behind, a dropped record counted in /metrics): no disk write, no JSON, no
per-image arithmetic. A background thread per worker process wakes every FLUSH_SECONDS, takes
everything waiting, summarises the images all at once (pipeline/core/prediction_log.py), appends the
JSON lines to this process's own file (`predictions-<UTC day>-<host>-<pid>[.<part>].jsonl`, so
workers never share a file) and then updates the counters below. BentoML runs prometheus_client in
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set for each worker before it imports this module),
so /metrics sums the counters of all workers.

The same thread keeps the records directory within its limits (pipeline/core/record_files.py):
every TOUCH_SECONDS, and before it opens a file, it touches its open file (so other processes
see it live), removes what `plan_removal` says and sets the disk gauges. Those are measured by
every worker of every pod sharing the directory: `mostrecent` makes /metrics show the latest
measurement instead of the sum. Over the cap with only live files left, it closes its file (so
that, no longer touched, it can go once old enough) and drops records (`reason="records_cap"`)
until a check finds room again.

Why not `bentoml.monitor`: it writes synchronously in the calling thread, one logging call per
record through python-json-logger; it configures its files with `logging.config.dictConfig`,
which closes every logging handler already installed in the process; and its timestamp is the
write time, not the answer's. Recording here is ~60 lines with no such side effects.

Past 300 lines because the writing and the disk limits share one state, the open file: it is
what the thread appends to, what the cleanup must keep and touch, and what reaching the cap
closes; one lock-holding class keeps those steps in order.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol

import numpy as np
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram

from pipeline.core.params import MonitoringParams
from pipeline.core.prediction_log import record_lines
from pipeline.core.record_files import (
    TOUCH_SECONDS,
    RecordLimits,
    file_day,
    file_name,
    file_part,
    plan_removal,
    record_files,
)
from service import settings

FLUSH_SECONDS = 0.25  # records and metrics lag answers by at most about this much
log = logging.getLogger(__name__)
_low = settings.serve_params().monitoring.low_confidence

PREDICTIONS = PromCounter(
    "fashion_predictions",
    "Answered images by predicted class and endpoint",
    ["class_name", "endpoint"],
)
CONFIDENCE = Histogram(
    "fashion_prediction_confidence",
    "Confidence (the predicted class's probability) of answered images",
    ["endpoint"],
    buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0),
)
LOW_CONFIDENCE = PromCounter(
    "fashion_low_confidence_predictions",
    f"Answered images with confidence below {_low} (serve.monitoring.low_confidence)",
    ["endpoint"],
)
DROPPED = PromCounter(
    "fashion_prediction_records_dropped",
    "Predictions not recorded: queue_full (the recorder fell behind), write_error (disk), "
    "records_cap (the records directory at serve.monitoring.max_disk_mb), error",
    ["reason"],
)
RECORDS_BYTES = Gauge(
    "fashion_prediction_records_bytes",
    "Bytes of the prediction record files (predictions-*.jsonl) in the records directory",
    multiprocess_mode="mostrecent",
)
RECORDS_MAX_BYTES = Gauge(
    "fashion_prediction_records_max_bytes",
    "The cap on the prediction record files (serve.monitoring.max_disk_mb)",
    multiprocess_mode="mostrecent",
)
FILESYSTEM_FREE = Gauge(
    "fashion_prediction_records_filesystem_free_bytes",
    "Free bytes (for the service's user) of the filesystem holding the records directory",
    multiprocess_mode="mostrecent",
)
FILESYSTEM_SIZE = Gauge(
    "fashion_prediction_records_filesystem_size_bytes",
    "Size in bytes of the filesystem holding the records directory",
    multiprocess_mode="mostrecent",
)
REMOVED_FILES = PromCounter(
    "fashion_prediction_records_removed_files",
    "Prediction record files removed: retention (older than serve.monitoring.retention_days), "
    "cap (the oldest, over serve.monitoring.max_disk_mb)",
    ["reason"],
)
REMOVED_BYTES = PromCounter(
    "fashion_prediction_records_removed_bytes",
    "Bytes of the prediction record files removed, by reason (as for files)",
    ["reason"],
)


class Answer(Protocol):
    class_id: int
    class_name: str
    confidence: float


class PredictionRecorder:
    """Records answers from the event loop without waiting: `record()` queues, a thread writes
    and keeps the records directory within `limits`."""

    def __init__(
        self,
        records_dir: Path | None,
        model_version: str,
        bento_model: str,
        low_confidence: float,
        queue_size: int,
        limits: RecordLimits,
        flush_seconds: float = FLUSH_SECONDS,
        check_seconds: float = TOUCH_SECONDS,
    ) -> None:
        self.records_dir = records_dir
        self.model_version = model_version
        self.bento_model = bento_model
        self.low_confidence = low_confidence
        self.queue_size = queue_size
        self.limits = limits
        self.flush_seconds = flush_seconds
        self.check_seconds = check_seconds
        # deque.append and popleft are atomic: the event loop and the thread need no lock.
        self.pending: deque[tuple[float, str, np.ndarray, Sequence[Answer], bool]] = deque()
        self._file: IO[str] | None = None
        self._file_name = ""
        self._file_day: dt.date | None = None
        self._file_bytes = 0
        self._reopen = ""  # the file to go on in after a write error
        self._capped = False
        self._warned: dict[str, float] = {}
        # The thread writes and checks; tests may call flush() and check() too: one at a time.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-recorder", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a worker stopped by SIGTERM writes what is still queued

    def record(
        self, endpoint: str, pixels: np.ndarray, answers: Sequence[Answer], inverted: bool = False
    ) -> None:
        """Queue the answers to `pixels` (N, 28, 28) for recording; never blocks."""
        if len(self.pending) >= self.queue_size:
            DROPPED.labels("queue_full").inc(len(answers))
            return
        self.pending.append((time.time(), endpoint, pixels, answers, inverted))

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._close_file()

    def _run(self) -> None:
        next_check = next_flush = time.monotonic()  # check at once: gauges set from the start
        while True:
            if time.monotonic() >= next_check:
                self.check()
                next_check = time.monotonic() + self.check_seconds
            if time.monotonic() >= next_flush:
                self.flush()
                next_flush = time.monotonic() + self.flush_seconds
            if self._stop.wait(max(0.0, min(next_check, next_flush) - time.monotonic())):
                break
        self.flush()

    def flush(self) -> None:
        """Record everything queued so far (the thread calls this; tests may too)."""
        items = []
        while self.pending:
            items.append(self.pending.popleft())
        if not items:
            return
        answers = [a for item in items for a in item[3]]
        with self._lock:
            try:
                if self.records_dir is not None:
                    self._write(items, answers)
                self._count(items, answers)
            except Exception:  # the thread must outlive any bad batch
                DROPPED.labels("error").inc(len(answers))
                log.exception("recording %d predictions failed", len(answers))

    def check(self) -> None:
        """Keep the records directory within the limits and measure it (the thread calls this
        every `check_seconds` and before opening a file; tests may too)."""
        if self.records_dir is None:
            return
        with self._lock:
            try:
                self._check(self.records_dir)
            except Exception as err:  # a full, read-only or vanished volume: answer as usual
                self._warn(
                    "check", "cannot check prediction records in %s: %s", self.records_dir, err
                )

    def _check(self, directory: Path) -> None:
        if self._file is not None:
            if self._file_day != dt.datetime.now(dt.UTC).date():
                self._close_file()  # yesterday's file: closed, it ages out like any other
            else:
                self._touch()
        directory.mkdir(parents=True, exist_ok=True)
        plan = plan_removal(
            record_files(directory), time.time(), self.limits, keep={self._file_name} - {""}
        )
        kept = plan.kept_bytes
        for reason, files in (("retention", plan.expired), ("cap", plan.over_cap)):
            for f in files:
                try:
                    (directory / f.name).unlink()
                except FileNotFoundError:
                    continue  # another worker or pod removed it first and counted it
                except OSError as err:
                    kept += f.size
                    self._warn("remove", "cannot remove prediction records %s: %s", f.name, err)
                    continue
                REMOVED_FILES.labels(reason).inc()
                REMOVED_BYTES.labels(reason).inc(f.size)
        RECORDS_BYTES.set(kept)
        RECORDS_MAX_BYTES.set(self.limits.max_bytes)
        fs = os.statvfs(directory)
        FILESYSTEM_FREE.set(fs.f_bavail * fs.f_frsize)
        FILESYSTEM_SIZE.set(fs.f_blocks * fs.f_frsize)
        if plan.capped and not self._capped:
            log.warning(
                "prediction records in %s reached serve.monitoring.max_disk_mb (%d bytes) with "
                "only live files left: not recording until old files can go",
                directory,
                self.limits.max_bytes,
            )
        if plan.capped:
            self._close_file()  # untouched from now on, it can go once no longer live
        self._capped = plan.capped

    def _touch(self) -> None:
        """Mark the open file live, or notice that it was removed under this process."""
        assert self._file is not None and self.records_dir is not None
        try:
            on_disk = os.stat(self.records_dir / self._file_name)
            still_there = os.path.samestat(on_disk, os.fstat(self._file.fileno()))
        except FileNotFoundError:
            still_there = False
        if still_there:
            os.utime(self._file.fileno())
        else:
            self._warn("lost", "prediction records %s were removed while open", self._file_name)
            self._close_file()

    def _write(self, items: list, answers: list[Answer]) -> None:
        if self._file is not None and self._file_day != dt.datetime.now(dt.UTC).date():
            self._close_file()  # a new UTC day, a new file
        if self._file is None and not self._capped:
            self.check()  # before opening a file: room for it? (capped: the periodic check says)
        if self._capped:
            DROPPED.labels("records_cap").inc(len(answers))
            return
        repeat = [len(item[3]) for item in items]
        text = record_lines(
            times=np.repeat([item[0] for item in items], repeat).tolist(),
            endpoints=np.repeat([item[1] for item in items], repeat).tolist(),
            inverted=np.repeat([item[4] for item in items], repeat).tolist(),
            pixels=np.concatenate([item[2].reshape(-1, *item[2].shape[-2:]) for item in items]),
            class_ids=[a.class_id for a in answers],
            class_names=[a.class_name for a in answers],
            confidences=[a.confidence for a in answers],
            model_version=self.model_version,
            bento_model=self.bento_model,
        )
        try:
            file = self._open()
            file.write(text)
            file.flush()  # readers (the drift report) see whole batches
        except OSError as err:
            DROPPED.labels("write_error").inc(len(answers))
            self._warn("write", "cannot write prediction records to %s: %s", self.records_dir, err)
            self._close_file(reopen=True)  # the same file next time, if it is still there
            return
        self._file_bytes += len(text)  # JSON lines are ASCII: characters are bytes
        if self._file_bytes >= self.limits.part_bytes:
            self._close_file()  # the next batch goes to the next part

    def _open(self) -> IO[str]:
        if self._file is None:
            assert self.records_dir is not None
            self.records_dir.mkdir(parents=True, exist_ok=True)
            today, host, pid = dt.datetime.now(dt.UTC).date(), socket.gethostname(), os.getpid()
            path = self.records_dir / self._reopen
            if self._reopen and file_day(self._reopen) == today and path.is_file():
                size = path.stat().st_size  # after a write error: on in the same file
            else:
                # A new part: after this process's earlier ones today, or after those of a
                # process before it with the same host and pid (a restarted container's).
                parts = [
                    n
                    for f in record_files(self.records_dir)
                    if (n := file_part(f.name, today, host, pid)) is not None
                ]
                path = self.records_dir / file_name(
                    today, host, pid, max(parts) + 1 if parts else 0
                )
                size = 0
            self._file = path.open("a", encoding="utf-8")
            self._file_name, self._file_day, self._file_bytes = path.name, today, size
            self._reopen = ""
        return self._file

    def _close_file(self, reopen: bool = False) -> None:
        """Close the open file; the next write opens a new part, or with `reopen` this one."""
        if not reopen:
            self._reopen = ""
        elif self._file_name:
            self._reopen = self._file_name
        if self._file is not None:
            try:
                self._file.close()
            except OSError as err:  # what the last flush could not write is lost: say so
                self._warn("write", "cannot close prediction records %s: %s", self._file_name, err)
        self._file, self._file_name = None, ""

    def _warn(self, kind: str, message: str, *args: object) -> None:
        """Log a problem once a minute per kind: a full disk must not flood the log."""
        now = time.monotonic()
        if now - self._warned.get(kind, -60.0) >= 60:
            self._warned[kind] = now
            log.warning(message, *args)

    def _count(self, items: list, answers: list[Answer]) -> None:
        per_class: Counter[tuple[str, str]] = Counter()
        low: Counter[str] = Counter()
        for item in items:
            endpoint = item[1]
            confidence = CONFIDENCE.labels(endpoint)
            for a in item[3]:
                per_class[a.class_name, endpoint] += 1
                confidence.observe(a.confidence)
                if a.confidence < self.low_confidence:
                    low[endpoint] += 1
        for (class_name, endpoint), n in per_class.items():
            PREDICTIONS.labels(class_name, endpoint).inc(n)
        for endpoint, n in low.items():
            LOW_CONFIDENCE.labels(endpoint).inc(n)


class NoRecorder:
    """serve.monitoring.enabled: false: answers are neither recorded nor counted."""

    def record(
        self, endpoint: str, pixels: np.ndarray, answers: Sequence[Answer], inverted: bool = False
    ) -> None:
        """Do nothing."""


def recorder(model_version: str, bento_model: str) -> PredictionRecorder | NoRecorder:
    """The recorder of this worker process, configured from params (and the environment)."""
    config = settings.serve_params().monitoring
    if not config.enabled:
        return NoRecorder()
    return PredictionRecorder(
        settings.records_dir(),
        model_version,
        bento_model,
        config.low_confidence,
        config.queue_size,
        record_limits(config),
    )


def record_limits(config: MonitoringParams) -> RecordLimits:
    """serve.monitoring's cap, retention and file size in bytes and seconds (MB = 10^6 bytes)."""
    return RecordLimits(
        max_bytes=config.max_disk_mb * 1_000_000,
        retention_seconds=config.retention_days * 86_400,
        part_bytes=config.max_file_mb * 1_000_000,
    )
