"""Measured numbers live in committed result files (benchmarks/results/<date>-<machine>.json,
harness/results.py) and the tables of docs/benchmarks.md and docs/costs.md are generated from them (benchmarks/tables.py):
every file names its machine and models, and a table that differs from its file fails here."""

from __future__ import annotations

import json
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
