"""Stage `feedback`: the corrections sent to POST /feedback, curated into a versioned dataset.

`python -m pipeline.feedback curate` (the DVC stage) copies every shard of
`<records_dir>/feedback/` (pipeline/core/feedback_log.py) not yet archived into
data/feedback/shards/ (once; shards never change), reads the archive, applies the rules of
pipeline/curation/rules.py with the decisions of feedback/review.csv, and writes:
- data/feedback/corrections.npz: the accepted images (x, y, sha256, source, time), oldest first;
- reports/feedback/report.json: counts by outcome, class and source (a DVC metric);
- reports/feedback/items.csv: every correction's outcome and the reason;
- reports/feedback/pending.csv and pending.png: what waits for review, and a contact sheet of it.
Its output is a function of the archive, review.csv and params alone, so a teammate who pulls
data/feedback and has no records directory regenerates the same files. The stage always runs
(the records directory is state DVC cannot see) and keeps data/feedback between runs (`persist`).

`python -m pipeline.feedback review --accept ID... | --accept-all | --reject ID...` records
decisions in feedback/review.csv; `python -m pipeline.feedback show` prints the last report.
The records directory: FASHION_MNIST_MONITORING_DIR, else serve.monitoring.records_dir, as for
`make monitor` (pipeline/drift.py), relative to where the stage runs (the repository root).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from pipeline.core import paths
from pipeline.core.fashion_mnist import RAW_FILES
from pipeline.core.feedback_log import SUBDIR, Correction, iter_shard_files, parse_line
from pipeline.core.params import ParamsError, load_params
from pipeline.curation.outputs import (
    captions,
    describe,
    items_csv,
    pending_csv,
    sheet_title,
    waiting,
)
from pipeline.curation.review import Decision, ReviewError, parse_label, read_review, render_review
from pipeline.curation.review import updated as updated_review
from pipeline.curation.rules import class_text, curate, summary
from pipeline.curation.sheet import MAX_TILES, contact_sheet
from pipeline.shared.dataset import (
    DataError,
    corrections_from,
    read_idx,
    save_corrections,
    write_atomically,
)
from pipeline.shared.logs import configure_logging

log = logging.getLogger("pipeline.feedback")

SHARDS = "shards"  # the archive, under the output directory


def records_dir(override: Path | None, configured: str | None) -> Path:
    """Where the service keeps its records: --records, else FASHION_MNIST_MONITORING_DIR, else
    serve.monitoring.records_dir (or `monitoring`), as `make monitor` resolves it. A relative
    path is the workspace's: under `dvc exp run` (the tour) DVC_ROOT names the workspace the
    experiment came from, so its corrections are the ones curated."""
    path = override or Path(
        os.environ.get("FASHION_MNIST_MONITORING_DIR") or configured or "monitoring"
    )
    return path if path.is_absolute() else Path(os.environ.get("DVC_ROOT") or ".") / path


def archive_shards(source: Path, archive: Path) -> tuple[list[str], list[str]]:
    """Copy the shards of `source` that `archive` lacks into it; (copied, differing): a shard whose
    archived copy has other bytes is left as archived (a shard never changes: that is damage)."""
    copied, differing = [], []
    for path in iter_shard_files(source):
        target = archive / path.name
        data = path.read_bytes()
        if target.exists():
            if target.read_bytes() != data:
                differing.append(path.name)
            continue
        write_atomically(target, lambda tmp, data=data: tmp.write_bytes(data))
        copied.append(path.name)
    return copied, differing


def hashes_of_test_images(raw: Path) -> frozenset[str]:
    """The pixels_sha256 of every original test image (all 10,000, whatever prepare subsets)."""
    images = read_idx(raw / RAW_FILES["test"][0])
    return frozenset(
        hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images
    )


def curate_command(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    source = records_dir(args.records, params.serve.monitoring.records_dir) / SUBDIR
    archive = args.out / SHARDS
    copied, differing = archive_shards(source, archive)
    log.info("feedback: %d new shard(s) archived from %s", len(copied), source)
    for name in differing:
        log.warning(
            "feedback: %s in %s differs from its archived copy; kept the archived one",
            name,
            source,
        )
    shard_paths = list(iter_shard_files(archive))
    items, bad = [], []
    shards: list[str] = []
    for path in shard_paths:  # shard by shard, to name each correction's shard in items.csv
        found, unreadable = read_shard(path)
        items += found
        shards += [path.name] * len(found)
        bad += unreadable
    try:
        review = read_review(args.review)
        test_hashes = hashes_of_test_images(args.raw)
    except (ReviewError, DataError) as err:
        sys.exit(f"feedback failed: {err}")
    curated = curate(items, test_hashes, review, params.feedback)
    images = curated.images
    save_corrections(
        corrections_from(
            [im.pixels for im in images],
            [im.label for im in images],
            [im.sha256 for im in images],
            [str(im.source) if im.source is not None else "" for im in images],
            [im.time.isoformat(timespec="milliseconds").replace("+00:00", "Z") for im in images],
        ),
        args.out / paths.CORRECTIONS_FILE,
    )
    report = summary(curated, len(bad), len(shard_paths), params.feedback)
    held = waiting(curated)
    out = args.reports
    text = json.dumps(report, indent=2) + "\n"
    write_atomically(out / "report.json", lambda p: p.write_text(text))
    table = items_csv(curated, shards, bad)
    write_atomically(out / "items.csv", lambda p: p.write_text(table))
    pending = pending_csv(held)
    write_atomically(out / "pending.csv", lambda p: p.write_text(pending))
    tiles = [o.item.pixels for o in held[:MAX_TILES]]
    sheet = contact_sheet(tiles, captions(held), sheet_title(held))
    write_atomically(out / "pending.png", lambda p: sheet.save(p, format="PNG"))
    for key in curated.unmatched:
        log.warning("feedback: review.csv decides %s, which matches no correction", key)
    print(describe(report))


def read_shard(path: Path) -> tuple[list[Correction], list[tuple[str, str]]]:
    """One shard's corrections and its unreadable lines (shard:line, reason), as read_shards
    reads a directory of them; per shard, so that items.csv can name each correction's shard."""
    items, bad = [], []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(parse_line(line))
        except (ValueError, KeyError, TypeError) as err:
            bad.append((f"{path.name}:{n}", str(err)))
    return items, bad


def review_command(args: argparse.Namespace) -> None:
    """Record accept/reject decisions in review.csv (the stage applies them on its next run)."""
    if not (args.accept or args.reject or args.accept_all):
        sys.exit(
            "feedback review: nothing to do; give --accept ID..., --reject ID... or --accept-all"
        )
    if args.label is not None and (not args.accept or args.accept_all):
        sys.exit("feedback review: --label goes with --accept ID... (the class those images are)")
    if both := sorted(set(args.accept or []) & set(args.reject or [])):
        sys.exit(f"feedback review: both accepted and rejected: {', '.join(both)}")
    try:
        label = parse_label(args.label) if args.label is not None else None
        existing = read_review(args.review)
    except (ValueError, ReviewError) as err:
        sys.exit(f"feedback review: {err}")
    accept = list(args.accept or [])
    if args.accept_all:
        try:
            with open(args.pending, newline="") as f:
                accept += [row["id"] for row in csv.DictReader(f) if row["status"] == "pending"]
        except OSError as err:
            sys.exit(
                f"feedback review: cannot read {args.pending} ({err.strerror}); run `make feedback`"
            )
    if args.accept_all and not accept and not args.reject:
        # Accepting all of nothing is done, not an error; the curation summary says why.
        print(
            f"feedback review: nothing is pending in {args.pending}: `make feedback` holds a "
            "correction for review only when it passes the rules (its summary says what became "
            "of each)"
        )
        return
    # Read every archived shard only when there are ids to check against them.
    items = [item for path in iter_shard_files(args.archive) for item in read_shard(path)[0]]
    known = {item.id for item in items} | {item.pixels_sha256 for item in items}
    unknown = sorted({*accept, *(args.reject or [])} - known)
    if unknown:
        sys.exit(
            f"feedback review: not a correction id or pixels_sha256 in {args.archive}: "
            f"{', '.join(unknown)} (run `make feedback` to archive new shards first)"
        )
    new = [Decision(key, "accept", label, args.note) for key in accept]
    new += [Decision(key, "reject", None, args.note) for key in args.reject or []]
    text = render_review(updated_review(existing, new))
    write_atomically(args.review, lambda p: p.write_text(text))
    what = f"{len(accept)} accepted" + (f" as {class_text(label)}" if label is not None else "")
    print(f"{args.review}: {what}, {len(args.reject or [])} rejected; `make feedback` applies them")


def show_command(args: argparse.Namespace) -> None:
    try:
        print(describe(json.loads((args.reports / "report.json").read_text())))
    except FileNotFoundError:
        sys.exit(f"no {args.reports / 'report.json'} yet: run `make feedback` (dvc repro feedback)")


def main() -> None:
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("curate", help="the DVC stage: archive new shards, curate, report")
    run.add_argument("--raw", type=Path, default=paths.RAW, help="fetch's IDX files (test images)")
    run.add_argument("--review", type=Path, default=paths.REVIEW, help="the review decisions")
    run.add_argument("--out", type=Path, default=paths.FEEDBACK, help="archive, corrections.npz")
    run.add_argument("--reports", type=Path, default=paths.FEEDBACK_REPORTS)
    run.add_argument(
        "--records", type=Path, help="the records directory (default: as make monitor)"
    )
    review = commands.add_parser("review", help="accept or reject corrections in review.csv")
    review.add_argument("--accept", nargs="+", metavar="ID", help="correction ids or pixels_sha256")
    review.add_argument("--reject", nargs="+", metavar="ID", help="correction ids or pixels_sha256")
    review.add_argument(
        "--accept-all", action="store_true", help="every pending one in pending.csv"
    )
    review.add_argument("--label", help="with --accept: the right class (0-9 or its name)")
    review.add_argument("--note", default="", help="why (kept in review.csv)")
    review.add_argument("--review", type=Path, default=paths.REVIEW)
    review.add_argument("--pending", type=Path, default=paths.PENDING)
    review.add_argument("--archive", type=Path, default=paths.FEEDBACK / SHARDS)
    show = commands.add_parser("show", help="print the last report")
    show.add_argument("--reports", type=Path, default=paths.FEEDBACK_REPORTS)
    args = parser.parse_args()
    try:
        {"curate": curate_command, "review": review_command, "show": show_command}[args.command](
            args
        )
    except ParamsError as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()
