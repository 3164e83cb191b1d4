"""The one format of measured numbers: `benchmarks/results/<YYYY-MM-DD>-<machine>.json`.

A file holds what one machine measured on one day (UTC): `machine` (CPU model, vector extensions,
CPUs, RAM) and one section per benchmark (`train`, `serve`, `monitoring`, `load`, `overload`, `feedback`,
`deploy`; `commands`: the README's commands from a fresh clone; `reference`: the champion's answers
on validation, which the alerts are set against), each with when
it ran, the 1-minute load average at its start and end (other work competes with it), the command,
the models it measured (SHA-256 of the model file, and what model that is) and its figures. A
benchmark run replaces its own section in that day's file for this machine and leaves the others;
the docs' tables are generated from these files (benchmarks/tables.py).

Past 300 lines: the format, its checks and the table rows that a benchmark prints and
benchmarks/tables.py writes into the docs, kept in one file so that both print the same rows.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pipeline.core.inference import file_sha256
from pipeline.core.params import flatten
from pipeline.shared.machine import describe, load_average

FORMAT = 1
SECTIONS = (
    "train",
    "serve",
    "monitoring",
    "load",
    "overload",
    "feedback",
    "deploy",
    "commands",
    "reference",
)
# Sections that measure a command from a fresh clone (benchmarks/commands.py), not one model.
NO_MODEL = ("commands",)
# Where the benchmarks write, in the checkout the harness is installed from (`pip install -e .`).
RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
FILE_PATTERN = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]-*.json"
MACHINE_FIELDS = ("slug", "cpu", "vector_extensions", "cpus", "ram_gib")
SECTION_FIELDS = ("started", "finished", "command", "load_average_1m", "models", "figures")
MODEL_FIELDS = ("name", "sha256", "file", "what")
ENVIRONMENT = ("BENTOML_HOME", "MLFLOW_TRACKING_URI", "FASHION_MNIST_MODEL", "FASHION_MNIST_PARAMS")


class ResultError(ValueError):
    """A result file that does not follow the format."""


def model_entry(name: str, path: Path, what: str, **extra: object) -> dict:
    """A measured model: its SHA-256 is that of the file at `path` (a model file, e.g. the
    served `model.keras`), `what` says in words what model that is."""
    entry = {"name": name, "sha256": file_sha256(path), "file": Path(path).name, "what": what}
    return entry | extra


def architecture(params: Mapping) -> str:
    """A CNN's shape in a few words, from params.yaml's `model` (nested, or flattened as MLflow
    logs it: `model.conv_blocks.0.filters`...): e.g. `conv 32p-64-64p-128-128p, dense 128, flip
    inside` (p: pooled after the block, s2: stride 2)."""
    flat = {k.removeprefix("model."): v for k, v in flatten(params).items()}
    blocks, dense, i = [], [], 0
    while f"conv_blocks.{i}.filters" in flat:
        pooled = str(flat.get(f"conv_blocks.{i}.pool", "None")) != "None" or (
            f"conv_blocks.{i}.pool.size" in flat
        )
        strided = str(flat.get(f"conv_blocks.{i}.strides", "1")) != "1"
        blocks.append(
            f"{flat[f'conv_blocks.{i}.filters']}{'s2' if strided else ''}{'p' if pooled else ''}"
        )
        i += 1
    i = 0
    while f"dense.{i}.units" in flat:
        dense.append(str(flat[f"dense.{i}.units"]))
        i += 1
    flip = ", flip inside" if str(flat.get("test_time_flip", "False")) == "True" else ""
    return f"conv {'-'.join(blocks)}, dense {'-'.join(dense) or 'none'}{flip}"


def command(argv: list[str] | None = None) -> str:
    """How the benchmark was run, e.g. `python benchmarks/serve_benchmark.py --seconds 5`."""
    argv = list(sys.argv if argv is None else argv)
    script, root = Path(argv[0]).resolve(), RESULTS_DIR.parents[1]
    shown = script.relative_to(root) if script.is_relative_to(root) else Path(argv[0])
    return shlex.join(["python", str(shown), *argv[1:]])


class Measurement:
    """One benchmark run: created when it starts, `section()` when it has its figures."""

    def __init__(self, name: str, argv: list[str] | None = None) -> None:
        if name not in SECTIONS:
            raise ValueError(f"unknown benchmark section {name!r}; one of {SECTIONS}")
        self.name = name
        self.command = command(argv)
        self.started = datetime.now(UTC)
        self.began = time.monotonic()
        self.load_start = load_average()

    def section(self, models: Iterable[dict], figures: dict, **extra: object) -> dict:
        return {
            "started": self.started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - self.began, 1),
            "command": self.command,
            "load_average_1m": {"start": self.load_start, "end": load_average()},
            "models": list(models),
            # where the model and its MLflow run were read from, when not the defaults
            "environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
            **extra,
            "figures": figures,
        }

    def record(
        self, models: Iterable[dict], figures: dict, directory: Path | None = None, **extra: object
    ) -> Path:
        """Merge this run's section into today's file for this machine; the file's path."""
        section = self.section(models, figures, **extra)
        return record(self.name, section, directory, day=self.started.date().isoformat())

    def earlier(self, directory: Path | None = None) -> dict:
        """This section as the file `record` writes holds it now ({} when none): what an earlier
        run of the same benchmark on this machine recorded that day."""
        path = _path(directory, self.started.date().isoformat())
        return read(path).get(self.name, {}) if path.exists() else {}


def _path(directory: Path | None, day: str) -> Path:
    """`<directory>/<day>-<machine>.json`: one file per day and machine."""
    return Path(directory or RESULTS_DIR) / f"{day}-{describe()['slug']}.json"


def record(name: str, section: dict, directory: Path | None = None, day: str | None = None) -> Path:
    """Replace section `name` of `<directory>/<day>-<machine>.json` (created if missing) with
    `section`, under a lock and by an atomic rename, so that concurrent benchmarks keep both."""
    directory = Path(directory or RESULTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    machine = describe()
    day = day or datetime.now(UTC).date().isoformat()
    path = _path(directory, day)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else {}
        sections = {k: old[k] for k in SECTIONS if k in old} | {name: section}
        data = {"format": FORMAT, "date": day, "machine": machine}
        data |= {k: sections[k] for k in SECTIONS if k in sections}
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path


def problems(data: object) -> list[str]:
    """What a parsed result file lacks; empty when it follows the format."""
    if not isinstance(data, dict):
        return ["not a JSON object"]
    found = [f"no {k}" for k in ("format", "date", "machine") if k not in data]
    machine = data.get("machine", {})
    found += [f"machine has no {k}" for k in MACHINE_FIELDS if not machine.get(k)]
    sections = [k for k in SECTIONS if k in data]
    if not sections:
        found.append(f"no benchmark section (one of {', '.join(SECTIONS)})")
    for name in sections:
        section = data[name]
        found += [f"{name} has no {k}" for k in SECTION_FIELDS if k not in section]
        if not section.get("models") and name not in NO_MODEL:
            found.append(f"{name} names no model")
        for i, model in enumerate(section.get("models", [])):
            found += [f"{name}.models[{i}] has no {k}" for k in MODEL_FIELDS if not model.get(k)]
            if len(model.get("sha256", "")) != 64:
                found.append(f"{name}.models[{i}].sha256 is not a SHA-256")
    return found


def read(path: Path) -> dict:
    """A result file, checked; ResultError naming the file and what it lacks."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ResultError(f"{path}: not JSON: {err}") from None
    if found := problems(data):
        raise ResultError(f"{path}: " + "; ".join(found))
    return data


def result_files(directory: Path | None = None) -> list[Path]:
    """Every result file, oldest day first."""
    return sorted(Path(directory or RESULTS_DIR).glob(FILE_PATTERN))


def server_rows(servers: Mapping) -> list[str]:
    """The serving benchmark's Markdown table (header and one row per server, endpoint and
    concurrency), with each single-image point's req/s as a multiple of the no-op server's."""
    noop = {r["concurrency"]: r for r in servers.get("no-op", {}).get("/predict", [])}
    lines = [
        "| server | endpoint | conc | req/s | images/s | p50 ms | p99 ms | errors | x no-op req/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server, endpoints in servers.items():
        for endpoint, rows in endpoints.items():
            for r in rows:
                single = r["images_per_request"] == 1 and r["concurrency"] in noop
                ratio = f"{r['rps'] / noop[r['concurrency']]['rps']:.2f}" if single else "-"
                lines.append(
                    f"| {server} | {endpoint} | {r['concurrency']} | {r['rps']:.0f} "
                    f"| {r['images_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                    f"| {r['errors']} | {ratio} |"
                )
    return lines


def runtime_rows(ceilings: Mapping, batches: Sequence[int]) -> list[str]:
    """The serving benchmark's in-process table: each runtime's images/s (ms per call) at each
    batch size and with batch sizes mixed, and how it agrees with TensorFlow."""
    keys = (*(f"batch_{b}" for b in batches), "mixed")
    lines = [
        "| runtime (in-process) | "
        + " | ".join(f"batch {b} images/s (ms/call)" for b in batches)
        + " | batches of 1-4 in turn | class mismatches vs TF | max prob diff |",
        "|---|" + "---:|" * (len(keys) + 2),
    ]
    for name, row in ceilings.items():
        cells = [f"{row[k]['images_per_s']:.0f} ({row[k]['ms_per_call']:.2f})" for k in keys]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {row['class_mismatches_vs_tensorflow']} "
            f"| {row['max_probability_diff_vs_tensorflow']:.1e} |"
        )
    return lines


def overload_rows(runs: Mapping) -> list[str]:
    """The overload benchmark's Markdown table: per service measured, each open-loop stream's
    offered rate, goodput (answers 200 within the SLO per second) as a multiple of capacity,
    latency of the answers 200, what else came back, and the lone request after the stream."""
    lines = [
        "| service | capacity req/s | offered | goodput req/s | x capacity | p50 ms | p99 ms "
        "| 503 (shed) | other | lone request after |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, run in runs.items():
        for s in run["streams"]:
            answers = {k.removeprefix("good -> "): v for k, v in s["status_counts"].items()}
            other = ", ".join(f"{k}: {v}" for k, v in answers.items() if k not in ("200", "503"))
            lines.append(
                f"| {label} | {run['capacity_per_s']:.0f} | {s['multiple']:g}x = "
                f"{s['requests_per_s']:.0f}/s | {s['goodput_per_s']:.0f} "
                f"| {s['goodput_of_capacity']:.2f} | {ms(s['p50_ms'])} | {ms(s['p99_ms'])} "
                f"| {s['shed_503']} | {other or '-'} "
                f"| {s['lone_status']} in {s['lone_ms']:.0f} ms |"
            )
    return lines


def ms(value: float | None) -> str:
    """A latency in a table: to 0.1 ms, `-` when there was none."""
    return "-" if value is None else f"{value:.1f}"


def upload_memory_rows(runs: Mapping) -> list[str]:
    """The overload benchmark's memory table: per service measured, the serving processes' peak
    RSS while the worst uploads were in flight, and how each kind of upload was answered."""
    lines = [
        "| service | RSS before MB | RSS peak MB | answers (both rounds) |",
        "|---|---:|---:|---|",
    ]
    for label, run in runs.items():
        memory = run["memory"]
        answers = "; ".join(
            f"{name}: {', '.join(map(str, statuses))}"
            for name, statuses in memory["answers"].items()
        )
        lines.append(
            f"| {label} | {memory['rss_before_mb']:,.0f} | {memory['rss_peak_mb']:,.0f} | {answers} |"
        )
    return lines


def gate_cell(gate: Mapping) -> str:
    """`promoted: 0.9513 vs 0.9508; 0.680 vs 0.144 (194 images)`: what the gate compared."""

    def pair(part: Mapping | None, digits: int) -> str:
        if not part or part.get("candidate") is None or part.get("champion") is None:
            return "-"
        return f"{part['candidate']:.{digits}f} vs {part['champion']:.{digits}f}"

    scores = gate.get("scores") or {}
    fb = scores.get("feedback")
    slice_ = f"{pair(fb, 3)} ({fb['samples']} images)" if fb and fb.get("samples") else "-"
    return f"{gate['decision']}: {pair(scores.get('validation'), 4)}; {slice_}"


def feedback_rows(runs: Sequence[Mapping]) -> list[str]:
    """The feedback-loop benchmark's Markdown table: per number of corrections and way of
    retraining, the accuracy on the held-out shifted stream and on the original test half before
    and after, what the gate decided, and what the retraining cost."""
    lines = [
        "| corrections | retrain | shifted stream before -> after | original test before -> after "
        "| gate: validation, feedback slice (candidate vs champion) | dvc repro s |",
        "|---:|---|---|---|---|---:|",
    ]
    for r in runs:
        before, after = r["before"], r["after"]
        gain = 100 * (after["shifted_accuracy"] - before["shifted_accuracy"])
        drop = 100 * (after["original_accuracy"] - before["original_accuracy"])
        lines.append(
            f"| {r['corrections']:,} | {'fine-tune' if r['init'] == 'champion' else 'scratch'} "
            f"| {before['shifted_accuracy']:.4f} -> {after['shifted_accuracy']:.4f} ({gain:+.1f} pt) "
            f"| {before['original_accuracy']:.4f} -> {after['original_accuracy']:.4f} "
            f"({drop:+.2f} pt) | {gate_cell(r['gate'])} | {r['repro_seconds']:,.0f} |"
        )
    return lines
