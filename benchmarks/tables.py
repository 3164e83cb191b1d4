"""The tables of docs/benchmarks.md, costs.md and monitoring.md, generated from benchmarks/results/.

Each table sits between `<!-- table: NAME -->` and `<!-- /table -->` and is generated from the
newest run of its benchmark (by finish time) in any result file, or from one file:
`<!-- table: serve from 2026-11-30-intel-xeon-processor-2cpu.json -->`. Above each table: the
machine (CPU, vector extensions, CPUs, RAM, load average), the model (short SHA-256 and what it
is), when and by which command it was measured, and the file it comes from.

    python benchmarks/tables.py            # rewrite the tables in place
    python benchmarks/tables.py --check    # exit 1 naming each table that differs from its file

Past 300 lines: one short generator per table of those pages, kept together so that a
table's layout is found in one file.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from harness.results import (
    RESULTS_DIR,
    feedback_rows,
    overload_rows,
    read,
    result_files,
    runtime_rows,
    server_rows,
    upload_memory_rows,
)
from harness.tier_times import TIERS
from pipeline.shared.machine import KEY_EXTENSIONS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
DOCS = (DOC, ROOT / "docs" / "costs.md", ROOT / "docs" / "monitoring.md")
MARKER = re.compile(
    r"(<!-- table: (?P<name>[a-z-]+)(?: from (?P<file>[^ ]+))? -->\n)(?P<body>.*?)(<!-- /table -->)",
    re.DOTALL,
)
BATCHES = (1, 8, 32, 128)


def short(sha256: str) -> str:
    return sha256[:12]


def num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def caption(path: Path, data: dict, section: dict) -> list[str]:
    """Where the numbers come from: machine, model(s), when, how, which file."""
    m = data["machine"]
    key = [f for f in KEY_EXTENSIONS if f in m["vector_extensions"]]
    load = section["load_average_1m"]
    lines = [
        f"- **Machine:** {m['cpu']} ({', '.join(key) or 'no AVX2'}), {m['cpus']} CPUs, "
        f"{m['ram_gib']} GiB RAM; 1-minute load average {load['start']} at the start, "
        f"{load['end']} at the end",
    ]
    for model in section["models"]:
        named = "" if model["what"].startswith(model["name"]) else f" `{model['name']}`"
        lines.append(
            f"- **Model{named}:** SHA-256 `{short(model['sha256'])}` of {model['file']}: "
            f"{model['what']}"
        )
    started, finished = section["started"], section["finished"]
    lines += [
        f"- **Run:** {started[:10]} {started[11:16]}-{finished[11:16]} UTC, "
        f"{num(section.get('seconds'))} s: `{section['command']}`",
        f"- **File:** `benchmarks/results/{path.name}`",
        "",
    ]
    return lines


def train_table(section: dict) -> list[str]:
    figures = section["figures"]
    sha = {m["name"]: short(m["sha256"]) for m in section["models"]}
    rows = figures["results"]
    ref = next((r["training_seconds"] for r in rows if r["model"] == "reference"), None)
    lines = [
        f"{figures['train_samples']:,} training images.",
        "",
        "| model | SHA-256 | val acc | test acc | val acc, flip outside | test acc, flip outside "
        "| epochs | s/epoch | training s | vs reference | MFLOPs / image | GFLOPs / epoch "
        "| parameters |",
        "|---|---|" + "---:|" * 11,
    ]
    for r in rows:
        ratio = f"{r['training_seconds'] / ref:.1f}x" if ref else "-"
        lines.append(
            f"| {r['model']} | `{sha.get(r['model'], '?')}` | {r['val_accuracy']:.4f} "
            f"| {r['test_accuracy']:.4f} | {r['val_accuracy_flip_tta']:.4f} "
            f"| {r['test_accuracy_flip_tta']:.4f} | {r['epochs']} | {r['seconds_per_epoch']:.1f} "
            f"| {num(r['training_seconds'])} | {ratio} | {r['mflops_per_image']:.1f} "
            f"| {num(r['gflops_per_epoch'])} | {num(r['parameters'])} |"
        )
    return lines


def serve_table(section: dict) -> list[str]:
    figures = section["figures"]
    servers = figures["servers"]
    lines = [
        f"Closed-loop clients, {num(figures['seconds'])} s per point after "
        f"{num(figures.get('warmup_seconds'))} s of warm-up.",
        "",
        *server_rows(servers),
    ]
    verdict = figures.get("verdict", {})
    targets = verdict.get("targets", {})
    labels = {
        "vs_additive_ideal_c32": "req/s at concurrency 32 vs the additive ideal",
        "p50_vs_noop_c1": "p50 at concurrency 1 vs no-op",
        "vs_mlflow_c32": "req/s at concurrency 32 vs `mlflow models serve`",
    }
    heads = [
        f"{label} ({'<=' if k.startswith('p50') else '>='} {targets.get(k, '?')}x)"
        for k, label in labels.items()
    ]
    lines += ["", "| targets | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(labels)]
    for name, found in verdict.get("by_server", {}).items():
        cells = [target_cell(found, k) for k in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "additive_ideal_c32" in verdict:
        lines += ["", f"Additive ideal: {verdict['additive_ideal_c32']:,.0f} req/s."]
    return lines


def target_cell(found: dict, key: str) -> str:
    """A server's measure against one target: `1.23x (met)`, `-` when not measured."""
    if key not in found["measured"]:
        return "-"
    return f"{found['measured'][key]:.2f}x ({'met' if found['met'][key] else 'missed'})"


def runtimes_table(section: dict) -> list[str]:
    return runtime_rows(section["figures"]["ceilings"], BATCHES)


def monitoring_table(section: dict) -> list[str]:
    figures = section["figures"]
    medians, verdict = figures["medians"], figures["verdict"]
    names = {
        "rps_c32": "requests/s at concurrency 32",
        "p50_ms_c1": "p50 ms at concurrency 1",
        "server_cpu_ms_per_request": "server CPU ms per request",
    }
    lines = [
        f"Medians over {figures['rounds_run']} interleaved rounds of {num(figures['seconds'])} s.",
        "",
        "| | recording on | recording off | on / off |",
        "|---|---:|---:|---:|",
    ]
    for key, label in names.items():
        on, off = medians[key]["on"], medians[key]["off"]
        lines.append(f"| {label} | {on:,.2f} | {off:,.2f} | {on / off:.3f} |")
    lines += [
        "",
        f"Throughput drop {verdict['throughput_drop']:.1%} (target <= {verdict['target']:.0%}): "
        f"{'met' if verdict['met'] else 'missed'}.",
    ]
    return lines


def load_table(section: dict) -> list[str]:
    f = section["figures"]
    growth = "-" if f.get("memory_growth") is None else f"{f['memory_growth']:+.1%}"
    lines = [
        f"{f['requests']:,} requests at concurrency {f['concurrency']}, "
        f"{f.get('bad_fraction', 0):.0%} bad.",
        "",
        "| requests/s | p50 ms | p99 ms | good not 200 | bad not 4xx | 5xx or failed "
        "| memory after warm-up MB | after the run MB | growth |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {f['requests_per_s']:,.1f} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} "
        f"| {f['good_not_200']} | {f['bad_not_4xx']} | {f['server_errors']} "
        f"| {num(f.get('memory_after_warmup_mb'))} | {num(f.get('memory_after_run_mb'))} "
        f"| {growth} |",
    ]
    return lines


def overload_table(section: dict) -> list[str]:
    f = section["figures"]
    return [
        f"POST {f['endpoint']} of a {f['upload']}: capacity from {f['concurrency']} closed-loop "
        f"clients, then open-loop streams of {num(f['seconds'])} s; goodput = answers 200 within "
        f"{f['slo_s']:g} s of being due; a client waits at most {num(f['client_timeout_s'])} s.",
        "",
        *overload_rows(f["runs"]),
    ]


def upload_memory_table(section: dict) -> list[str]:
    return [
        "The worst uploads the decode budget admits (serve.max_decode_mb) and two it refuses, all "
        "at once, twice; resident memory summed over the serving processes.",
        "",
        *upload_memory_rows(section["figures"]["runs"]),
    ]


def feedback_table(section: dict) -> list[str]:
    f = section["figures"]
    return [
        f"Shift: {f['shift']}. Stream: {f['stream']}; original: {f['original']}.",
        "",
        *feedback_rows(f["runs"]),
    ]


def deploy_table(section: dict) -> list[str]:
    f = section["figures"]
    load = f["load"]
    limit = f["checks"]["memory under limit"]["limit_mb"]
    return [
        f"{f['podman']}, image `{f['image']}`. Ready: seconds from `podman kube play` to the "
        f"first 200 on /readyz, for each of {len(f['ready_seconds'])} plays. Memory: the "
        "container's cgroup usage (what its limit counts), idle and after "
        f"{load['requests']:,} requests at concurrency {load['concurrency']} "
        f"({load['requests_per_s']:,.0f} req/s, p99 {load['p99_ms']:.0f} ms, "
        f"{load['server_errors']} 5xx).",
        "",
        "| image MB | ready s | startup probe allows s | memory idle MB | after load MB "
        "| limit MB | failed checks |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {f['size_mb']:,.0f} | {' / '.join(f'{s:.1f}' for s in f['ready_seconds'])} "
        f"| {f['startup_allowance_seconds']} | {f['memory_idle_mb']:,.0f} "
        f"| {f['memory_after_load_mb']:,.0f} | {limit:,.0f} | {len(f['failures'])} |",
        "",
        "| image layer MB | holds |",
        "|---:|---|",
        *(f"| {layer['mb']:,.1f} | {layer['step']} |" for layer in f["layers"]),
    ]


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def commands_table(section: dict) -> list[str]:
    """The README's commands from a fresh clone: wall time, and for `make test` the suite's own
    time and each tier's."""
    lines = [
        "| command, fresh clone | commit | in all | the suite | "
        + " | ".join(TIERS)
        + " | result |",
        "|---|---|---:|---:|" + "---:|" * len(TIERS) + "---|",
    ]
    for r in section["figures"]["runs"]:
        suite = r.get("suite", {})
        tiers = suite.get("tiers", {})
        cells = [
            f"{tiers[t]['tests']} tests, {duration(tiers[t]['seconds'])}" if t in tiers else "-"
            for t in TIERS
        ]
        result = r.get("summary") or ("ok" if r["returncode"] == 0 else f"exit {r['returncode']}")
        lines.append(
            f"| `{r['command']}` | `{r['commit'][:7]}` | {duration(r['seconds'])} "
            f"| {duration(suite['seconds']) if suite else '-'} | {' | '.join(cells)} | {result} |"
        )
    return lines


def reference_table(section: dict) -> list[str]:
    """The champion's answers on validation: what the answer-quality alerts compare traffic with."""
    f = section["figures"]
    low = f["low_confidence_accuracy"]
    return [
        "| validation images | accuracy | answers below confidence "
        f"{f['low_confidence']} | right among those | largest class share | median confidence |",
        "|---:|---:|---:|---:|---|---:|",
        f"| {f['images']:,} | {f['accuracy']:.4f} | {100 * f['low_confidence_share']:.1f}% "
        f"| {'-' if low is None else f'{100 * low:.0f}%'} "
        f"| {100 * f['largest_class_share']:.1f}% ({f['largest_class']}) "
        f"| {f['median_confidence']:.2f} |",
    ]


# table name -> (benchmark section, generator)
TABLES: dict[str, tuple[str, Callable[[dict], list[str]]]] = {
    "train": ("train", train_table),
    "serve": ("serve", serve_table),
    "serve-runtimes": ("serve", runtimes_table),
    "monitoring": ("monitoring", monitoring_table),
    "load": ("load", load_table),
    "overload": ("overload", overload_table),
    "upload-memory": ("overload", upload_memory_table),
    "feedback": ("feedback", feedback_table),
    "deploy": ("deploy", deploy_table),
    "commands": ("commands", commands_table),
    "reference": ("reference", reference_table),
}


class TableError(ValueError):
    """A marker that names no known table, or a table with no result to generate it from."""


def source(section: str, directory: Path, file: str | None) -> tuple[Path, dict]:
    """The result file a table comes from: the named one, or the newest run of `section`."""
    if file:
        path = directory / file
        if not path.exists():
            raise TableError(f"no result file {path}")
        data = read(path)
        if section not in data:
            raise TableError(f"{path} has no {section} section")
        return path, data
    found = [(p, d) for p in result_files(directory) if section in (d := read(p))]
    if not found:
        raise TableError(f"no result file in {directory} has a {section} section")
    return max(found, key=lambda pair: pair[1][section]["finished"])


def generate(name: str, directory: Path, file: str | None = None) -> str:
    """The body of table `name` (between its markers)."""
    if name not in TABLES:
        raise TableError(f"unknown table {name!r}; one of {', '.join(TABLES)}")
    section_name, make = TABLES[name]
    path, data = source(section_name, directory, file)
    section = data[section_name]
    return "\n".join([*caption(path, data, section), *make(section)]) + "\n"


def render(text: str, directory: Path = RESULTS_DIR) -> str:
    """`text` with every table regenerated."""
    return MARKER.sub(
        lambda m: m.group(1) + generate(m["name"], directory, m["file"]) + m.group(5), text
    )


def stale(text: str, directory: Path = RESULTS_DIR) -> list[str]:
    """The names of the tables in `text` that differ from what their result files generate."""
    return [
        m["name"] + (f" from {m['file']}" if m["file"] else "")
        for m in MARKER.finditer(text)
        if m["body"] != generate(m["name"], directory, m["file"])
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if any differs")
    parser.add_argument("--doc", type=Path, action="append", help=f"default: {DOCS}")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    failed = False
    for doc in args.doc or DOCS:
        text = doc.read_text()
        if not MARKER.search(text):
            sys.exit(f"{doc}: no <!-- table: NAME --> ... <!-- /table --> block")
        try:
            if args.check:
                if differ := stale(text, args.results):
                    failed = True
                    print(
                        f"{doc}: these tables differ from their result files: "
                        f"{', '.join(differ)}; run python benchmarks/tables.py",
                        file=sys.stderr,
                    )
                else:
                    print(f"{doc}: every table matches its result file")
                continue
            new = render(text, args.results)
        except TableError as err:
            sys.exit(f"{doc}: {err}")
        if new != text:
            doc.write_text(new)
            print(f"rewrote the tables of {doc}")
        else:
            print(f"{doc}: tables already up to date")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
