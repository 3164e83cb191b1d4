"""feedback/review.csv: the decisions a person takes on corrections, one row each.

    id,decision,label,note
    3f2b9c...,accept,,looks right
    9c1e...(64 hex),accept,Shirt,the sender picked the wrong class
    77aa...,reject,,not a clothing item

`id` is a correction's id (one correction) or an image's pixels_sha256 (every correction of that
image); `decision` is accept or reject; `label` (optional, accept only) the right class, by id
0-9 or name, replacing what the sender said; `note` is free text. One row per id: deciding again
replaces the row. The file is git-tracked and a dependency of the stage, so every decision is
versioned with the data it shaped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.core.fashion_mnist import CLASS_NAMES, NUM_CLASSES

HEADER = ("id", "decision", "label", "note")
DECISIONS = ("accept", "reject")


class ReviewError(ValueError):
    """review.csv is malformed; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class Decision:
    """One row of review.csv."""

    id: str
    decision: Literal["accept", "reject"]
    label: int | None = None  # the corrected class (accept only)
    note: str = ""


def parse_label(text: str) -> int | None:
    """'' -> None; '3' or 'Dress' (any case) -> 3; ValueError for anything else."""
    text = text.strip()
    if not text:
        return None
    if text.isdigit() and int(text) < NUM_CLASSES:
        return int(text)
    by_name = {name.lower(): i for i, name in enumerate(CLASS_NAMES)}
    if text.lower() in by_name:
        return by_name[text.lower()]
    raise ValueError(f"label {text!r} is not a class (0-{NUM_CLASSES - 1} or one of {CLASS_NAMES})")


def parse_review(text: str, source: str = "review.csv") -> dict[str, Decision]:
    """The decisions of a review file's text, by id; ReviewError naming the line."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(h.strip() for h in rows[0]) != HEADER:
        raise ReviewError(f"{source}: the first line must be the header {','.join(HEADER)}")
    decisions: dict[str, Decision] = {}
    for n, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(HEADER):
            raise ReviewError(f"{source}:{n}: {len(row)} fields, expected at most {len(HEADER)}")
        key, decision, label, note = (*(c.strip() for c in row), "", "", "")[:4]
        if not key:
            raise ReviewError(f"{source}:{n}: no id")
        if decision not in DECISIONS:
            raise ReviewError(f"{source}:{n}: decision {decision!r} is not accept or reject")
        try:
            parsed = parse_label(label)
        except ValueError as err:
            raise ReviewError(f"{source}:{n}: {err}") from None
        if parsed is not None and decision == "reject":
            raise ReviewError(f"{source}:{n}: a label only goes with accept")
        if key in decisions:
            raise ReviewError(f"{source}:{n}: {key} is decided twice; keep one row")
        decisions[key] = Decision(key, decision, parsed, note)  # type: ignore[arg-type]
    return decisions


def read_review(path: Path) -> dict[str, Decision]:
    """The decisions in `path` (ReviewError when it is malformed or missing)."""
    try:
        return parse_review(path.read_text(), str(path))
    except OSError as err:
        raise ReviewError(f"{path}: cannot read ({err.strerror})") from None


def render_review(decisions: Iterable[Decision]) -> str:
    """The file's text for `decisions`, in their order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for d in decisions:
        writer.writerow([d.id, d.decision, "" if d.label is None else d.label, d.note])
    return out.getvalue()


def updated(existing: Mapping[str, Decision], new: Iterable[Decision]) -> list[Decision]:
    """`existing` with `new` applied: a new decision replaces the row of its id in place, others
    are appended, so the file's history reads top to bottom in git."""
    rows = dict(existing)
    for d in new:
        rows[d.id] = d
    return list(rows.values())
