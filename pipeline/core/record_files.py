"""The prediction record files on disk: their names and parts, and which of them may be removed.

Each worker process of the service appends its records (pipeline/core/prediction_log.py) to
`<records_dir>/predictions-<UTC day>-<host>-<pid>.jsonl`. Once that file holds
serve.monitoring.max_file_mb the process closes it and goes on in the next part,
`predictions-<day>-<host>-<pid>.<part>.jsonl` (part 1, 2, ...), so that its old parts can be
removed while it lives. Every name starts with `predictions-<day>`: readers skip the files of
days outside their window unread.

What may be removed (`plan_removal`; every recorder thread runs it, service/monitoring.py):
record files older than the retention, then the oldest while the directory's record files exceed
the cap, never a live file. Processes on other pods share the directory and cannot see each
other's open files, so liveness is the modification time: a recorder touches its open file every
TOUCH_SECONDS, and a file modified within LIVE_SECONDS counts as live (a file deleted while open
loses what is written to it and frees nothing until it is closed). Only top-level
`predictions-*.jsonl` regular files are ever candidates: the feedback shards in `feedback/`
(pipeline/core/feedback_log.py) never are. Only the standard library: the service imports this.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

FILE_GLOB = "predictions-*.jsonl"
# A recorder touches its open file this often; a file modified within LIVE_SECONDS is live and is
# never removed. Ten touches apart: a busy disk, a stalled thread or clock skew between pods on a
# shared volume (NFS sets the time on the server) cannot make an open file look abandoned.
TOUCH_SECONDS = 30.0
LIVE_SECONDS = 300.0
_FILE_NAME = re.compile(r"predictions-(\d{4}-\d{2}-\d{2})-.+\.jsonl")


def file_name(day: dt.date, host: str, pid: int, part: int = 0) -> str:
    """The record file of one worker process on one UTC day; parts after the first are numbered."""
    suffix = f".{part}" if part else ""
    return f"predictions-{day.isoformat()}-{host}-{pid}{suffix}.jsonl"


def file_part(name: str, day: dt.date, host: str, pid: int) -> int | None:
    """The part number of `name` if it is a record file of this process and day, else None.

    Unambiguous although host names hold dashes and dots: the name must be exactly this
    process's prefix followed by `.jsonl` or `.<digits>.jsonl`."""
    prefix = re.escape(f"predictions-{day.isoformat()}-{host}-{pid}")
    match = re.fullmatch(prefix + r"(?:\.(\d+))?\.jsonl", name)
    if match is None:
        return None
    return int(match.group(1) or 0)


def file_day(name: str) -> dt.date | None:
    """The UTC day in a record file's name, or None for a name that is not one."""
    match = _FILE_NAME.fullmatch(name)
    try:
        return dt.date.fromisoformat(match.group(1)) if match else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RecordFile:
    """A record file as the directory listed it."""

    name: str
    size: int  # bytes
    mtime: float  # Unix time of the last write (or the writer's last touch)


@dataclass(frozen=True)
class RecordLimits:
    """What the records directory may hold (serve.monitoring.max_disk_mb, retention_days,
    max_file_mb, in bytes and seconds)."""

    max_bytes: int  # the record files together
    retention_seconds: float
    part_bytes: int  # a process's file is closed once it holds this much
    live_seconds: float = LIVE_SECONDS


@dataclass(frozen=True)
class Removal:
    """What `plan_removal` decided: the files to remove, and why, and what is left."""

    expired: list[RecordFile]  # older than the retention
    over_cap: list[RecordFile]  # the oldest, removed to bring the directory under the cap
    kept_bytes: int  # the record files left
    capped: bool  # still over the cap with only live files left: stop recording


def record_files(directory: Path) -> list[RecordFile]:
    """The record files directly in `directory` (regular files named predictions-*.jsonl, not
    symlinks, nothing in subdirectories such as feedback/)."""
    files = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if file_day(entry.name) is None:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # another process removed it meanwhile
                continue
            if stat.S_ISREG(info.st_mode):
                files.append(RecordFile(entry.name, info.st_size, info.st_mtime))
    return files


def plan_removal(
    files: Iterable[RecordFile], now: float, limits: RecordLimits, keep: Collection[str] = ()
) -> Removal:
    """Which record files to remove at time `now`: pure, so every rule is testable on a list.

    A file is live when modified within `limits.live_seconds` (or in the future: another
    machine's clock), or named in `keep` (the caller's own open file); live files are never
    removed. The others go when older than the retention; then, while the files left exceed
    `limits.max_bytes`, the oldest go first (by modification time, then name). Still over the
    cap with only live files left: `capped`, the writers stop until old parts can go."""

    def live(f: RecordFile) -> bool:
        return f.name in keep or now - f.mtime < limits.live_seconds

    expired, left = [], []
    for f in files:
        if not live(f) and now - f.mtime > limits.retention_seconds:
            expired.append(f)
        else:
            left.append(f)
    kept = sum(f.size for f in left)
    over_cap = []
    for f in sorted(left, key=lambda f: (f.mtime, f.name)):
        if kept <= limits.max_bytes:
            break
        if not live(f):
            over_cap.append(f)
            kept -= f.size
    return Removal(expired, over_cap, kept, capped=kept > limits.max_bytes)
