"""POST /feedback's parts in-process: prediction ids, labels, and the caps counted from shards."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.feedback_log import read_shards
from pipeline.core.params import FeedbackServeParams
from service.feedback import FeedbackStore, correction, parse_label
from service.inputs import InputError
from service.prediction_ids import PredictionIds, Receipt, load_key

pytestmark = pytest.mark.unit
DAY = 86_400


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


def test_a_prediction_id_carries_its_answer_and_only_this_service_accepts_it():
    ids = PredictionIds(b"k" * 32, ttl_seconds=DAY)
    pixels = image(1)
    pid = ids.issue(Receipt(pixels, "7", 4, 0.8125, int(time.time())))
    back = ids.check(pid, time.time())
    assert np.array_equal(back.pixels, pixels)
    assert (back.model_version, back.predicted) == ("7", 4)
    assert back.confidence == pytest.approx(0.8125, abs=1 / 65535)
    tampered = pid[:-6] + ("A" if pid[-6] != "A" else "B") + pid[-5:]
    for bad, status in ((tampered, 422), ("not an id!", 400), (pid[:20], 422)):
        with pytest.raises(InputError) as err:
            ids.check(bad, time.time())
        assert err.value.status == status
    with pytest.raises(InputError, match="not issued by this service"):
        PredictionIds(b"other key", DAY).check(pid, time.time())


def test_a_prediction_id_expires():
    ids = PredictionIds(b"k", ttl_seconds=3600)
    pid = ids.issue(Receipt(image(2), "1", 0, 0.5, int(time.time()) - 7200))
    with pytest.raises(InputError, match="expired") as err:
        ids.check(pid, time.time())
    assert err.value.status == 410 and "serve.feedback.id_ttl_hours" in str(err.value)


def test_workers_sharing_a_records_directory_share_one_key(tmp_path):
    keys = {load_key(tmp_path) for _ in range(3)}
    assert len(keys) == 1 and len(keys.pop()) == 64
    assert (tmp_path / ".prediction-id-key").stat().st_mode & 0o777 == 0o600


def test_labels_are_class_ids_or_names():
    names = list(CLASS_NAMES)
    assert parse_label(4, names) == 4
    assert parse_label("ankle BOOT", names) == 9
    for bad in (10, -1, "Sock", ""):
        with pytest.raises(InputError, match="is not a class") as err:
            parse_label(bad, names)
        assert err.value.status == 422


def limits(**changes: float) -> FeedbackServeParams:
    base = {
        "max_items_per_request": 8,
        "max_per_source_per_day": 5,
        "max_per_day": 9,
        "max_disk_mb": 1.0,
        "id_ttl_hours": 1.0,
    }
    return FeedbackServeParams(**{**base, **changes})


def stored(store: FeedbackStore, source: str | None, n: int) -> None:
    items = [correction(image(i), 1, 2, 0.5, "3", "m:1", None, source) for i in range(n)]
    asyncio.run(store.store(items))


def test_caps_count_what_every_worker_stored_today(tmp_path):
    """Per source, per day, per request, on disk; the counts come from the shards, so a second
    worker (another FeedbackStore on the same directory) sees the first one's."""
    first, second = FeedbackStore(tmp_path, limits()), FeedbackStore(tmp_path, limits())
    now = time.time()
    assert first.refusal("alice", 5, now) is None
    stored(first, "alice", 4)
    refusal = second.refusal("alice", 2, now)
    assert refusal.status == 429 and "max_per_source_per_day" in str(refusal)
    assert 0 < int(refusal.headers["Retry-After"]) <= DAY
    assert second.refusal("bob", 5, now) is None
    stored(second, "bob", 5)
    daily = first.refusal("carol", 1, now + 3)  # after the refresh interval: sees bob's too
    assert daily.status == 429 and "max_per_day" in str(daily)
    assert first.refusal("carol", 1, now + DAY) is None  # a new day (UTC): counted afresh
    assert first.refusal(None, 9, now).status == 413  # over max_items_per_request
    items, bad = read_shards(tmp_path)
    assert len(items) == 9 and bad == []


def test_the_disk_cap_refuses_once_the_shards_fill_it(tmp_path):
    store = FeedbackStore(tmp_path, limits(max_disk_mb=0.002, max_per_day=100))  # 2 KB
    stored(store, "a", 2)  # about 2.6 KB
    refusal = store.refusal("a", 1, time.time())
    assert refusal.status == 503 and "serve.feedback.max_disk_mb" in str(refusal)


def test_without_a_records_directory_nothing_is_stored():
    refusal = FeedbackStore(None, limits()).refusal("a", 1, time.time())
    assert refusal.status == 503 and "records_dir" in str(refusal)
