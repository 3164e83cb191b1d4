"""The project's structure, checked from the source: DVC lineage and the direction of imports.

Imports are read with `ast` (module level and inside functions alike), never executed.

Past 300 lines: every rule of the layout in one file, so that the rules are read together.
"""

from __future__ import annotations

import ast
import itertools
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pipeline.core import paths

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


# Paths: written once, in pipeline/core/paths.py; dvc.yaml repeats them (DVC reads only YAML).
PATHS = {name: value for name, value in vars(paths).items() if isinstance(value, Path)}
NOT_IN_DVC = {"MONITOR_REPORTS"}  # the drift report: `make monitor`, not a stage


def command_options(cmd: str) -> dict[str, str]:
    """A stage command's `--option value` pairs."""
    words = shlex.split(cmd)
    return {w: v for w, v in itertools.pairwise(words) if w.startswith("--")}


def paths_value(node: ast.expr | None) -> Path | None:
    """A default written with pipeline/core/paths.py (`paths.X`, `paths.X / "name"`), evaluated;
    None for anything else (a literal path is a second place that names it)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return PATHS.get(node.attr) if node.value.id == "paths" else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left = paths_value(node.left)
        right = node.right.value if isinstance(node.right, ast.Constant) else None
        return left / right if left is not None and isinstance(right, str) else None
    return None


def option_defaults(path: Path) -> dict[str, list[Path | None]]:
    """Each option's defaults in a module's `add_argument` calls (every subcommand's)."""
    found: dict[str, list[Path | None]] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            found.setdefault(node.args[0].value, []).append(paths_value(default))
    return found


@pytest.mark.parametrize("stage", list(stages()))
def test_stage_commands_pass_the_paths_their_defaults_are(stage):
    """Each path dvc.yaml's cmd passes is the stage's default for it, taken from paths.py: a path
    renamed in dvc.yaml or in paths.py alone fails here."""
    spec = stages()[stage]
    module = spec["cmd"].split("python -m ", 1)[1].split()[0]
    defaults = option_defaults(module_file(module))
    passed = command_options(spec["cmd"])
    assert passed, f"dvc.yaml stage {stage!r} passes no paths"
    for option, value in passed.items():
        assert option in defaults, f"{module} has no option {option}"
        assert set(defaults[option]) == {Path(value)}, (
            f"{module} {option}: default {defaults[option]} (from pipeline/core/paths.py), "
            f"dvc.yaml passes {value}"
        )


def dvc_paths() -> set[Path]:
    """Every data path dvc.yaml names: commands' paths, deps (but code), outs, metrics, plots."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    named: set[Path] = set()
    for stage in spec["stages"].values():
        named |= {Path(v) for v in command_options(stage["cmd"]).values()}
        for key in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                name = entry if isinstance(entry, str) else next(iter(entry))
                if not name.endswith(".py"):
                    named.add(Path(name))
    for plot in spec.get("plots", []):
        for options in plot.values():
            named |= {Path(p) for p in (options.get("y") or {})}
    return named


def test_dvc_yaml_names_the_paths_of_paths_py():
    """Every path of dvc.yaml is one of paths.py's or inside one, and every path of paths.py is
    one dvc.yaml names (or a folder of those); params.yaml is DVC's default params file."""
    named = dvc_paths()
    assert len(named) >= 20, sorted(map(str, named))
    outside = [p for p in named if not any(p.is_relative_to(known) for known in PATHS.values())]
    assert sorted(map(str, outside)) == [], "dvc.yaml names paths pipeline/core/paths.py lacks"
    unused = [
        name
        for name, path in PATHS.items()
        if name not in NOT_IN_DVC | {"PARAMS"} and not any(p.is_relative_to(path) for p in named)
    ]
    assert unused == [], "pipeline/core/paths.py has paths dvc.yaml never names"
    assert Path("params.yaml") == paths.PARAMS


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
    # Its packages: the serving lock (tests/test_serving_image.py checks it against
    # requirements.lock).
    assert bentofile["python"]["requirements_txt"] == "requirements-serve.lock"


# The test tiers: pyproject.toml's pytest markers. pytest adds marks up, so a `unit` test in a
# `model` file runs in both tiers; each file states its one tier, its tests none of their own.
TIERS = {
    marker.split(":")[0]
    for marker in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"
    ]["markers"]
}


def tier_mark(node: ast.expr) -> str | None:
    """The tier a mark expression names (`pytest.mark.unit`, called or not), else None."""
    name = ast.unparse(node.func if isinstance(node, ast.Call) else node)
    tier = name.removeprefix("pytest.mark.")
    return tier if name.startswith("pytest.mark.") and tier in TIERS else None


def tier_problems(name: str, source: str) -> list[str]:
    """What keeps a test file from having exactly one tier: its module-level `pytestmark` (one
    `pytest.mark.<tier>`, or a list of marks holding exactly one tier) and no tier marks on its
    tests."""
    tree = ast.parse(source, name)
    values = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
    ]
    marks = [e for v in values for e in (v.elts if isinstance(v, ast.List | ast.Tuple) else [v])]
    tiers = [tier for mark in marks if (tier := tier_mark(mark))]
    problems = []
    if not tiers:
        problems.append(f"{name}: no tier: add `pytestmark = pytest.mark.<tier>` ({sorted(TIERS)})")
    elif len(tiers) > 1:
        problems.append(f"{name}: pytestmark gives {len(tiers)} tiers {tiers}, not one")
    problems += [
        f"{name}: {node.name} is marked {tier} itself; only the file's pytestmark names a tier"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        for decorator in node.decorator_list
        if (tier := tier_mark(decorator))
    ]
    return problems


def test_every_test_file_has_exactly_one_tier():
    files = sorted((REPO / "tests").glob("test_*.py"))
    assert len(files) >= 50 and sorted(TIERS) == ["data", "e2e", "model", "service", "unit"]
    problems = [
        problem
        for path in files
        for problem in tier_problems(str(path.relative_to(REPO)), path.read_text())
    ]
    assert problems == []
    # Guard against a checker that finds nothing: each way a file can fail is found.
    mixed = "import pytest\npytestmark = [pytest.mark.unit, pytest.mark.model]\n"
    marked = "import pytest\npytestmark = pytest.mark.unit\n@pytest.mark.e2e\ndef test_x(): pass\n"
    assert [len(tier_problems("t.py", s)) for s in ("x = 1\n", mixed, marked)] == [1, 1, 1]
