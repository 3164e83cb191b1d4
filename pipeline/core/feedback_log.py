"""The feedback log: corrections people and programs send to POST /feedback, as immutable shards.

The service (service/feedback.py) writes every accepted batch of corrections as one new file,
`<records_dir>/feedback/feedback-<UTC time>-<host>-<pid>-<seq>.jsonl`, written to a temporary name
and renamed, so a shard is complete or absent and never changes afterwards (DVC stores each file
once; one growing file would be stored again at every version). One JSON object per line:

    {"id": "3f2b...", "time": "2026-12-03T09:30:00.123Z", "model_version": "2",
     "bento_model": "fashion-mnist-cnn:ne3k...", "prediction_id": "AbC..." | null,
     "predicted": 6, "confidence": 0.5312, "label": 0, "source": "page" | null,
     "pixels_sha256": "9c1e...", "pixels": "<base64 of the 784 bytes, row by row>"}

`predicted`/`confidence` are the served model's answer for these pixels, `label` the class the
sender says is right. This is the one place the service keeps an input: the 28x28 uint8 pixels
the model saw (docs/monitoring.md says so). The curation stage (pipeline/feedback.py) reads the
shards back with `read_shards`. Only numpy and the standard library: the service imports this.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.fashion_mnist import IMAGE_SIZE, NUM_CLASSES

SUBDIR = "feedback"  # under the records directory
SHARD_GLOB = "feedback-*.jsonl"
FIELDS = (
    "id",
    "time",
    "model_version",
    "bento_model",
    "prediction_id",
    "predicted",
    "confidence",
    "label",
    "source",
    "pixels_sha256",
    "pixels",
)
_PIXEL_BYTES = IMAGE_SIZE * IMAGE_SIZE
_JSON = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True)
class Correction:
    """One stored correction: what the model answered for `pixels` and what the sender says."""

    id: str
    time: dt.datetime
    model_version: str
    bento_model: str
    prediction_id: str | None
    predicted: int
    confidence: float
    label: int
    source: str | None
    pixels_sha256: str
    pixels: np.ndarray  # uint8 (28, 28)


def pixels_sha256(pixels: np.ndarray) -> str:
    """The SHA-256 of a 28x28 image's bytes (uint8, row by row): the identity of an image in
    curation (duplicates, the test-split check, the feedback slice's split)."""
    a = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)
    return hashlib.sha256(a.tobytes()).hexdigest()


def shard_name(time: dt.datetime, host: str, pid: int, seq: int) -> str:
    """A shard's file name: its writing time (UTC, microseconds), host, process and a counter."""
    stamp = time.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%f")
    return f"feedback-{stamp}Z-{host}-{pid}-{seq}.jsonl"


def item_line(item: Correction) -> str:
    """One correction as its JSON line (no newline)."""
    return _JSON.encode(
        {
            "id": item.id,
            "time": item.time.astimezone(dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "model_version": item.model_version,
            "bento_model": item.bento_model,
            "prediction_id": item.prediction_id,
            "predicted": int(item.predicted),
            "confidence": round(float(item.confidence), 6),
            "label": int(item.label),
            "source": item.source,
            "pixels_sha256": item.pixels_sha256,
            "pixels": base64.b64encode(
                np.ascontiguousarray(item.pixels, dtype=np.uint8).tobytes()
            ).decode("ascii"),
        }
    )


def write_shard(directory: Path, name: str, items: Sequence[Correction]) -> Path:
    """Write `items` as the new shard `directory/name`: to a temporary file first, then renamed,
    so readers never see half a shard. Refuses to replace an existing shard."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    tmp = directory / f".{name}.tmp"
    text = "".join(item_line(item) + "\n" for item in items)
    with open(tmp, "x", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        tmp.unlink()
        raise FileExistsError(final)
    os.replace(tmp, final)
    return final


def parse_line(line: str) -> Correction:
    """A shard line -> Correction; ValueError naming what is wrong."""
    record = json.loads(line)
    if not isinstance(record, dict) or not set(FIELDS) <= record.keys():
        raise ValueError("not a feedback record (missing fields)")
    try:
        raw = base64.b64decode(record["pixels"], validate=True)
    except (binascii.Error, TypeError) as err:
        raise ValueError(f"pixels are not base64: {err}") from None
    if len(raw) != _PIXEL_BYTES:
        raise ValueError(f"pixels are {len(raw)} bytes, expected {_PIXEL_BYTES}")
    pixels = np.frombuffer(raw, np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)
    if pixels_sha256(pixels) != record["pixels_sha256"]:
        raise ValueError("pixels do not match pixels_sha256")
    for key in ("label", "predicted"):
        if not isinstance(record[key], int) or not 0 <= record[key] < NUM_CLASSES:
            raise ValueError(f"{key} {record[key]!r} is not a class id")
    time = dt.datetime.fromisoformat(record["time"])
    return Correction(
        id=str(record["id"]),
        time=time if time.tzinfo else time.replace(tzinfo=dt.UTC),
        model_version=str(record["model_version"]),
        bento_model=str(record["bento_model"]),
        prediction_id=record["prediction_id"],
        predicted=record["predicted"],
        confidence=float(record["confidence"]),
        label=record["label"],
        source=record["source"],
        pixels_sha256=record["pixels_sha256"],
        pixels=pixels,
    )


def read_shards(directory: Path) -> tuple[list[Correction], list[tuple[str, str]]]:
    """Every correction in the shards under `directory` (oldest shard first, then file order),
    and the (shard:line, reason) of each line that could not be used."""
    items: list[Correction] = []
    bad: list[tuple[str, str]] = []
    if not directory.is_dir():
        return items, bad
    for path in sorted(directory.glob(SHARD_GLOB)):
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(parse_line(line))
            except (ValueError, KeyError, TypeError) as err:
                bad.append((f"{path.name}:{n}", str(err)))
    return items, bad


def iter_shard_files(directory: Path) -> Iterator[Path]:
    """The complete shards under `directory`, oldest first (temporary files are skipped)."""
    if directory.is_dir():
        yield from sorted(directory.glob(SHARD_GLOB))
