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

PACKAGES = ("pipeline", "service", "harness", "benchmarks", "tests")


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
    """Importing pipeline.core.x runs pipeline/__init__.py and pipeline/core/__init__.py too; they
    are left out of deps only because each is a docstring and nothing else."""
    inits = [
        p for package in ("pipeline", "service") for p in (REPO / package).rglob("__init__.py")
    ]
    assert len(inits) >= 7, inits
    for init in inits:
        tree = ast.parse(init.read_text())
        assert all(
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            for node in tree.body
        ), str(init.relative_to(REPO))


# Who may import whom: the service may use the pipeline's core, never the reverse; tests and
# benchmarks use the product, the product never uses them.
ALLOWED = {
    "pipeline": {"pipeline"},
    "service": {"pipeline", "service"},
    # what tests and benchmarks share: servers, load, the machine, result files; no product code
    # beyond the pipeline's core
    "harness": {"harness", "pipeline"},
    # each benchmark stands alone: what they share is in harness, never in another benchmark
    "benchmarks": {"pipeline", "service", "harness"},
    "tests": set(PACKAGES),
}


@pytest.mark.parametrize("package", list(ALLOWED))
def test_imports_run_one_way(package):
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in PACKAGES and top not in ALLOWED[package] and module_file(name):
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert wrong == []


def test_the_checks_see_real_imports():
    """Guard against a checker that finds nothing: train imports fit, which imports model, which
    imports params; and no more than it uses (the service's image fitting is not train's)."""
    found = project_imports(REPO / "pipeline" / "train.py")
    expected = {
        "pipeline/training/fit.py",
        "pipeline/training/model.py",
        "pipeline/core/params.py",
    }
    assert expected <= found
    assert "pipeline/core/preprocess.py" not in found
    model = REPO / "pipeline" / "training" / "model.py"
    assert "pipeline/training/model.py" in project_imports(model)


CORE = "pipeline.core"
STAGES = {f"pipeline.{stage}" for stage in stages()}


def test_the_service_imports_the_core_and_nothing_else_of_the_pipeline():
    wrong = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / "service").rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] == "pipeline" and not name.startswith(CORE) and module_file(name)
    ]
    assert wrong == []
    used = {
        name
        for path in (REPO / "service").rglob("*.py")
        for name in imported_modules(path)
        if name.startswith(CORE)
    }
    assert {"pipeline.core.params", "pipeline.core.inference", "pipeline.core.preprocess"} <= used


# What the core may not import, even indirectly: the Bento and its image hold no TensorFlow.
HEAVY = {"tensorflow", "keras", "tf2onnx", "mlflow", "dvc", "sklearn", "pandas", "matplotlib"}


def test_the_core_imports_no_tensorflow_and_no_stage():
    core_files = sorted((REPO / "pipeline" / "core").glob("*.py"))
    assert len(core_files) >= 6
    wrong = []
    for path in core_files:
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in HEAVY or name in STAGES:
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
            elif top == "pipeline" and not name.startswith(CORE):
                wrong.append(f"{path.relative_to(REPO)} imports {name} (outside the core)")
    assert wrong == []


def test_bento_packs_exactly_what_the_service_imports():
    """bentofile.yaml's include: the service's own modules and pipeline/core whole, which is what
    they import, transitively (plus params.yaml, which it reads): no TensorFlow-only code."""
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    packed = {
        str(path.relative_to(REPO))
        for pattern in bentofile["include"]
        for path in (REPO.glob(f"{pattern}**/*") if pattern.endswith("/") else REPO.glob(pattern))
        if path.suffix == ".py"
    }
    needed = set()
    for path in (REPO / "service").glob("*.py"):
        needed |= project_imports(path)
    needed |= {"pipeline/__init__.py", "pipeline/core/__init__.py", "service/__init__.py"}
    assert sorted(needed - packed) == [], "the Bento misses modules the service imports"
    assert sorted(packed - needed) == [], "the Bento packs modules the service does not import"
    assert "params.yaml" in bentofile["include"]
    # Its packages: the serving lock (tests/test_service.py checks that against requirements.lock).
    assert bentofile["python"]["requirements_txt"] == "requirements-serve.lock"
