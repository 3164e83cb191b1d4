"""What the README's commands cost from a fresh clone: `make test`, `make tour`, `make repro`.

Clones the repository's committed HEAD into a temporary directory, runs the command there with a
clean environment (no virtualenv, no make variables of a calling make, none of this checkout's
stores), and records its wall time, exit status and commit; for `make test` also the suite's own
time and each tier's (harness/tier_times.py: setup, call and teardown of its tests), and the
pytest summary line.

    python benchmarks/commands.py make test
    python benchmarks/commands.py make tour
    python benchmarks/commands.py --keep /tmp/fresh make repro   # the clone stays, champion and all

Writes the `commands` section of benchmarks/results/<date>-<machine>.json (earlier runs of other
commands that day are kept); docs/costs.md's table comes from it (benchmarks/tables.py). The
clone's setup comes from uv's cache when the packages are there: the time includes `make setup`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

from harness.results import RESULTS_DIR, Measurement

log = logging.getLogger("commands")
ROOT = Path(__file__).resolve().parents[1]
# What a calling shell or make may have set that a newcomer's shell has not.
NOT_INHERITED = (
    "VIRTUAL_ENV",
    "MAKELEVEL",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKEOVERRIDES",
    "BENTOML_HOME",
    "MLFLOW_TRACKING_URI",
    "FASHION_MNIST_MODEL",
    "FASHION_MNIST_PARAMS",
    "FASHION_MNIST_MONITORING_DIR",
    "PYTEST_ADDOPTS",
)
SUMMARY = re.compile(r"^=+ (.*\b(passed|failed|error)\b.*) =+$", re.MULTILINE)


def clean_env(home: Path) -> dict[str, str]:
    """This environment without a virtualenv on PATH or the variables of NOT_INHERITED; BentoML's
    store under `home` (a newcomer's ~/bentoml, not this machine's)."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        env["PATH"] = os.pathsep.join(
            p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(venv)
        )
    env["BENTOML_HOME"] = str(home / "bentoml")
    return env


def measure(words: list[str], source: Path, logs: Path, keep: Path | None = None) -> dict:
    """Run `words` in a fresh clone of `source` (in `keep`/repo, left there, when given; its
    BentoML store in `keep`/bentoml); what it cost."""
    with tempfile.TemporaryDirectory(prefix="fresh-clone-") as tmp:
        root = keep or Path(tmp)
        clone = root / "repo"
        subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
        ).stdout.strip()
        env = clean_env(root)
        tiers = root / "tiers.json"
        if words[:2] == ["make", "test"]:
            env |= {"PYTEST_ADDOPTS": "-p harness.tier_times", "FASHION_TIER_TIMES": str(tiers)}
        logs.mkdir(parents=True, exist_ok=True)
        out = logs / f"{'-'.join(words).replace('/', '_')}.log"
        log.info("$ %s  (in %s, output in %s)", shlex.join(words), clone, out)
        began = time.monotonic()
        with out.open("w") as f:
            proc = subprocess.run(words, cwd=clone, env=env, stdout=f, stderr=subprocess.STDOUT)
        seconds = time.monotonic() - began
        text = out.read_text()
        summary = SUMMARY.findall(text)
        entry = {
            "command": shlex.join(words),
            "commit": commit,
            "seconds": round(seconds, 1),
            "returncode": proc.returncode,
            "fresh_clone": True,
        }
        if summary:
            entry["summary"] = summary[-1][0]
        if tiers.exists():
            entry |= {"suite": json.loads(tiers.read_text())}
        return entry


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="+", help="the command, e.g. make test")
    parser.add_argument("--source", type=Path, default=ROOT, help="the repository to clone")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep", type=Path, help="clone into KEEP/repo and leave it there")
    args = parser.parse_args()
    measurement = Measurement("commands")
    if args.keep and args.keep.exists():
        parser.error(f"--keep {args.keep}: already exists; give a new directory")
    entry = measure(args.words, args.source, args.results / "logs", args.keep)
    earlier = measurement.earlier(args.results).get("figures", {}).get("runs", [])
    runs = [r for r in earlier if r["command"] != entry["command"]]
    runs = sorted([*runs, entry], key=lambda r: r["command"])
    print(json.dumps(entry, indent=2))
    print(f"wrote {measurement.record([], {'runs': runs}, args.results)}")


if __name__ == "__main__":
    main()
