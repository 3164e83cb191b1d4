"""The curation rules: which corrections become training data, and why each one did or did not.

An image is its pixels_sha256. Every correction gets one outcome, with a reason:
- `in_test_split`: the image is identical to an original test image; never taken, whatever the
  review says (training on it would make the test accuracy a measure of memory).
- `rejected`: review.csv rejects the correction, or the image.
- `conflict`: the image was sent with different labels and no review row settles which is right;
  held back until one does (accept the image with a label, or reject the wrong corrections).
- `pending`: feedback.review is `required` and no accept row covers it yet.
- `accepted`: the first (earliest) correction of an accepted image; `duplicate`: any further one
  with the same image and label, merged into it.
- `capped_source` / `capped_class`: an accepted image left out because its source or class is
  over its share (feedback.max_share_per_source / max_share_per_class, never below cap_floor):
  the latest images of that source or class go first, so what was accepted stays accepted.
Unreadable shard lines are counted by the stage (pipeline/feedback.py) as `unreadable`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.feedback_log import Correction
from pipeline.core.params import FeedbackParams
from pipeline.curation.review import Decision

OUTCOMES = (
    "accepted",
    "duplicate",
    "pending",
    "conflict",
    "rejected",
    "in_test_split",
    "capped_source",
    "capped_class",
    "unreadable",
)
NO_SOURCE = "(none)"  # a correction sent without a source


@dataclass(frozen=True)
class Outcome:
    """What curation did with one correction, and why; `label` after review."""

    item: Correction
    outcome: str
    reason: str
    label: int


@dataclass(frozen=True)
class Image:
    """An accepted image: its pixels, label, and its earliest correction's time and source."""

    sha256: str
    pixels: np.ndarray
    label: int
    source: str | None  # as sent (None: no source)
    time: dt.datetime
    ids: tuple[str, ...]  # its corrections, the accepted one first


@dataclass(frozen=True)
class Curated:
    images: list[Image]  # accepted and within the caps, oldest first
    outcomes: list[Outcome]  # one per correction, in the order they were read
    unmatched: list[str]  # review.csv ids that match no correction


def class_text(label: int) -> str:
    return f"{label} ({CLASS_NAMES[label]})"


def source_of(source: object) -> str:
    """A correction's source as counted and capped: its text, or NO_SOURCE when none was sent."""
    return str(source) if source not in (None, "") else NO_SOURCE


def _judge_image(
    sha: str,
    items: Sequence[Correction],
    review: Mapping[str, Decision],
    test_hashes: frozenset[str] | set[str],
    mode: str,
) -> tuple[list[Outcome], Image | None]:
    """The outcomes of one image's corrections, and the image if it is accepted (caps aside)."""
    if sha in test_hashes:
        why = "identical to an original test image: never trained on"
        return [Outcome(i, "in_test_split", why, i.label) for i in items], None
    image_row = review.get(sha)
    if image_row is not None and image_row.decision == "reject":
        why = f"the image is rejected in review.csv{_note(image_row)}"
        return [Outcome(i, "rejected", why, i.label) for i in items], None
    outcomes: dict[int, Outcome] = {}
    live: list[tuple[int, Correction, int]] = []  # (position, item, label after review)
    for n, item in enumerate(items):
        row = review.get(item.id)
        if row is not None and row.decision == "reject":
            outcomes[n] = Outcome(
                item, "rejected", f"rejected in review.csv{_note(row)}", item.label
            )
        else:
            live.append((n, item, row.label if row and row.label is not None else item.label))
    accepted_by_row = image_row is not None or any(
        (row := review.get(item.id)) is not None and row.decision == "accept" for _, item, _ in live
    )
    if image_row is not None and image_row.label is not None:
        # The reviewer said which class the image is: that settles every correction of it.
        live = [(n, item, image_row.label) for n, item, _ in live]
    image = None
    labels = Counter(said for _, _, said in live)
    if len(labels) > 1:
        sent = ", ".join(f"{class_text(c)} x{k}" for c, k in sorted(labels.items()))
        why = f"the same image was sent with different labels ({sent}): review it"
        for n, item, said in live:
            outcomes[n] = Outcome(item, "conflict", why, said)
    elif live and not accepted_by_row and mode == "required":
        for n, item, said in live:
            outcomes[n] = Outcome(
                item, "pending", "waits for review (feedback.review: required)", said
            )
    elif live:
        first = min(live, key=lambda t: (t[1].time, t[0]))
        label = first[2]
        how = "accepted in review.csv" if accepted_by_row else "accepted (feedback.review: auto)"
        if label != first[1].label:
            how += f" as {class_text(label)} (sent as {class_text(first[1].label)})"
        for n, item, said in live:
            if n == first[0]:
                outcomes[n] = Outcome(item, "accepted", how, said)
            else:
                why = f"same image and label as {first[1].id}, merged into it"
                outcomes[n] = Outcome(item, "duplicate", why, said)
        others = tuple(item.id for n, item, _ in live if n != first[0])
        image = Image(
            sha, first[1].pixels, label, first[1].source, first[1].time, (first[1].id, *others)
        )
    return [outcomes[n] for n in range(len(items))], image


def _note(row: Decision) -> str:
    return f" ({row.note})" if row.note else ""


def apply_caps(
    images: Sequence[Image], params: FeedbackParams
) -> tuple[list[Image], dict[str, tuple[str, str]]]:
    """The images within the per-source and per-class caps, and {sha256: (outcome, reason)} of
    those left out.

    A cap is a share of the accepted set that remains, so cutting one source can push another
    over: the cuts repeat until every source and class is within max(cap_floor, share x total).
    The latest images of a group go first (images come oldest first), so that new corrections
    never displace ones already accepted.
    """
    kept = sorted(images, key=lambda im: (im.time, im.sha256))
    left_out: dict[str, tuple[str, str]] = {}
    caps: list[tuple[str, Callable[[Image], str], float]] = [
        ("source", lambda im: source_of(im.source), params.max_share_per_source),
        ("class", lambda im: class_text(im.label), params.max_share_per_class),
    ]
    changed = True
    while changed:
        changed = False
        for kind, group_of, share in caps:
            allowed = max(params.cap_floor, math.floor(share * len(kept)))
            counts = Counter(group_of(im) for im in kept)
            over = {g for g, c in counts.items() if c > allowed}
            if not over:
                continue
            seen: Counter[str] = Counter()
            survivors = []
            for im in kept:
                group = group_of(im)
                seen[group] += 1
                if group in over and seen[group] > allowed:
                    left_out[im.sha256] = (
                        f"capped_{kind}",
                        f"{kind} {group} has {counts[group]} of {len(kept)} accepted images; at "
                        f"most {allowed} are kept (max_share_per_{kind} {share}, cap_floor "
                        f"{params.cap_floor}), the earliest",
                    )
                else:
                    survivors.append(im)
            kept, changed = survivors, True
    return kept, left_out


def curate(
    items: Sequence[Correction],
    test_hashes: frozenset[str] | set[str],
    review: Mapping[str, Decision],
    params: FeedbackParams,
) -> Curated:
    """Apply every rule to `items` (in reading order); pure, deterministic for the same input."""
    by_image: dict[str, list[int]] = {}
    for n, item in enumerate(items):
        by_image.setdefault(item.pixels_sha256, []).append(n)
    outcomes: list[Outcome | None] = [None] * len(items)
    accepted: list[Image] = []
    for sha, positions in by_image.items():
        judged, image = _judge_image(
            sha, [items[n] for n in positions], review, test_hashes, params.review
        )
        for n, outcome in zip(positions, judged, strict=True):
            outcomes[n] = outcome
        if image is not None:
            accepted.append(image)
    kept, left_out = apply_caps(accepted, params)
    final: list[Outcome] = []
    for outcome in outcomes:
        assert outcome is not None
        capped = left_out.get(outcome.item.pixels_sha256)
        if capped and outcome.outcome in ("accepted", "duplicate"):
            outcome = Outcome(outcome.item, capped[0], capped[1], outcome.label)
        final.append(outcome)
    known = {item.id for item in items} | set(by_image)
    return Curated(kept, final, sorted(key for key in review if key not in known))


def summary(curated: Curated, unreadable: int, shards: int, params: FeedbackParams) -> dict:
    """The stage's metrics (reports/feedback/report.json): counts by outcome, class and source."""
    counts = Counter(o.outcome for o in curated.outcomes)
    counts["unreadable"] = unreadable
    by_class = Counter(im.label for im in curated.images)
    return {
        "shards": shards,
        "corrections": len(curated.outcomes),
        "images": len({o.item.pixels_sha256 for o in curated.outcomes}),
        "accepted_images": len(curated.images),
        "outcomes": {name: counts.get(name, 0) for name in OUTCOMES},
        "accepted_by_class": {name: by_class.get(i, 0) for i, name in enumerate(CLASS_NAMES)},
        "accepted_by_source": dict(
            sorted(Counter(source_of(im.source) for im in curated.images).items())
        ),
        "waiting_for_review": counts.get("pending", 0) + counts.get("conflict", 0),
        "review": {"mode": params.review, "unmatched_rows": len(curated.unmatched)},
    }
