"""The documentation: the MkDocs site builds strictly, every section the code cites exists, and
the README stays a short guide whose links to docs/ resolve."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
from functools import cache
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from pydantic import BaseModel

from pipeline.core.params import Params

pytestmark = pytest.mark.unit

README_MAX_LINES = 320
# Where code and configuration may cite a section: these directories (recursively) and the top level.
SCANNED_DIRS = ("pipeline", "service", "benchmarks", "harness", "tests")
SCANNED_SUFFIXES = {".py", ".yaml", ".yml", ".js", ".html"}
SCANNED_NAMES = {"Makefile", ".gitignore"}

# `README, "Section"`, possibly wrapped over lines or comment lines.
README_SECTION = re.compile(r'\bREADME,\s*(?:#\s*)?"([^"]+)"')
# `docs/page.md`, `docs/page.md#anchor`, `docs/page.md, "Section"`.
DOCS_REF = re.compile(r'\bdocs/([\w-]+\.md)(?:#([\w-]+)|,\s*(?:#\s*)?"([^"]+)")?')


def normalise(text: str) -> str:
    """A heading or a cited section as compared: lower case, no backticks, single spaces."""
    text = re.sub(r"\s*\n\s*(?:#\s*)?", " ", text)  # a citation wrapped over (comment) lines
    return " ".join(text.replace("`", "").split()).lower()


def slug(heading: str) -> str:
    """The anchor MkDocs' toc extension gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "").strip().lower())
    return re.sub(r"[-\s]+", "-", text).strip("-")


@cache
def headings(page: Path) -> tuple[str, ...]:
    """The `#`-headings of a Markdown file, outside code fences."""
    found, fenced = [], False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)):
            found.append(match.group(1))
    return tuple(found)


def has_section(page: Path, section: str) -> bool:
    return normalise(section) in {normalise(h) for h in headings(page)}


def scanned_files() -> list[Path]:
    files = [p for p in REPO.iterdir() if p.is_file() and is_scanned(p)]
    for folder in SCANNED_DIRS:
        if (REPO / folder).is_dir():
            files += [p for p in (REPO / folder).rglob("*") if p.is_file() and is_scanned(p)]
    return sorted(p for p in files if p != Path(__file__).resolve())


def is_scanned(path: Path) -> bool:
    return path.suffix in SCANNED_SUFFIXES or path.name in SCANNED_NAMES


def citations() -> list[tuple[str, str, str | None, str | None]]:
    """(file, page, section, anchor) for every citation of README.md or a docs/ page."""
    found = []
    for path in scanned_files():
        rel = path.relative_to(REPO).as_posix()
        text = path.read_text(errors="replace")
        for match in README_SECTION.finditer(text):
            found.append((rel, "README.md", match[1], None))
        for match in DOCS_REF.finditer(text):
            found.append((rel, f"docs/{match.group(1)}", match.group(3), match.group(2)))
    return found


def test_mkdocs_builds_strictly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "index.html").is_file()


def test_cited_sections_exist():
    found = citations()
    # The code cites README and docs sections in many places: finding few means the scan broke.
    assert len(found) >= 5, found
    assert any(section for _, _, section, _ in found), found
    problems = []
    for source, page, section, anchor in found:
        target = REPO / page
        where = f"{source} cites {page}"
        if not target.is_file():
            problems.append(f"{where}: no such file")
        elif section is not None and not has_section(target, section):
            problems.append(f'{where}, "{section}": no such heading in {page}')
        elif anchor is not None and anchor not in {slug(h) for h in headings(target)}:
            problems.append(f"{where}#{anchor}: no such anchor in {page}")
    assert not problems, "\n".join(problems)


def test_readme_is_a_short_guide_whose_docs_links_resolve():
    readme = (REPO / "README.md").read_text()
    lines = readme.count("\n") + (not readme.endswith("\n"))
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([\w-]+))?\)", readme)
    assert links, "the README links to no docs/ page"
    for link, anchor in links:
        target = REPO / link
        assert target.is_file(), f"README.md links to {link}, which does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in {slug(h) for h in headings(target)}, f"README.md: {link}#{anchor}"
    # Its own section citations (`README, "..."`) are checked above; its links to sections of itself:
    for anchor in re.findall(r"\]\(#([\w-]+)\)", readme):
        assert anchor in {slug(h) for h in headings(REPO / "README.md")}, f"README.md: #{anchor}"


# A page says which machine a figure is from by its CPU, never "here" (the machine the page was
# written on). These catch that use of "here" and of "this machine"; "the figure here" (on this
# page) or "click here" pass. Code, inline or fenced, is not prose and is not read.
MACHINE_HERE = re.compile(
    r"\b(?:measured|tested|runs?|ran|installed|installable|exercised|used|built|reachable"
    r"|packages?|the one) here\b|\bhere \(|\bhere\)|\bthis (?:machine|vm|host)\b",
    flags=re.IGNORECASE,
)


def prose_lines(page: Path) -> list[tuple[int, str]]:
    """(line number, text) of a Markdown page outside code fences, inline code removed."""
    found, fenced = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            found.append((number, re.sub(r"`[^`]*`", "", line)))
    return found


def machine_here(text: str) -> list[str]:
    return [m.group(0) for m in MACHINE_HERE.finditer(text)]


def test_the_here_check_tells_a_machine_from_a_page():
    for said in (
        "measured here on 2 vCPUs",
        "on this machine",
        "it runs here",
        "root here)",
        "tested here (the suite)",
        "MinIO has no package here",
        "this VM's speed",
    ):
        assert machine_here(said), said
    for fine in (
        "the figure here, in params.yaml",
        "every measurement here says its date",
        "saves nothing here and costs accuracy",
        "click here",
        "on this page",
    ):
        assert not machine_here(fine), fine


@pytest.mark.parametrize(
    "page", [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_no_page_says_here_for_a_machine(page):
    found = [
        f"{page.name}:{n}: {hit!r}" for n, line in prose_lines(page) for hit in machine_here(line)
    ]
    assert not found, (
        "name the CPU instead (e.g. 'on the 2-vCPU Intel Xeon with AVX-512'):\n" + "\n".join(found)
    )


def marked_block(page: Path, marker: str) -> str:
    """The fenced block right after `<!-- marker -->` on a page."""
    match = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)\n```", page.read_text(), flags=re.DOTALL)
    assert match, f"{page.name}: no fenced block after <!-- {marker} -->"
    return match.group(1)


ADAPTING = REPO / "docs" / "adapting.md"


def test_the_adapting_example_gives_the_layer_table_on_the_page(tmp_path):
    """The page's example `model:` section, in a params.yaml, through the page's own preview
    command (the params loader, layer_table and the FLOPs, as train prints them)."""
    example = yaml.safe_load(marked_block(ADAPTING, "model-example"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(example) == {"model"} and example["model"] != params["model"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "model": example["model"]}))
    command = re.search(r'^python -c "\n(.*?)"$', ADAPTING.read_text(), flags=re.M | re.DOTALL)
    assert command, "adapting.md: no python -c preview command"
    done = subprocess.run(
        [sys.executable, "-c", command.group(1)],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == marked_block(ADAPTING, "layer-table")


def allowed_values_on_the_page() -> dict[str, set[str]]:
    table = ADAPTING.read_text().split("<!-- allowed-values -->", 1)[1]
    rows = re.findall(r"^\| `([\w.\[\]]+)` \| (.+) \|$", table.split("\n\n", 1)[0], flags=re.M)
    return {key: set(re.findall(r"`([^`]+)`", values)) for key, values in rows}


def literal_fields(model: type, prefix: str = "") -> dict[str, set[str]]:
    """Every key under a params model that takes one of fixed names -> those names."""
    found = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        annotation = field.annotation
        if typing.get_origin(annotation) is list:
            annotation, key = typing.get_args(annotation)[0], f"{key}[]"
        if typing.get_origin(annotation) is typing.Literal:
            found[key] = set(typing.get_args(annotation))
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= literal_fields(annotation, f"{key}.")
    return found


def test_the_adapting_page_lists_exactly_what_the_params_loader_accepts():
    listed = allowed_values_on_the_page()
    accepted = literal_fields(Params)
    for key in ("model.conv_blocks[].activation", "model.conv_blocks[].padding", "train.optimizer"):
        assert key in listed, f"adapting.md lists no values for {key}"
    wanted = {k: v for k, v in accepted.items() if k.startswith(("model.", "train."))}
    assert listed == wanted, f"adapting.md lists {listed}, params.py accepts {wanted}"


COSTS = REPO / "docs" / "costs.md"


def numbers(value: object) -> set[float]:
    if isinstance(value, bool):
        return set()
    if isinstance(value, int | float):
        return {float(value)}
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return set().union(*map(numbers, value)) if value else set()
    return set()


def test_the_costs_from_result_files_are_in_those_files():
    """Each decimal figure of the costs page's result-file rows is a value of the section it
    names, in the file of that column's CPU: regenerated results show up as a failure here."""
    rows = re.findall(
        r"^\| `make [\w-]+` \| (.*) \| (.*) \| (`[\w.-]+\.json`: .*) \|$",
        COSTS.read_text(),
        flags=re.M,
    )
    assert len(rows) >= 4, "costs.md: no rows citing result files"
    for intel, amd, sources in rows:
        cited = dict(re.findall(r"`([\w.-]+\.json)`: `(\w+)`", sources))
        for figures in (intel, amd):
            claimed = {float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*\.\d+", figures)}
            if not claimed:
                continue
            cpu = "intel" if figures is intel else "amd"
            name = next((f for f in cited if cpu in f), None)
            assert name, f"costs.md: {figures!r} cites no {cpu} result file"
            data = json.loads((REPO / "benchmarks" / "results" / name).read_text())
            missing = claimed - numbers(data[cited[name]])
            assert not missing, f"costs.md: {sorted(missing)} not in {name}, section {cited[name]}"
