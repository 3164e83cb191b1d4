"""POST /feedback: corrections from people and programs, checked, capped and stored as shards.

A correction names the right class (`label`: an id or a class name) for an image the service
answered, given by its `prediction_id` (service/prediction_ids.py) or its 28x28 `pixels`. A
request is checked whole before anything is stored: one bad item refuses it all (a 4xx naming
the item and the problem). Accepted corrections are written as one new shard
(pipeline/core/feedback_log.py) by one writer thread per worker.

Caps that hold under abuse (serve.feedback): items per request (413), corrections per `source`
per UTC day and in all per day (429, Retry-After until midnight UTC), and the shards' size on
disk (503). The day's counts and the size come from the shards themselves, every worker and pod
reading the directory they share (refreshed at most every REFRESH_SECONDS, so concurrent
writers may overshoot by what they accept in that time). Every refusal is counted in /metrics.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client import Counter as PromCounter

from pipeline.core.feedback_log import (
    SHARD_GLOB,
    Correction,
    pixels_sha256,
    shard_name,
    write_shard,
)
from pipeline.core.params import FeedbackServeParams
from service.inputs import InputError
from service.prediction_ids import PredictionIds
from service.schemas import FeedbackItem, FeedbackStored, StoredCorrection

ModelCall = Callable[[np.ndarray], Awaitable[np.ndarray]]  # pixels (N, 28, 28) -> probabilities

REFRESH_SECONDS = 2.0
NO_SOURCE = "(none)"  # how a correction without a `source` is counted

CORRECTIONS = PromCounter(
    "fashion_feedback_corrections",
    "Corrections stored, by the class the sender gave, the model version that answered, and "
    "whether that answer was the same class (agrees: true/false)",
    ["label", "model_version", "agrees"],
)
REFUSED = PromCounter(
    "fashion_feedback_refused",
    "Corrections refused, by reason: invalid, too_many_items, source_daily_cap, daily_cap, "
    "disk_cap, not_stored (no records directory)",
    ["reason"],
)


def parse_label(label: int | str, class_names: list[str]) -> int:
    """A class id (0-9) or a class name (any case) -> the class id; 422 naming the classes."""
    if isinstance(label, int) and 0 <= label < len(class_names):
        return label
    if isinstance(label, str):
        folded = [name.casefold() for name in class_names]
        if label.strip().casefold() in folded:
            return folded.index(label.strip().casefold())
    raise InputError(
        422,
        f"label {label!r} is not a class: give an id 0-{len(class_names) - 1} or one of "
        + ", ".join(class_names),
    )


def seconds_to_midnight(now: float) -> int:
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC)
    return max(1, int(midnight.timestamp() - now))


@dataclass
class _Shard:
    day: dt.date
    size: int
    sources: Counter[str] = field(default_factory=Counter)


class FeedbackStore:
    """The shards of one directory: the caps' counts, read back from them, and new shards."""

    def __init__(self, directory: Path | None, limits: FeedbackServeParams) -> None:
        self.directory = directory
        self.limits = limits
        self.shards: dict[str, _Shard] = {}
        self.refreshed = 0.0
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.seq = 0
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="feedback")

    def _refresh(self, now: float) -> None:
        """Learn of shards written since the last look (by any worker or pod): each is read once,
        being immutable."""
        if now - self.refreshed < REFRESH_SECONDS or self.directory is None:
            return
        self.refreshed = now
        if not self.directory.is_dir():
            return
        for path in self.directory.glob(SHARD_GLOB):
            if path.name in self.shards:
                continue
            try:
                text = path.read_text(errors="replace")
            except OSError:  # removed meanwhile
                continue
            shard = _Shard(_shard_day(path.name), len(text.encode()))
            for line in text.splitlines():
                try:
                    shard.sources[json.loads(line).get("source") or NO_SOURCE] += 1
                except (ValueError, AttributeError):
                    shard.sources[NO_SOURCE] += 1
            self.shards[path.name] = shard

    def refusal(self, source: str | None, n: int, now: float) -> InputError | None:
        """Why `n` more corrections from `source` cannot be stored now, or None."""
        limits = self.limits
        if self.directory is None:
            reason = "this service stores no feedback (serve.monitoring.records_dir is null)"
            return _refused("not_stored", 503, reason)
        if n > limits.max_items_per_request:
            return _refused(
                "too_many_items",
                413,
                f"{n} corrections in one request; the limit is {limits.max_items_per_request} "
                "(serve.feedback.max_items_per_request)",
            )
        self._refresh(now)
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        day = [s for s in self.shards.values() if s.day == today]
        from_source = sum(s.sources[source or NO_SOURCE] for s in day)
        if from_source + n > limits.max_per_source_per_day:
            return _daily(
                "source_daily_cap",
                f"source {source or NO_SOURCE!r} has sent {from_source} corrections today; the "
                f"limit is {limits.max_per_source_per_day} a day (serve.feedback.max_per_source_per_day)",
                now,
            )
        if sum(sum(s.sources.values()) for s in day) + n > limits.max_per_day:
            message = f"{limits.max_per_day} corrections a day at most (serve.feedback.max_per_day)"
            return _daily("daily_cap", message, now)
        if sum(s.size for s in self.shards.values()) > limits.max_disk_mb * 1e6:
            message = f"the stored feedback has reached {limits.max_disk_mb:g} MB "
            return _refused("disk_cap", 503, message + "(serve.feedback.max_disk_mb)")
        return None

    async def store(self, corrections: list[Correction]) -> Path:
        """Write `corrections` as one new shard, in the writer thread; count them."""
        assert self.directory is not None
        self.seq += 1
        name = shard_name(dt.datetime.now(dt.UTC), self.host, self.pid, self.seq)
        loop = asyncio.get_running_loop()
        path = await loop.run_in_executor(
            self.writer, write_shard, self.directory, name, corrections
        )
        shard = _Shard(_shard_day(name), path.stat().st_size)
        shard.sources.update(c.source or NO_SOURCE for c in corrections)
        self.shards[name] = shard
        for c in corrections:
            CORRECTIONS.labels(str(c.label), c.model_version, str(c.label == c.predicted).lower())
        return path


class Corrections:
    """POST /feedback's work: check a request whole, then store it as one shard."""

    def __init__(
        self,
        store: FeedbackStore,
        ids: PredictionIds,
        class_names: list[str],
        model_version: str,
        bento_model: str,
    ) -> None:
        self.store, self.ids, self.class_names = store, ids, class_names
        self.model_version, self.bento_model = model_version, bento_model

    async def accept(
        self, items: list[FeedbackItem], source: str | None, model: ModelCall
    ) -> FeedbackStored:
        """Store every item or none: an InputError names the first bad item (items[k])."""
        now = time.time()
        if refusal := self.store.refusal(source, len(items), now):
            raise refusal
        checked = []  # (item, label, receipt or None)
        for k, item in enumerate(items):
            try:
                label = parse_label(item.label, self.class_names)
                if (item.prediction_id is None) == (item.pixels is None):
                    raise InputError(422, "give its prediction_id or its pixels (one of them)")
                receipt = self.ids.check(item.prediction_id, now) if item.prediction_id else None
            except InputError as err:
                REFUSED.labels("invalid").inc(len(items))
                raise InputError(err.status, f"items[{k}]: {err}") from None
            checked.append((item, label, receipt))
        # The served model's answer for corrections given as pixels (one model call for all).
        given = [np.asarray(i.pixels, np.uint8) for i, _, r in checked if r is None]
        proba = iter(await model(np.stack(given)) if given else [])
        corrections = []
        for item, label, receipt in checked:
            if receipt is not None:
                pixels, version = receipt.pixels, receipt.model_version
                predicted, confidence = receipt.predicted, receipt.confidence
            else:
                p = next(proba)
                pixels, version = np.asarray(item.pixels, np.uint8), self.model_version
                predicted, confidence = int(p.argmax()), float(p.max())
            corrections.append(
                correction(
                    pixels,
                    label,
                    predicted,
                    confidence,
                    version,
                    self.bento_model,
                    item.prediction_id,
                    source,
                )
            )
        await self.store.store(corrections)
        return FeedbackStored(
            stored=[
                StoredCorrection(
                    id=c.id,
                    label=c.label,
                    label_name=self.class_names[c.label],
                    predicted=c.predicted,
                    predicted_name=self.class_names[c.predicted],
                    confidence=round(c.confidence, 6),
                    model_version=c.model_version,
                    agrees=c.label == c.predicted,
                )
                for c in corrections
            ]
        )


def correction(
    pixels: np.ndarray,
    label: int,
    predicted: int,
    confidence: float,
    model_version: str,
    bento_model: str,
    prediction_id: str | None,
    source: str | None,
) -> Correction:
    """A new correction with its own id and the time now."""
    return Correction(
        id=uuid.uuid4().hex,
        time=dt.datetime.now(dt.UTC),
        model_version=model_version,
        bento_model=bento_model,
        prediction_id=prediction_id,
        predicted=predicted,
        confidence=confidence,
        label=label,
        source=source,
        pixels_sha256=pixels_sha256(pixels),
        pixels=pixels,
    )


def _shard_day(name: str) -> dt.date:
    stamp = name.removeprefix("feedback-")[:8]
    try:
        return dt.datetime.strptime(stamp, "%Y%m%d").date()
    except ValueError:
        return dt.date.min


def _refused(reason: str, status: int, message: str) -> InputError:
    REFUSED.labels(reason).inc()
    return InputError(status, message)


def _daily(reason: str, message: str, now: float) -> InputError:
    REFUSED.labels(reason).inc()
    retry = {"Retry-After": str(seconds_to_midnight(now))}
    return InputError(429, f"{message}; retry after midnight UTC", retry)
