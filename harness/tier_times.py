"""A pytest plugin that sums the time of each test tier (setup, call and teardown of its tests).

    PYTEST_ADDOPTS="-p harness.tier_times" FASHION_TIER_TIMES=tiers.json pytest

writes {"tiers": {tier: {"tests": n, "seconds": s, "outcomes": {...}}}, "seconds": wall} to the
file FASHION_TIER_TIMES names. A session-scoped fixture's setup counts in the tier of the first
test that uses it, which is where the suite waits for it. benchmarks/commands.py uses it for
`make test`.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

import pytest

TIERS = ("unit", "data", "model", "service", "e2e")
_tier_of: dict[str, str] = {}
_seconds: dict[str, float] = defaultdict(float)
_outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
_began: list[float] = []


def pytest_sessionstart() -> None:
    _began.append(time.monotonic())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marks = [m.name for m in item.iter_markers() if m.name in TIERS]
        _tier_of[item.nodeid] = marks[0] if marks else "none"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = _tier_of.get(report.nodeid, "none")
    _seconds[tier] += report.duration
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes[tier][report.outcome] += 1


def pytest_sessionfinish() -> None:
    path = os.environ.get("FASHION_TIER_TIMES")
    if not path:
        return
    tiers = {
        tier: {
            "tests": sum(1 for t in _tier_of.values() if t == tier),
            "seconds": round(_seconds[tier], 1),
            "outcomes": dict(_outcomes[tier]),
        }
        for tier in (*TIERS, "none")
        if tier in _tier_of.values()
    }
    record = {"tiers": tiers, "seconds": round(time.monotonic() - _began[0], 1)}
    Path(path).write_text(json.dumps(record, indent=2) + "\n")
