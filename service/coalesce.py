"""Batch the concurrent requests of one worker process into model calls, in-process.

A Coalescer sends the images waiting in this process as one call as soon as one of its
`max_in_flight` call slots is free: a lone request is sent at once (nothing is held back to wait
for company), and the requests that arrive while a call runs go out together in the next one.
Unlike BentoML's adaptive batcher (`batchable=True`) it keeps each endpoint's own request and
response types and needs no learned waiting time (docs/serving.md, "Batching", has the
measurements). Load is shed before a request gets here (service/guard.py); what waits here and
is no longer wanted leaves the queue before the model sees it: a request whose caller was
cancelled (its client went away, or BentoML's timeout answered 504) and one that has waited
longer than `max_wait` seconds (it fails with `Expired`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

BatchCall = Callable[[np.ndarray], Awaitable[np.ndarray]]
Abandoned = Callable[[str, int], None]  # (reason, images): "cancelled" or "expired"


class Expired(Exception):
    """The request waited longer than the coalescer's max_wait for a model call."""


@dataclass
class _Waiting:
    images: np.ndarray
    future: asyncio.Future[np.ndarray]
    since: float  # loop time when it joined the queue


class Coalescer:
    """`await coalescer(images)` -> the batch call's rows for `images`, in order.

    `on_abandoned(reason, n)` hears of the n images of each request that left the queue
    unanswered: "cancelled" or "expired".
    """

    def __init__(
        self,
        call: BatchCall,
        max_batch: int,
        max_in_flight: int = 2,
        max_wait: float = float("inf"),
        on_abandoned: Abandoned = lambda reason, n: None,
    ) -> None:
        self.call = call
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.max_wait = max_wait
        self.in_flight = 0
        self.waiting: deque[_Waiting] = deque()
        self.calls: set[asyncio.Task[None]] = set()  # strong references until each call ends
        self.on_abandoned = on_abandoned

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) > self.max_batch:
            raise ValueError(f"{len(images)} images > max_batch={self.max_batch}")
        loop = asyncio.get_running_loop()
        entry = _Waiting(images, loop.create_future(), loop.time())
        self.waiting.append(entry)
        self._send()
        try:
            # shield: a caller that is cancelled cancels only its own wait, not a shared call.
            return await asyncio.shield(entry.future)
        except asyncio.CancelledError:
            # Still queued: it is skipped when the next batch is formed. Already in a call: the
            # call's other requests are answered; this one's rows are dropped.
            entry.future.cancel()
            raise

    def _send(self) -> None:
        now = asyncio.get_running_loop().time()
        while self.waiting and self.in_flight < self.max_in_flight:
            batch: list[_Waiting] = []
            count = 0
            while self.waiting and count + len(self.waiting[0].images) <= self.max_batch:
                entry = self.waiting.popleft()
                if entry.future.done():  # cancelled while it waited
                    self.on_abandoned("cancelled", len(entry.images))
                    continue
                if now - entry.since > self.max_wait:
                    self.on_abandoned("expired", len(entry.images))
                    entry.future.set_exception(Expired(f"waited over {self.max_wait:g} s"))
                    continue
                batch.append(entry)
                count += len(entry.images)
            if not batch:
                continue
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self.calls.add(task)
            task.add_done_callback(self.calls.discard)

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            out = await self.call(np.concatenate([entry.images for entry in batch]))
        except Exception as err:  # every request in the call gets the call's error
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(err)
        else:
            start = 0
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_result(out[start : start + len(entry.images)])
                start += len(entry.images)
        finally:
            self.in_flight -= 1
            self._send()
