"""The documentation: the MkDocs site builds strictly, every section the code cites exists, and
the README stays a short guide whose links to docs/ resolve."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO

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
