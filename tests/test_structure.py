"""The project's structure, checked from the source: DVC lineage and the direction of imports.

Imports are read with `ast` (module level and inside functions alike), never executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.unit

PACKAGES = ("pipeline", "service", "benchmarks", "tests")


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports (`from a import b` counts a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def module_file(name: str) -> Path | None:
    path = REPO / (name.replace(".", "/") + ".py")
    return path if path.is_file() else None


def project_imports(path: Path) -> set[str]:
    """The project's own module files that a file imports, transitively (itself included)."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += [f for name in imported_modules(current) if (f := module_file(name))]
    return {str(p.relative_to(REPO)) for p in seen}


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(stages()))
def test_stage_deps_list_every_module_it_imports(stage):
    spec = stages()[stage]
    module = spec["cmd"].split("python -m ", 1)[1].split()[0]
    assert module == f"pipeline.{stage}", "one stage per module pipeline/<stage>.py"
    needed = project_imports(module_file(module))
    declared = {d for d in spec["deps"] if d.endswith(".py")}
    assert sorted(needed - declared) == [], f"dvc.yaml stage {stage!r} misses these deps"
    assert sorted(declared - needed) == [], f"dvc.yaml stage {stage!r} lists unused modules"


def test_package_inits_hold_no_code():
    """Importing pipeline.x runs pipeline/__init__.py too; it is left out of deps only because it
    is a docstring and nothing else."""
    for package in ("pipeline", "service"):
        tree = ast.parse((REPO / package / "__init__.py").read_text())
        assert all(
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            for node in tree.body
        ), f"{package}/__init__.py"


# Who may import whom: the service may use the pipeline's core, never the reverse; tests and
# benchmarks use the product, the product never uses them.
ALLOWED = {
    "pipeline": {"pipeline"},
    "service": {"pipeline", "service"},
    "benchmarks": {"pipeline", "service", "benchmarks"},
    "tests": set(PACKAGES),
}


@pytest.mark.parametrize("package", list(ALLOWED))
def test_imports_run_one_way(package):
    wrong = []
    for path in sorted((REPO / package).glob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in PACKAGES and top not in ALLOWED[package] and module_file(name):
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert wrong == []


def test_the_checks_see_real_imports():
    """Guard against a checker that finds nothing: train imports model, which imports preprocess."""
    found = project_imports(REPO / "pipeline" / "train.py")
    assert {"pipeline/model.py", "pipeline/preprocess.py", "pipeline/params.py"} <= found
    assert "pipeline/model.py" in project_imports(REPO / "pipeline" / "model.py")


def test_bento_packs_exactly_what_the_service_imports():
    """bentofile.yaml's include: the service's own modules and the pipeline modules they import,
    transitively (plus params.yaml, which it reads), nothing else: no TensorFlow-only code."""
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    packed = {
        str(path.relative_to(REPO))
        for pattern in bentofile["include"]
        for path in REPO.glob(pattern)
        if path.suffix == ".py"
    }
    needed = set()
    for path in (REPO / "service").glob("*.py"):
        needed |= project_imports(path)
    needed |= {"pipeline/__init__.py", "service/__init__.py"}
    assert sorted(needed - packed) == [], "the Bento misses modules the service imports"
    assert sorted(packed - needed) == [], "the Bento packs modules the service does not import"
    assert "params.yaml" in bentofile["include"]
    python_packages = {p.split("==")[0] for p in bentofile["python"]["packages"]}
    assert not python_packages & {"tensorflow", "keras", "tf2onnx", "mlflow"}
