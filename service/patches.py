"""Two fixes to bentoml 1.4.39 internals, applied by each service process (idempotent).

1. The request timeout (`traffic.timeout`) never cancels its timer. The timer keeps the
   request's context (its tracing span, closures, ...) alive for the full timeout after the
   response went out: under 500 requests/s that is ~10^6 objects, and every full garbage
   collection then stalls the process for 100-300 ms. Here the timer is cancelled on completion.
2. The adaptive batcher learns how long to hold a request back, waiting for others to batch
   with, from the waits it observed recently; those include time queued behind a busy model.
   After a burst it held lone requests ~25 ms instead of ~0, for minutes (the estimate decays by
   ~5% every 5 s). The learned hold is capped at a few milliseconds; under load, batches still
   form while the previous batch runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

MAX_HOLD_S = 0.002


def apply() -> None:
    cancel_request_timers()
    cap_batching_hold()


def cancel_request_timers() -> None:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from starlette.responses import JSONResponse

    if getattr(TimeoutMiddleware.__call__, "__patched__", False):
        return

    async def __call__(self: TimeoutMiddleware, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                error = f"Not able to process the request in {self.timeout} seconds"
                await JSONResponse({"error": error}, status_code=504)(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    __call__.__patched__ = True  # type: ignore[attr-defined]
    TimeoutMiddleware.__call__ = __call__


def cap_batching_hold(max_hold_s: float = MAX_HOLD_S) -> None:
    from bentoml._internal.marshal.dispatcher import Optimizer

    refresh = Optimizer.trigger_refresh
    if getattr(refresh, "__patched__", False):
        return

    def trigger_refresh(self: Optimizer) -> None:
        refresh(self)
        self.wait = min(self.wait, max_hold_s)

    trigger_refresh.__patched__ = True  # type: ignore[attr-defined]
    Optimizer.trigger_refresh = trigger_refresh
