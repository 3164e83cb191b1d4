"""Progress of a long step (an epoch's batches, a download, scoring a split) that a person can follow.

In a terminal one line is redrawn in place (done/total, rate, ETA). In a log file (stdout not a
TTY: `dvc repro > log`, CI) carriage returns would pile up thousands of lines, so a plain line is
printed every LOG_EVERY_S seconds instead, and one summary line when the step ends.
No TensorFlow here: `fetch` uses it too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

TTY_EVERY_S = 0.1  # redraw a terminal line at most this often
LOG_EVERY_S = 15.0  # in a log file, one line at most this often


def duration(seconds: float) -> str:
    """'42 s', '3:05', '1:02:03': short enough for a status line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def status(done: float, total: float, elapsed: float, unit: str, scale: float = 1.0) -> str:
    """'30/57 steps (53%), 9.8 steps/s, ETA 3 s': counts are divided by `scale` (1e6 for MB)."""
    fmt = (lambda v: f"{v / scale:.1f}") if scale != 1 else (lambda v: f"{v:.0f}")
    # total 0: unknown (a download without Content-Length)
    text = (
        f"{fmt(done)}/{fmt(total)} {unit} ({100 * done / total:.0f}%)"
        if total
        else f"{fmt(done)} {unit}"
    )
    if done and elapsed > 0:
        rate = done / elapsed
        text += f", {rate / scale:.1f} {unit}/s"
        if total:
            text += f", ETA {duration((total - done) / rate)}"
    return text


class Progress:
    """One task of `total` units: `update(done)` as it goes, `finish(summary)` at the end."""

    def __init__(
        self,
        total: float,
        label: str,
        unit: str = "steps",
        scale: float = 1.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
        every_s: float = LOG_EVERY_S,
    ) -> None:
        self.total, self.label, self.unit, self.scale = total, label, unit, scale
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.every_s = TTY_EVERY_S if self.tty else every_s
        self.started = self._shown = clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def update(self, done: float) -> None:
        now = self.clock()
        last = bool(self.total) and done >= self.total
        if now - self._shown < self.every_s and not (self.tty and last):
            return
        self._shown = now
        line = (
            f"{self.label}: {status(done, self.total, now - self.started, self.unit, self.scale)}"
        )
        # \x1b[K clears what a longer previous line left at the end of the terminal line.
        self._write(f"\r{line}\x1b[K" if self.tty else f"{line}\n")

    def finish(self, summary: str) -> None:
        """Replace the terminal line (or follow the log lines) with one summary line."""
        self._write(f"\r{summary}\x1b[K\n" if self.tty else f"{summary}\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()  # a pipe is block-buffered: a log reader would see nothing for minutes
