"""IDX decoding with full validation, prepared-split round trip."""

from __future__ import annotations

import numpy as np
import pytest
from idx_files import idx_bytes, tiny_dataset

from pipeline.shared.dataset import (
    DataError,
    Split,
    content_hash,
    decode_idx,
    load_raw_split,
    load_split,
    save_split,
)

pytestmark = pytest.mark.unit


def test_decode_images_and_labels():
    images = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28) % 256
    assert np.array_equal(decode_idx(idx_bytes(images)), images)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    assert np.array_equal(decode_idx(idx_bytes(labels)), labels)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x0d\x03" + b"\x00" * 12, "bad magic number 0x00000d03"),
        (b"PK\x03\x04" + b"\x00" * 12, "bad magic number 0x504b0304"),
        (b"\x00\x00\x08\x02" + b"\x00" * 12, "bad magic number 0x00000802"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated header"),
    ],
)
def test_corrupt_headers_are_named(data, problem):
    with pytest.raises(DataError, match=r"labels\.gz") as err:
        decode_idx(data, "labels.gz")
    assert problem in str(err.value)


def test_truncated_and_overlong_files():
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(
        DataError, match=r"imgs: truncated: dimensions \(3, 28, 28\) need 2368 bytes, file has 2367"
    ):
        decode_idx(good[:-1], "imgs")
    with pytest.raises(DataError, match="trailing bytes"):
        decode_idx(good + b"\x00", "imgs")


def _write(tmp_path, files):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)


def test_load_raw_split_checks_counts_shape_and_labels(tmp_path):
    files = tiny_dataset()
    _write(tmp_path, files)
    split = load_raw_split(tmp_path, "train")
    assert split.x.shape == (60, 28, 28) and split.y.dtype == np.int64
    assert set(split.y.tolist()) == set(range(10))

    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(59, np.uint8)))
    with pytest.raises(DataError, match="60 images but 59 labels"):
        load_raw_split(tmp_path, "train")

    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(60, 10, np.uint8)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: label 10 out of range"):
        load_raw_split(tmp_path, "train")

    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((20, 32, 32), np.uint8)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: images have shape \(32, 32\)"):
        load_raw_split(tmp_path, "test")


def test_split_round_trip_and_content_hash(tmp_path):
    rng = np.random.default_rng(1)
    split = Split(rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.arange(5))
    save_split(split, tmp_path / "s.npz")
    back = load_split(tmp_path / "s.npz")
    assert np.array_equal(back.x, split.x) and np.array_equal(back.y, split.y)
    assert content_hash(back) == content_hash(split)
    changed = Split(split.x.copy(), split.y)
    changed.x[0, 0, 0] ^= 1
    assert content_hash(changed) != content_hash(split)
    assert not list(tmp_path.glob("*.tmp")), "no temp files left behind"
