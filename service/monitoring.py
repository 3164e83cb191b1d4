"""What the service answered, recorded off the request path: JSON lines and Prometheus metrics.

A request pays for one `deque.append` in `PredictionRecorder.record` (or, when the recorder is
`queue_size` requests behind, a dropped record counted in /metrics): no disk write, no JSON, no
per-image arithmetic. A background thread per worker process wakes every FLUSH_SECONDS, takes
everything waiting, summarises the images all at once (pipeline/core/prediction_log.py), appends the
JSON lines to this process's own file (`predictions-<UTC day>-<host>-<pid>.jsonl`, so workers
never share a file) and then updates the counters below. BentoML runs prometheus_client in
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set for each worker before it imports this module),
so /metrics sums the counters of all workers.

Why not `bentoml.monitor`: it writes synchronously in the calling thread, one logging call per
record through python-json-logger; it configures its files with `logging.config.dictConfig`,
which closes every logging handler already installed in the process; and its timestamp is the
write time, not the answer's. Recording here is ~60 lines with no such side effects.
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
from prometheus_client import Histogram

from pipeline.core.prediction_log import file_name, record_lines
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
    "Predictions not recorded: queue_full (the recorder fell behind), write_error (disk), error",
    ["reason"],
)


class Answer(Protocol):
    class_id: int
    class_name: str
    confidence: float


class PredictionRecorder:
    """Records answers from the event loop without waiting: `record()` queues, a thread writes."""

    def __init__(
        self,
        records_dir: Path | None,
        model_version: str,
        bento_model: str,
        low_confidence: float,
        queue_size: int,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self.records_dir = records_dir
        self.model_version = model_version
        self.bento_model = bento_model
        self.low_confidence = low_confidence
        self.queue_size = queue_size
        self.flush_seconds = flush_seconds
        # deque.append and popleft are atomic: the event loop and the thread need no lock.
        self.pending: deque[tuple[float, str, np.ndarray, Sequence[Answer], bool]] = deque()
        self._file: IO[str] | None = None
        self._file_day: dt.date | None = None
        self._last_error = 0.0
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
        if self._file is not None:
            self._file.close()
            self._file = None

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Record everything queued so far (the thread calls this; tests may too)."""
        items = []
        while self.pending:
            items.append(self.pending.popleft())
        if not items:
            return
        answers = [a for item in items for a in item[3]]
        try:
            if self.records_dir is not None:
                self._write(items, answers)
            self._count(items, answers)
        except Exception:  # the thread must outlive any bad batch
            DROPPED.labels("error").inc(len(answers))
            log.exception("recording %d predictions failed", len(answers))

    def _write(self, items: list, answers: list[Answer]) -> None:
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
            self._open().write(text)
            self._file.flush()  # readers (the drift report) see whole batches
        except OSError as err:
            DROPPED.labels("write_error").inc(len(answers))
            if time.monotonic() - self._last_error > 60:  # a full disk must not flood the log
                self._last_error = time.monotonic()
                log.warning("cannot write prediction records to %s: %s", self.records_dir, err)
            self._file = None  # reopen next time

    def _open(self) -> IO[str]:
        today = dt.datetime.now(dt.UTC).date()
        if self._file is None or self._file_day != today:
            if self._file is not None:
                self._file.close()
            assert self.records_dir is not None
            self.records_dir.mkdir(parents=True, exist_ok=True)
            name = file_name(today, socket.gethostname(), os.getpid())
            self._file = (self.records_dir / name).open("a", encoding="utf-8")
            self._file_day = today
        return self._file

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
    )
