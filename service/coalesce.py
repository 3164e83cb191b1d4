"""Batch the concurrent requests of one worker process into model calls, in-process.

A Coalescer sends the images waiting in this process as one call as soon as one of its
`max_in_flight` call slots is free: a lone request is sent at once (nothing is held back to wait
for company), and the requests that arrive while a call runs go out together in the next one.
Unlike BentoML's adaptive batcher (`batchable=True`) it keeps each endpoint's own request and
response types, never sheds load with a 503, and needs no learned waiting time (docs/serving.md,
"Batching", has the measurements).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

BatchCall = Callable[[np.ndarray], Awaitable[np.ndarray]]


class Coalescer:
    """`await coalescer(images)` -> the batch call's rows for `images`, in order."""

    def __init__(self, call: BatchCall, max_batch: int, max_in_flight: int = 2) -> None:
        self.call = call
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.waiting: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self.calls: set[asyncio.Task[None]] = set()  # strong references until each call ends

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) > self.max_batch:
            raise ValueError(f"{len(images)} images > max_batch={self.max_batch}")
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((images, future))
        self._send()
        # shield: a client that disconnects cancels only its own wait, not the shared call.
        return await asyncio.shield(future)

    def _send(self) -> None:
        while self.waiting and self.in_flight < self.max_in_flight:
            batch, count = [], 0
            while self.waiting and count + len(self.waiting[0][0]) <= self.max_batch:
                batch.append(self.waiting.popleft())
                count += len(batch[-1][0])
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self.calls.add(task)
            task.add_done_callback(self.calls.discard)

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        try:
            out = await self.call(np.concatenate([images for images, _ in batch]))
        except Exception as err:  # every request in the call gets the call's error
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
        else:
            start = 0
            for images, future in batch:
                if not future.done():
                    future.set_result(out[start : start + len(images)])
                start += len(images)
        finally:
            self.in_flight -= 1
            self._send()
