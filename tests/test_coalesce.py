"""The API process's request coalescer: every request gets its own rows, calls stay bounded."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.coalesce import Coalescer, Expired

pytestmark = pytest.mark.unit


class FakeModel:
    """A batch call that takes `delay` seconds and records each batch; row i -> its sum."""

    def __init__(self, delay: float = 0.005, fail_on: int | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[int] = []
        self.in_flight = self.most_in_flight = 0

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        self.batches.append(len(images))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail_on is not None and self.fail_on in images[:, 0, 0]:
                raise RuntimeError("model service failed")
            return images.reshape(len(images), -1).sum(axis=1, dtype=np.int64)
        finally:
            self.in_flight -= 1


def requests_of(sizes: list[int]) -> list[np.ndarray]:
    """Request k holds `sizes[k]` 2x2 images filled with k (so answers can be traced back)."""
    return [np.full((n, 2, 2), k, np.int64) for k, n in enumerate(sizes)]


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=40),
    max_in_flight=st.integers(1, 3),
)
def test_each_request_gets_its_own_rows_in_order(sizes, max_in_flight):
    model = FakeModel(delay=0.001)
    requests = requests_of(sizes)

    async def run() -> list[np.ndarray]:
        coalesce = Coalescer(model, max_batch=16, max_in_flight=max_in_flight)
        return await asyncio.gather(*(coalesce(r) for r in requests))

    answers = asyncio.run(run())
    for k, (request, answer) in enumerate(zip(requests, answers, strict=True)):
        assert answer.tolist() == [4 * k] * len(request)
    assert sum(model.batches) == sum(sizes)
    assert max(model.batches) <= 16
    assert model.most_in_flight <= max_in_flight


def test_concurrent_requests_share_calls_and_a_lone_one_goes_at_once():
    model = FakeModel(delay=0.01)

    async def run() -> float:
        coalesce = Coalescer(model, max_batch=64, max_in_flight=2)
        await asyncio.gather(*(coalesce(r) for r in requests_of([1] * 32)))
        loop = asyncio.get_running_loop()
        began = loop.time()
        await coalesce(requests_of([1])[0])
        return loop.time() - began

    lone_seconds = asyncio.run(run())
    # 32 requests: the first two go alone, the other 30 wait for a free slot and go together.
    assert model.batches[:2] == [1, 1]
    assert len(model.batches) <= 4
    assert model.batches[-1] == 1  # the lone request
    assert lone_seconds < 0.01 + 0.05  # one call's delay, nothing held back for company


def test_a_failed_call_fails_its_requests_only():
    model = FakeModel(delay=0.005, fail_on=3)

    async def run() -> list[np.ndarray | BaseException]:
        coalesce = Coalescer(model, max_batch=4, max_in_flight=1)
        first = await asyncio.gather(
            *(coalesce(r) for r in requests_of([1] * 8)), return_exceptions=True
        )
        after = await coalesce(requests_of([2])[0])  # the coalescer keeps working
        return [*first, after]

    results = asyncio.run(run())
    failed = [k for k, r in enumerate(results[:8]) if isinstance(r, RuntimeError)]
    # batches: [0], [1, 2, 3, 4] (holds 3: fails), [5, 6, 7]
    assert failed == [1, 2, 3, 4]
    assert results[8].tolist() == [0, 0]


def test_a_cancelled_request_does_not_cancel_the_shared_call():
    model = FakeModel(delay=0.02)

    async def run() -> list[np.ndarray]:
        coalesce = Coalescer(model, max_batch=8, max_in_flight=1)
        tasks = [asyncio.ensure_future(coalesce(r)) for r in requests_of([1, 1, 1])]
        await asyncio.sleep(0.03)  # call 1: request 0; call 2 (in flight now): requests 1 and 2
        tasks[1].cancel()  # its client went away
        return await asyncio.gather(tasks[0], tasks[2])

    first, third = asyncio.run(run())
    assert first.tolist() == [0] and third.tolist() == [8]
    assert model.batches == [1, 2]


def test_a_request_larger_than_a_batch_is_refused():
    async def run() -> None:
        await Coalescer(FakeModel(), max_batch=4)(np.zeros((5, 2, 2)))

    with pytest.raises(ValueError, match="5 images > max_batch=4"):
        asyncio.run(run())


def test_requests_cancelled_while_queued_never_reach_the_model():
    """A request whose caller is cancelled (client gone, BentoML's 504) before its batch is sent
    leaves the queue: the model computes only what someone still waits for."""
    model = FakeModel(delay=0.02)
    abandoned: list[tuple[str, int]] = []

    async def run() -> list[np.ndarray]:
        coalesce = Coalescer(
            model,
            max_batch=8,
            max_in_flight=1,
            on_abandoned=lambda reason, n: abandoned.append((reason, n)),
        )
        tasks = [asyncio.ensure_future(coalesce(r)) for r in requests_of([1, 2, 3])]
        await asyncio.sleep(0)  # request 0 is in the model; 1 and 2 wait for the next call
        tasks[1].cancel()
        return await asyncio.gather(tasks[0], tasks[2])

    first, third = asyncio.run(run())
    assert first.tolist() == [0] and third.tolist() == [8, 8, 8]
    assert model.batches == [1, 3], "the cancelled request's images were computed"
    assert abandoned == [("cancelled", 2)]


def test_a_request_that_waited_past_max_wait_expires_unsent():
    model = FakeModel(delay=0.05)
    abandoned: list[tuple[str, int]] = []

    async def run() -> list[np.ndarray | BaseException]:
        coalesce = Coalescer(
            model,
            max_batch=8,
            max_in_flight=1,
            max_wait=0.01,
            on_abandoned=lambda reason, n: abandoned.append((reason, n)),
        )
        return await asyncio.gather(
            *(coalesce(r) for r in requests_of([1, 1])), return_exceptions=True
        )

    first, second = asyncio.run(run())
    assert first.tolist() == [0]
    assert isinstance(second, Expired)  # it waited 0.05 s behind the first call, past 0.01 s
    assert model.batches == [1]
    assert abandoned == [("expired", 1)]
