"""Load shedding: how many prediction requests a worker takes on at once (docs/serving.md,
"Under overload").

A worker admits a request while it holds fewer than its current limit, and while the bodies it
holds stay within serve.max_in_flight_mb (counted at their declared size before they are read).
The limit follows the worker's own pace (Little's law: requests in progress = answers per second
x time each spends in the worker): about serve.queue_target_s of its work, kept between
serve.min_in_flight and serve.max_in_flight. The pace is its last COMPLETIONS answers over the
time it spent with at least one request in progress: idle time between sparse requests is not
work, so a quiet hour does not make the next burst look like overload. So on any machine
and for any mix of requests an admitted request waits about queue_target_s at most, and the rest
are answered 503 at once, with Retry-After, instead of all of them waiting in a queue until the
timeout while the CPU works on requests nobody waits for any more.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from service.inputs import Busy

COMPLETIONS = 64  # answers the pace is measured over


class Admission:
    """One worker's requests and body bytes in progress, and its limit; only the event loop
    calls it (no locks)."""

    def __init__(
        self,
        min_requests: int,
        max_requests: int,
        max_bytes: int,
        target_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_requests = min_requests
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.target = target_seconds
        self.requests = 0
        self.bytes = 0
        self.clock = clock
        self.busy_before = 0.0  # seconds with a request in progress, up to busy_since
        self.busy_since = 0.0
        # the busy clock (busy()) at each of the last COMPLETIONS answers
        self.completed: deque[float] = deque(maxlen=COMPLETIONS)

    def busy(self) -> float:
        """Seconds this worker has spent with at least one request in progress."""
        return self.busy_before + (self.clock() - self.busy_since if self.requests else 0.0)

    def pace(self) -> float | None:
        """Answers per busy second over the last COMPLETIONS (None until there are enough)."""
        if len(self.completed) < 8 or self.completed[-1] <= self.completed[0]:
            return None
        return (len(self.completed) - 1) / (self.completed[-1] - self.completed[0])

    def limit(self) -> int:
        """Requests in progress admitted now: queue_target_s of work at the measured pace."""
        pace = self.pace()
        if pace is None:
            return self.max_requests
        # - 1e-6: float noise (0.5 s x 20.000001/s) must not round 10 requests up to 11
        return max(self.min_requests, min(self.max_requests, math.ceil(self.target * pace - 1e-6)))

    def refuse(self, body_bytes: int) -> Busy | None:
        """Admit a request with `body_bytes` (None), or say why not (a 503 to answer)."""
        if self.requests >= (limit := self.limit()):
            return Busy(
                "in_flight",
                f"{self.requests} requests in progress in this worker, its limit now (about "
                f"{self.target:g} s of its work: serve.queue_target_s; at most serve.max_in_flight "
                f"= {self.max_requests})"
                if limit < self.max_requests
                else f"{self.requests} requests in progress in this worker (serve.max_in_flight)",
            )
        if self.bytes + body_bytes > self.max_bytes and self.requests:
            # One request alone is always admitted: its body fits serve.max_upload_bytes.
            return Busy(
                "body_bytes",
                f"{self.bytes / 1e6:.1f} MB of uploads in progress in this worker "
                "(serve.max_in_flight_mb)",
            )
        if not self.requests:
            self.busy_since = self.clock()
        self.requests += 1
        self.bytes += body_bytes
        return None

    def release(self, body_bytes: int, answered: bool) -> None:
        """A request admitted with `body_bytes` is done: answered, or not (its client left)."""
        if answered:
            self.completed.append(self.busy())
        self.requests -= 1
        self.bytes -= body_bytes
        if not self.requests:
            self.busy_before += self.clock() - self.busy_since
