"""Progress lines: redrawn in a terminal, plain and spaced out in a log file (fake clock and stream)."""

from __future__ import annotations

import io

import pytest

from pipeline.shared.progress import Progress, duration, status

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_status_and_duration_formats():
    assert status(30, 60, 3.0, "steps") == "30/60 steps (50%), 10.0 steps/s, ETA 3 s"
    assert status(0, 60, 0.0, "steps") == "0/60 steps (0%)"
    assert status(13e6, 26e6, 2.0, "MB", scale=1e6) == "13.0/26.0 MB (50%), 6.5 MB/s, ETA 2 s"
    assert [duration(s) for s in (0.4, 42, 185, 3723)] == ["0 s", "42 s", "3:05", "1:02:03"]


def test_log_file_gets_a_plain_line_every_interval_and_a_summary():
    clock, out = Clock(), io.StringIO()
    progress = Progress(100, "epoch 2/24", stream=out, clock=clock, tty=False, every_s=15)
    for step in range(1, 101):  # 0.5 s per step: 50 s in all
        clock.now += 0.5
        progress.update(step)
    progress.finish("epoch 2/24 done in 50 s: loss 0.5")
    assert out.getvalue().splitlines() == [
        "epoch 2/24: 30/100 steps (30%), 2.0 steps/s, ETA 35 s",
        "epoch 2/24: 60/100 steps (60%), 2.0 steps/s, ETA 20 s",
        "epoch 2/24: 90/100 steps (90%), 2.0 steps/s, ETA 5 s",
        "epoch 2/24 done in 50 s: loss 0.5",
    ]
    assert "\r" not in out.getvalue()


def test_short_task_in_a_log_file_prints_only_its_summary():
    clock, out = Clock(), io.StringIO()
    progress = Progress(10, "scoring", unit="images", stream=out, clock=clock, tty=False)
    for done in range(1, 11):
        clock.now += 0.1
        progress.update(done)
    progress.finish("scored 10 images in 1 s")
    assert out.getvalue() == "scored 10 images in 1 s\n"


def test_terminal_line_is_redrawn_at_most_every_tenth_of_a_second():
    clock, out = Clock(), io.StringIO()
    progress = Progress(50, "epoch 1/3", stream=out, clock=clock, tty=True)
    for step in range(1, 51):
        clock.now += 0.02
        progress.update(step)
    progress.finish("epoch 1/3 done in 1 s")
    text = out.getvalue()
    redraws = text.split("\r")[1:]
    assert 10 <= len(redraws) <= 12  # 1 s at one redraw per 0.1 s, the last step, the summary
    assert redraws[-2] == "epoch 1/3: 50/50 steps (100%), 50.0 steps/s, ETA 0 s\x1b[K"
    assert redraws[-1] == "epoch 1/3 done in 1 s\x1b[K\n"
    assert text.count("\n") == 1


def test_tty_is_detected_from_the_stream():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert Progress(1, "x", stream=Terminal()).tty
    assert not Progress(1, "x", stream=io.StringIO()).tty
