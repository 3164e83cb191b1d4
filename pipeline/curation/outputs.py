"""What the `feedback` stage writes for people, besides the dataset: items.csv (every correction's
outcome and why), pending.csv and the contact sheet's captions (what waits for review), and the
summary it prints."""

from __future__ import annotations

import csv
import io

from pipeline.core import paths
from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.curation.rules import Curated, Outcome
from pipeline.curation.sheet import MAX_TILES

ITEM_COLUMNS = (
    "id",
    "time",
    "source",
    "predicted",
    "label",
    "final_label",
    "pixels_sha256",
    "outcome",
    "reason",
    "shard",
)
PENDING_COLUMNS = (
    "status",
    "tile",
    "id",
    "time",
    "source",
    "predicted",
    "predicted_class",
    "label",
    "label_class",
    "pixels_sha256",
    "reason",
)


def _time(outcome: Outcome) -> str:
    return outcome.item.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _csv(columns: tuple[str, ...], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def item_rows(curated: Curated, shards: list[str], bad: list[tuple[str, str]]) -> list[dict]:
    """items.csv: one row per correction (its outcome and why), then one per unreadable line."""
    rows = [
        {
            "id": o.item.id,
            "time": _time(o),
            "source": o.item.source or "",
            "predicted": o.item.predicted,
            "label": o.item.label,
            "final_label": o.label,
            "pixels_sha256": o.item.pixels_sha256,
            "outcome": o.outcome,
            "reason": o.reason,
            "shard": shard,
        }
        for o, shard in zip(curated.outcomes, shards, strict=True)
    ]
    for where, why in bad:
        rows.append({"outcome": "unreadable", "reason": why, "shard": where})
    return rows


def waiting(curated: Curated) -> list[Outcome]:
    """The corrections that wait for a person (pending and conflicts), oldest first."""
    held = [o for o in curated.outcomes if o.outcome in ("pending", "conflict")]
    return sorted(held, key=lambda o: (o.item.time, o.item.pixels_sha256, o.item.id))


def pending_rows(held: list[Outcome]) -> list[dict]:
    """pending.csv: what waits for review; `tile` is the image's number on pending.png."""
    return [
        {
            "status": o.outcome,
            "tile": k if k < MAX_TILES else "",
            "id": o.item.id,
            "time": _time(o),
            "source": o.item.source or "",
            "predicted": o.item.predicted,
            "predicted_class": CLASS_NAMES[o.item.predicted],
            "label": o.label,
            "label_class": CLASS_NAMES[o.label],
            "pixels_sha256": o.item.pixels_sha256,
            "reason": o.reason,
        }
        for k, o in enumerate(held)
    ]


def sheet_title(held: list[Outcome]) -> str:
    if not held:
        return "Nothing waits for review."
    shown = f"the first {MAX_TILES} of {len(held)}" if len(held) > MAX_TILES else f"all {len(held)}"
    return (
        f"Waiting for review: {shown} ({paths.PENDING}). Under each image: its tile "
        "number and the label sent ((c): sent with other labels too); the model's answer."
    )


def describe(report: dict) -> str:
    """The report in a few lines, for a person."""
    outcomes = ", ".join(f"{name} {n}" for name, n in report["outcomes"].items() if n)
    lines = [
        f"feedback: {report['corrections']} correction(s) of {report['images']} image(s) in "
        f"{report['shards']} shard(s) -> {report['accepted_images']} accepted image(s) in "
        f"{paths.CORRECTIONS}",
        f"  outcomes: {outcomes or 'none'}",
    ]
    accepted = {c: n for c, n in report["accepted_by_class"].items() if n}
    if accepted:
        lines.append("  accepted by class: " + ", ".join(f"{c} {n}" for c, n in accepted.items()))
    if in_test := report["outcomes"]["in_test_split"]:
        # The page's samples are test images: a newcomer's first correction lands here.
        lines.append(
            f"  in_test_split: {in_test} correction(s) of Fashion-MNIST "
            "test images (the page's samples are some), never trained on so that the test accuracy "
            "stays a score on unseen images; correct a drawing or an image of your own to train on it"
        )
    if report["waiting_for_review"]:
        lines.append(
            f"  {report['waiting_for_review']} wait for review: {paths.PENDING} and "
            "pending.png; decide with `python -m pipeline.feedback review --accept ID...` "
            "(or --reject, --accept-all), then `make feedback`"
        )
    if report["review"]["unmatched_rows"]:
        lines.append(
            f"  review.csv rows matching no correction: {report['review']['unmatched_rows']}"
        )
    return "\n".join(lines)


def items_csv(curated: Curated, shards: list[str], bad: list[tuple[str, str]]) -> str:
    return _csv(ITEM_COLUMNS, item_rows(curated, shards, bad))


def pending_csv(held: list[Outcome]) -> str:
    return _csv(PENDING_COLUMNS, pending_rows(held))


def captions(held: list[Outcome]) -> list[tuple[str, str]]:
    """The contact sheet's two lines per tile: its number and the label sent; the model's answer."""
    return [
        (
            f"#{k} {CLASS_NAMES[o.label]}{' (c)' if o.outcome == 'conflict' else ''}",
            f"model: {CLASS_NAMES[o.item.predicted]}",
        )
        for k, o in enumerate(held[:MAX_TILES])
    ]
