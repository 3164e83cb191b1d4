"""Measured numbers live in committed result files (benchmarks/results/<date>-<machine>.json,
harness/results.py); the tables of docs/benchmarks.md, costs.md and monitoring.md are generated
from them (benchmarks/tables.py): every file names its machine and models, a table that differs
from its file fails here, and so does a figure in the README's or a docs page's prose that no
committed file holds."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Set
from pathlib import Path

import pytest
from conftest import REPO

from benchmarks.tables import DOCS, MARKER, TableError, render, stale
from harness.results import RESULTS_DIR, Measurement, ResultError, read, record, result_files

pytestmark = pytest.mark.unit


def test_the_committed_results_are_where_the_benchmarks_write():
    assert REPO / "benchmarks" / "results" == RESULTS_DIR
    assert result_files(), f"no result file in {RESULTS_DIR}"


@pytest.mark.parametrize("path", result_files(), ids=lambda p: p.name)
def test_every_result_file_names_its_machine_and_models(path: Path):
    data = read(path)  # ResultError naming whatever is missing
    assert path.name == f"{data['date']}-{data['machine']['slug']}.json"
    machine = data["machine"]
    assert machine["cpu"] and machine["cpus"] >= 1 and machine["ram_gib"] > 0
    assert isinstance(machine["vector_extensions"], list)
    for name in ("train", "serve", "monitoring", "load"):
        for model in data.get(name, {}).get("models", []):
            assert len(model["sha256"]) == 64 and model["what"], (name, model)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_the_docs_tables_are_generated_from_the_result_files(doc: Path):
    text = doc.read_text()
    names = [m["name"] for m in MARKER.finditer(text)]
    assert names, f"{doc} has no generated table"
    assert stale(text) == [], "run python benchmarks/tables.py"


def _section(figures: dict) -> dict:
    run = Measurement("load", ["benchmarks/load_test.py", "--requests", "10"])
    model = {"name": "m:1", "sha256": "ab" * 32, "file": "model.keras", "what": "a test model"}
    return run.section([model], figures)


FIGURES = {
    "requests": 10,
    "concurrency": 2,
    "requests_per_s": 123.4,
    "p50_ms": 5.0,
    "p99_ms": 9.0,
    "good_not_200": 0,
    "bad_not_4xx": 0,
    "server_errors": 0,
    "bad_fraction": 0.1,
    "memory_after_warmup_mb": 400.0,
    "memory_after_run_mb": 404.0,
    "memory_growth": 0.01,
}


def test_a_run_merges_its_section_and_a_hand_edit_of_a_table_is_caught(tmp_path: Path):
    path = record("load", _section(FIGURES), tmp_path)
    again = record("monitoring", {**_section({}), "figures": {"x": 1}}, tmp_path)
    assert again == path and result_files(tmp_path) == [path]
    data = read(path)
    assert set(data) >= {"machine", "load", "monitoring"}  # the second run kept the first's
    assert data["load"]["command"] == "python benchmarks/load_test.py --requests 10"
    assert data["load"]["load_average_1m"]["start"] >= 0
    assert Measurement("load").earlier(tmp_path) == data["load"]  # what a later run merges with
    assert Measurement("train").earlier(tmp_path) == {}

    doc = "# x\n\n<!-- table: load -->\n<!-- /table -->\n"
    rendered = render(doc, tmp_path)
    assert stale(rendered, tmp_path) == [] and stale(doc, tmp_path) == ["load"]
    assert "123.4" in rendered and data["machine"]["cpu"] in rendered
    assert "`abababababab`" in rendered and "a test model" in rendered
    assert stale(rendered.replace("123.4", "124.0"), tmp_path) == ["load"]

    with pytest.raises(TableError, match=r"no result file .* has a train section"):
        render("<!-- table: train -->\n<!-- /table -->", tmp_path)
    with pytest.raises(TableError, match="unknown table 'speed'"):
        render("<!-- table: speed -->\n<!-- /table -->", tmp_path)


def test_a_result_without_a_model_hash_is_refused(tmp_path: Path):
    section = _section(FIGURES)
    section["models"][0]["sha256"] = ""
    path = record("load", section, tmp_path)
    with pytest.raises(ResultError, match=r"load.models\[0\] has no sha256"):
        read(path)
    path.write_text(json.dumps({"date": "2026-01-01"}))
    with pytest.raises(ResultError, match="no machine"):
        read(path)


# --- figures in prose --------------------------------------------------------------------------

# A figure: a duration, a size or a percentage (a number and its unit), or a score written with
# three or more decimals (an accuracy, a distance). Ratios ("3x") are quotients of two figures and
# are not read. Numbers in code, inline or fenced, and in generated tables are not prose.
FIGURE = re.compile(
    r"(?<![\w.,])(?:(?P<m>\d+) min (?P<s>\d+) s|(?P<n>\d[\d,]*(?:\.\d+)?) ?"
    r"(?P<unit>ms|s|min|MB|MiB|GB|GiB|%)|(?P<score>0\.\d{3,}))(?![\w])"
)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?")
# What a written value may be of the stored one, by unit: 1.24 GB is 1,240 MB is 1.24e9 bytes.
SCALES = {
    "s": (1, 1000, 1 / 60),
    "ms": (1, 1 / 1000),
    "min": (1, 60),
    "MB": (1, 1e6, 1 / 1.048576, 1 / 1000),
    "MiB": (1, 1.048576, 2**20),
    "GB": (1, 1000, 1e9, 1000 / 1.048576),
    "GiB": (1, 1024, 2**30, 1073.741824),
    "%": (1, 1 / 100),
    "": (1,),
}
# The project's history: dated records of earlier defaults and experiments, kept as measured then
# (the result files began later); every other page's figures come from today's files.
HISTORY = REPO / "docs" / "decisions.md"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@functools.cache  # read once for all the pages
def stored_values() -> frozenset[float]:
    """Every number of the committed result files, reports and dvc.lock (also inside their
    strings), and every configured one: params.yaml, bentofile.yaml, the manifests and the
    product's code."""
    texts = [p.read_text() for p in (REPO / "benchmarks" / "results").glob("*.json")]
    texts += [p.read_text() for p in (REPO / "reports").rglob("*") if p.suffix in (".json", ".csv")]
    texts.append((REPO / "dvc.lock").read_text())  # the outputs' sizes
    config = [REPO / "params.yaml", REPO / "bentofile.yaml", *(REPO / "deploy").rglob("*.y*ml")]
    for package in ("pipeline", "service", "harness", "benchmarks"):
        config += (REPO / package).rglob("*.py")
    texts += [p.read_text() for p in config]
    return frozenset(float(n) for text in texts for n in NUMBER.findall(text))


def unsourced(text: str, values: Set[float]) -> list[str]:
    """The figures of `text`'s prose that no value in `values` rounds to, as written."""
    prose = CODE.sub("", MARKER.sub("", text))
    missing = []
    for m in FIGURE.finditer(prose):
        if m["m"]:
            written, unit = str(int(m["m"]) * 60 + int(m["s"])), "s"
        else:
            written, unit = (m["n"] or m["score"]).replace(",", ""), m["unit"] or ""
        decimals = len(written.partition(".")[2])
        tolerance = 0.5 * 10**-decimals + 1e-9
        if not any(
            abs(v / scale - float(written)) <= tolerance for v in values for scale in SCALES[unit]
        ):
            missing.append(m[0])
    return missing


def test_a_figure_in_no_file_is_caught():
    values = {0.94034, 875.3, 1236.6, 0.032}
    text = "0.9403 and 875 s, 1.24 GB, 3.2% `0.9406` and 14 min 35 s, but 0.9406 and 12 s"
    assert unsourced(text, values) == ["0.9406", "12 s"]


@pytest.mark.parametrize("page", [p for p in PAGES if p != HISTORY], ids=lambda p: p.name)
def test_every_figure_on_a_page_is_in_a_committed_file(page: Path):
    missing = unsourced(page.read_text(), stored_values())
    assert missing == [], (
        f"{page.name}: figures in no result file, report or configuration: {missing}; rerun the "
        "benchmark that measures them (docs/benchmarks.md) or take them from its table"
    )
