"""The prediction log: what the service records about each answer, and how images are summarised.

The service (service/monitoring.py) appends one JSON object per prediction, one line each, to
`<records_dir>/predictions-<UTC day>-<host>-<pid>.jsonl`: one file per worker process and day
(and part, once a file reaches serve.monitoring.max_file_mb), so processes never write to the
same file. The files themselves, their names and which may be removed when: record_files.py. A
record:

    {"time": "2026-11-26T09:30:00.123Z", "model_version": "2", "bento_model": "fashion-mnist-cnn:ne3k...",
     "endpoint": "predict", "pixel_mean": 72.95, "pixel_std": 88.1, "bright_fraction": 0.2857,
     "log2_aspect": 0.3121, "inverted": false, "class_id": 9, "class_name": "Ankle boot",
     "confidence": 0.9071}

The drift report (pipeline/drift.py) reads the records back and summarises the training images
with the same function, `image_features`, so both sides describe an image the same way. The
summary is of the 28x28 pixels the model was given (after /classify's preprocessing). Only numpy:
the service imports this module.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from pipeline.core.fashion_mnist import IMAGE_SIZE
from pipeline.core.record_files import FILE_GLOB, file_day

# Per-image summaries of the input, each a number (docs/monitoring.md, "What the service records"):
INPUT_FEATURES = (
    "pixel_mean",  # average brightness, 0-255 (Fashion-MNIST: ~73, light object on black)
    "pixel_std",  # contrast, 0-255
    "bright_fraction",  # share of pixels above BRIGHT: how much of the image the object covers
    "log2_aspect",  # log2(height / width) of the object's brightness: > 0 tall, < 0 wide
)
FIELDS = (
    "time",
    "model_version",
    "bento_model",
    "endpoint",
    *INPUT_FEATURES,
    "inverted",  # /classify inverted a light-background upload; always false for /predict
    "class_id",
    "class_name",
    "confidence",
)
BRIGHT = 127  # a pixel above half of the 0-255 range counts as bright
_COORDS = np.arange(IMAGE_SIZE, dtype=np.float64)
_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps builds one per call


def image_features(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 images (N, 28, 28) -> INPUT_FEATURES, each a float array (N,), vectorised."""
    x = np.asarray(pixels, dtype=np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    mean = x.mean(axis=(1, 2))
    std = x.std(axis=(1, 2))
    bright = (x > BRIGHT).mean(axis=(1, 2))
    # The spread of brightness along rows and columns (intensity-weighted standard deviations):
    # a rotated or differently framed object changes it while leaving the pixel histogram alone.
    rows = x.sum(axis=2, dtype=np.float64)  # (N, 28): brightness per row
    cols = x.sum(axis=1, dtype=np.float64)
    total = rows.sum(axis=1)
    weight = np.where(total > 0, total, 1.0)
    var_y = rows @ _COORDS**2 / weight - (rows @ _COORDS / weight) ** 2
    var_x = cols @ _COORDS**2 / weight - (cols @ _COORDS / weight) ** 2
    tiny = 1e-6  # a blank image or a one-pixel-wide line has no spread: aspect 0, not +-inf
    aspect = 0.5 * np.log2(np.maximum(var_y, tiny) / np.maximum(var_x, tiny))
    aspect = np.where((var_y > tiny) & (var_x > tiny), aspect, 0.0)
    return {
        "pixel_mean": mean.astype(np.float64),
        "pixel_std": std.astype(np.float64),
        "bright_fraction": bright.astype(np.float64),
        "log2_aspect": aspect,
    }


def format_times(seconds: Sequence[float]) -> list[str]:
    """Unix times -> ISO 8601 UTC with milliseconds, e.g. 2026-11-26T09:30:00.123Z.

    Vectorised: one datetime object per record was the recorder thread's largest cost.
    """
    ms = np.floor(np.asarray(seconds, dtype=np.float64) * 1000).astype("datetime64[ms]")
    return [t + "Z" for t in np.datetime_as_string(ms, unit="ms").tolist()]


def format_time(seconds: float) -> str:
    """One Unix time -> ISO 8601 UTC with milliseconds (see format_times)."""
    return format_times([seconds])[0]


def record_lines(
    times: Sequence[float],
    endpoints: Sequence[str],
    inverted: Sequence[bool],
    pixels: np.ndarray,
    class_ids: Sequence[int],
    class_names: Sequence[str],
    confidences: Sequence[float],
    model_version: str,
    bento_model: str,
) -> str:
    """The JSON lines of N predictions (one per row of `pixels`), newline-terminated."""
    features = image_features(pixels)
    columns = {
        "pixel_mean": np.round(features["pixel_mean"], 2).tolist(),
        "pixel_std": np.round(features["pixel_std"], 2).tolist(),
        "bright_fraction": np.round(features["bright_fraction"], 4).tolist(),
        "log2_aspect": np.round(features["log2_aspect"], 4).tolist(),
    }
    stamps = format_times(times)
    lines = []
    for i in range(len(pixels)):
        record = {
            "time": stamps[i],
            "model_version": model_version,
            "bento_model": bento_model,
            "endpoint": endpoints[i],
            **{name: values[i] for name, values in columns.items()},
            "inverted": bool(inverted[i]),
            "class_id": int(class_ids[i]),
            "class_name": class_names[i],
            "confidence": round(float(confidences[i]), 6),
        }
        lines.append(_JSON.encode(record))
    return "\n".join(lines) + "\n" if lines else ""


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time; without a zone it is taken as UTC."""
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _valid(record: object) -> bool:
    if not isinstance(record, dict) or not set(FIELDS) <= record.keys():
        return False
    numbers = (*INPUT_FEATURES, "confidence")
    return all(
        isinstance(record[k], int | float) and math.isfinite(record[k]) for k in numbers
    ) and isinstance(record["class_id"], int)


def read_records(directory: Path, since: dt.datetime, until: dt.datetime) -> tuple[list[dict], int]:
    """The records with since <= time < until from every record file under `directory`, in time
    order, and the number of lines that could not be used (a line cut short by a crash, say)."""
    records, bad = [], 0
    for path in sorted(directory.glob(FILE_GLOB)):
        # A file (every part of it) holds the records written on its UTC day, each written at
        # most a second or so after its time: files of days outside the window are skipped unread.
        day = file_day(path.name)
        if day is not None and not (
            since.astimezone(dt.UTC).date()
            <= day
            <= until.astimezone(dt.UTC).date() + dt.timedelta(days=1)
        ):
            continue
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:  # removed by a recorder's retention since the listing
            continue
        for record, ok in _parse_lines(text.splitlines()):
            if not ok:
                bad += 1
            elif since <= record["_time"] < until:
                records.append(record)
    records.sort(key=lambda r: r["_time"])
    return records, bad


def _parse_lines(lines: Iterable[str]) -> Iterator[tuple[dict, bool]]:
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not _valid(record):
                raise ValueError(line)
            record["_time"] = parse_time(record["time"])
        except ValueError:
            yield {}, False
        else:
            yield record, True
