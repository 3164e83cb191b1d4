"""service/ui/lesson-math.js, the /ui lesson's arithmetic, in Node against numpy.

numpy's answers (tests/lesson_reference.py: the functions, kernels, paddings, strides and pooling
windows tests/test_lesson.py checks the page against in Chromium) are written to a JSON file, and
tests/js/lesson-math.test.mjs runs on them in Node's own test runner (`node --test`: Debian's
`nodejs`, no npm package). The run must pass and run exactly one test per case plus one, so a
runner that finds no test, or skips some, cannot pass. The browser tests keep what only a browser
shows: the controls, the clicks and keys, the drawing, the round trip to the served model.

Past 300 lines: numpy's reference case for every function of lesson-math.js, beside the Node run that checks them.
"""

from __future__ import annotations

import ast
import base64
import io
import itertools
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from lesson_reference import (
    LINE_RIGHT,
    PADDINGS,
    POOL_STRIDES,
    POOL_WINDOWS,
    STRIDES,
    TEXTBOOK_SMALL,
    TEXTBOOK_STRIDED,
    TEXTBOOK_STRIDED_OUTPUT,
    TOP_SOBEL,
    correlate,
    formula,
    kernel_text,
    max_pool,
    pads,
    typed_kernels,
    values_text,
)
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from service.explain import layer_activations, scale_maps

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
UI = REPO / "service" / "ui"
NODE_TESTS = REPO / "tests" / "js" / "lesson-math.test.mjs"
MINUS = "\u2212"


# --- the cases: numpy's answers -----------------------------------------------------------------


def geometry_cases() -> list[dict]:
    """Padding and output size for inputs 28, 7 and 4 wide, kernels 1 to 7 wide (some do not
    fit), every stride and padding."""
    cases = []
    for n, f, s, padding in itertools.product((28, 7, 4), (1, 3, 4, 5, 7), STRIDES, PADDINGS):
        before, after = pads(n, f, s, padding)
        n_out, text = formula(n, f, s, padding)
        if n_out >= 1:  # the formula is the size numpy's correlation has
            assert correlate(np.zeros((n, n)), np.zeros((f, f)), s, padding).shape == (n_out,) * 2
        if padding == "same":
            assert n_out == math.ceil(n / s)
        cases.append(
            {
                "name": f"n={n} f={f} s={s} {padding}",
                "n": n,
                "f": f,
                "s": s,
                "padding": padding,
                "p": (before + after) / 2,
                "before": before,
                "after": after,
                "nOut": n_out,
                "formula": text,
            }
        )
    return cases


def conv_case(name, x, rows, *, factors=(1,), unit=1, stride=1, padding="valid") -> dict:
    """One conv layer as the page computes it: input x (n, n) or (n, n, C) times `unit`, the
    kernel `rows` times each channel's factor; the output, and the sums at corners and inside."""
    x = np.asarray(x)
    x = x[..., None] if x.ndim == 2 else x
    n, depth = x.shape[0], x.shape[2]
    scaled = x.astype(np.float64) * unit
    rows = np.asarray(rows, np.float64)
    f = rows.shape[0]
    filt = np.stack([rows * m + 0.0 for m in factors])  # (C, f, f)
    out = correlate(scaled, np.moveaxis(filt, 0, -1), stride, padding)
    n_out = out.shape[0]
    before, after = pads(n, f, stride, padding)
    padded = np.pad(scaled, ((before, after), (before, after), (0, 0)))
    # tests/test_lesson.py's pixels: three corners, two inside
    points = [(0, 0), (n_out - 1, n_out - 1), (0, n_out - 1), (n_out // 2, n_out // 3), (7, 11)]
    pixels = []
    for r, c in sorted({(r, c) for r, c in points if r < n_out and c < n_out}):
        window = padded[r * stride : r * stride + f, c * stride : c * stride + f]
        terms = [
            [ch, r * stride + i - before, c * stride + j - before, window[i, j, ch], filt[ch, i, j]]
            for ch in range(depth)
            for i in range(f)
            for j in range(f)
        ]
        pixels.append({"r": r, "c": c, "terms": terms, "value": out[r, c]})
    strongest = int(np.argmax(np.abs(out).ravel()))  # the first of the largest magnitudes
    return {
        "name": name,
        "n": n,
        "channels": [x[..., ch].ravel().tolist() for ch in range(depth)],
        "rows": rows.tolist(),
        "factors": list(factors),
        "unit": unit,
        "stride": stride,
        "padding": padding,
        "nOut": n_out,
        "filter": filt.tolist(),
        "out": out.ravel().tolist(),
        "strongest": {"r": strongest // n_out, "c": strongest % n_out},
        "pixels": pixels,
    }


def images() -> tuple[np.ndarray, np.ndarray]:
    """A gray and a colour 28x28 input (the browser tests use a served test image and upload)."""
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, (28, 28)), rng.integers(0, 256, (28, 28, 3))


def conv_cases() -> list[dict]:
    gray, colour = images()
    cases = []
    for kernel, padding in itertools.product(typed_kernels(), PADDINGS):
        f = kernel.shape[0]
        cases.append(conv_case(f"typed {f}x{f} {padding}", gray, kernel, padding=padding))
    for padding, stride in itertools.product(PADDINGS, STRIDES):
        name = f"line-right {padding} stride {stride}"
        cases.append(conv_case(name, gray, LINE_RIGHT, stride=stride, padding=padding))
    # A colour filter: the top Sobel on R, negated on G, zeros on B (27 products a pixel).
    cases.append(conv_case("colour", colour, TOP_SOBEL, factors=(1, -1, 0), padding="same"))
    # A learned filter: floats, on pixels / 255 (the network's units).
    learned = np.random.default_rng(5).normal(0, 0.3, (3, 3))
    cases.append(conv_case("learned", gray, learned, unit=1 / 255, padding="same"))
    for padding in PADDINGS:
        cases.append(conv_case(f"textbook 4x4 {padding}", *TEXTBOOK_SMALL, padding=padding))
    cases.append(conv_case("textbook 7x7 stride 2", *TEXTBOOK_STRIDED, stride=2))
    return cases


def pool_case(name: str, out: np.ndarray, f: int, s: int) -> dict:
    m = out.shape[0]
    n, text = formula(m, f, s, "valid")
    values, where = np.zeros((0,)), np.zeros((0,), int)
    if n >= 1:
        pooled = max_pool(out, f, s)
        assert pooled.shape == (n, n)
        windows = sliding_window_view(out, (f, f))[::s, ::s].reshape(n, n, f * f)
        i, j = np.divmod(windows.argmax(axis=-1), f)  # the first maximum in reading order
        rr, cc = np.mgrid[0:n, 0:n]
        values, where = pooled.ravel(), ((rr * s + i) * m + cc * s + j).ravel()
    return {
        "name": name,
        "map": out.ravel().tolist(),
        "m": m,
        "f": f,
        "s": s,
        "n": n,
        "values": values.tolist(),
        "from": where.tolist(),
        "formula": text,
    }


def pool_cases() -> list[dict]:
    gray, _ = images()
    cases = []
    for padding, stride in itertools.product(PADDINGS, STRIDES):
        out = correlate(gray, LINE_RIGHT, stride, padding)
        for f, s in itertools.product(POOL_WINDOWS, POOL_STRIDES):
            name = f"line-right {padding} stride {stride}, pool {f}x{f} stride {s}"
            cases.append(pool_case(name, out, f, s))
    strided = correlate(*TEXTBOOK_STRIDED, 2, "valid")
    cases.append(pool_case("textbook 7x7 output, pool 3x3", strided, 3, 1))
    small = correlate(*TEXTBOOK_SMALL, 1, "valid")  # 2x2: no 3x3 window fits
    cases += [pool_case(f"2x2 map, pool 3x3 stride {s}: none", small, 3, s) for s in (1, 2)]
    return cases


def parse_cases() -> list[dict]:
    cases = [
        {"name": f"typed {len(k)}x{len(k)}", "text": kernel_text(k), "kernel": k.tolist()}
        for k in typed_kernels()
    ]
    kernels = {
        "brackets and semicolons": ("[1, 0, -1; 1, 0, -1; 1, 0, -1]", [[1, 0, -1]] * 3),
        "blank lines": ("1 2\n\n3 4\n", [[1, 2], [3, 4]]),
        "real minus signs": (f"{MINUS}1 2; 3 {MINUS}4", [[-1, 2], [3, -4]]),
        "decimals, commas, spaces": ("0.5,1e-1\n-2   3", [[0.5, 0.1], [-2, 3]]),
        "1x1": ("7", [[7]]),
    }
    cases += [{"name": k, "text": t, "kernel": v} for k, (t, v) in kernels.items()]
    errors = {
        "empty": ("", "a kernel has 1 to 7 rows; this has 0"),
        "only separators": (" \n ; \n", "a kernel has 1 to 7 rows; this has 0"),
        "8 rows": ("\n".join(["1 " * 8] * 8), "a kernel has 1 to 7 rows; this has 8"),
        "short row": ("1 2\n3", "row 2 has 1 numbers: a 2-row kernel is 2×2"),
        "long row": ("1 2 3\n4 5 6\n7 8 9 1", "row 3 has 4 numbers: a 3-row kernel is 3×3"),
        "a word": ("1 x\n2 3", '"x" in row 1 is not a number'),
        "infinity": ("1 2\n3 Infinity", '"Infinity" in row 2 is not a number'),
    }
    cases += [{"name": k, "text": t, "error": e} for k, (t, e) in errors.items()]
    return cases


def format_cases() -> list[dict]:
    fmt = [
        (295, 4, "295"),
        (-2, 4, f"{MINUS}2"),
        (0.0625, 4, "0.0625"),
        (1 / 3, 4, "0.3333"),
        (1 / 3, 5, "0.33333"),
        (2.00004, 4, "2"),
        (-0.00004, 4, "0"),  # rounds to 0: no minus sign
        (-37 / 255, 5, f"{MINUS}0.1451"),
        (1234.56789, 2, "1234.57"),
    ]
    cases = [
        {"name": f"fmt({v!r}, {d})", "fn": "fmt", "args": [v, d], "text": t} for v, d, t in fmt
    ]
    factor = [(-2.5, 4, f"({MINUS}2.5)"), (3, 4, "3"), (0, 4, "0")]
    cases += [
        {"name": f"factor({v!r}, {d})", "fn": "factor", "args": [v, d], "text": t}
        for v, d, t in factor
    ]
    strided = correlate(*TEXTBOOK_STRIDED, 2, "valid")
    matrices = [("textbook 7x7", strided, 4)]
    matrices += [(f"textbook 4x4 {p}", correlate(*TEXTBOOK_SMALL, 1, p), 4) for p in PADDINGS]
    cases += [
        {
            "name": f"matrixText {name}",
            "fn": "matrixText",
            "args": [out.ravel().tolist(), len(out), d],
            "text": values_text(out),
        }
        for name, out, d in matrices
    ]
    cases.append(
        {
            "name": "matrixText decimals",
            "fn": "matrixText",
            "args": [[0.5, -1.25, 2 / 3, 0], 2, 4],
            "text": f"[0.5 {MINUS}1.25; 0.6667 0]",
        }
    )
    return cases


def chain_activations() -> tuple[str, ...]:
    """The activations the explainer's chain may name (pipeline/promotion/export.py's
    CHAIN_ACTIVATIONS), read from its source: importing it would import TensorFlow."""
    tree = ast.parse((REPO / "pipeline" / "promotion" / "export.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and getattr(node.targets[0], "id", "") == "CHAIN_ACTIVATIONS"
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("pipeline/promotion/export.py defines no CHAIN_ACTIVATIONS")


ACTIVATION = {
    "linear": lambda z: z,
    "relu": lambda z: max(0.0, z),
    "elu": lambda z: z if z > 0 else math.expm1(z),
    "gelu": lambda z: 0.5 * z * (1 + math.erf(z / math.sqrt(2))),  # Keras's, exact (erf)
    "swish": lambda z: z / (1 + math.exp(-z)),
    "silu": lambda z: z / (1 + math.exp(-z)),
    "tanh": math.tanh,
}


def activation_cases() -> list[dict]:
    z = [-6.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 0.3, 1.0, 2.5, 6.0]
    names = chain_activations()
    assert set(names) <= set(ACTIVATION), "a chain activation this test has no reference for"
    return [{"name": name, "z": z, "a": [ACTIVATION[name](v) for v in z]} for name in names]


def erf_cases() -> list[dict]:
    x = np.linspace(-4, 4, 161).tolist()
    return [{"name": "-4 to 4", "x": x, "y": [math.erf(v) for v in x]}]


def picture_case(name: str, maps: np.ndarray) -> dict:
    """A layer's feature maps drawn by the service (service/explain.py), as the page receives
    them: the picture's RGBA pixels (what a canvas gives back), its grid and per-channel range."""
    n, _, channels = maps.shape
    row = {"layer": "conv_0", "output": "conv_0", "kind": "conv", "n_in": n, "f": 3, "p": 1}
    layer = layer_activations({**row, "s": 1, "n_out": n}, maps).model_dump()
    url = layer["maps"].pop("png")
    picture = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA")
    levels, _, _ = scale_maps(maps)
    return {
        "name": name,
        "layer": layer,
        "channels": channels,
        "data": np.asarray(picture).ravel().tolist(),
        "width": picture.width,
        # channel by channel, row by row: the level the service drew and the activation
        "levels": np.moveaxis(levels, -1, 0).ravel().tolist(),
        "activations": np.moveaxis(maps, -1, 0).astype(np.float64).ravel().tolist(),
        "slack": 1e-5,  # low and high are sent rounded to 5 decimals
    }


def picture_cases() -> list[dict]:
    rng = np.random.default_rng(3)
    first = np.maximum(rng.normal(0, 1, (28, 28, 16)), 0).astype(np.float32)  # after ReLU
    first[..., 5] = 0  # a channel that did not fire
    later = rng.normal(0, 2, (7, 7, 6)).astype(np.float32)
    return [picture_case("28x28, 16 channels", first), picture_case("7x7, 6 channels", later)]


def lesson_cases() -> dict[str, list[dict]]:
    return {
        "geometry": geometry_cases(),
        "conv": conv_cases(),
        "pool": pool_cases(),
        "parse": parse_cases(),
        "format": format_cases(),
        "activation": activation_cases(),
        "erf": erf_cases(),
        "picture": picture_cases(),
    }


# --- the tests ------------------------------------------------------------------------------------


def node() -> str:
    found = shutil.which("node") or shutil.which("nodejs")
    if found is None:
        pytest.fail("no Node.js: run scripts/system-deps.sh test (installs Debian's nodejs)")
    return found


def test_lesson_maths_in_node_equals_numpy(tmp_path):
    cases = lesson_cases()
    path = tmp_path / "lesson-cases.json"
    path.write_text(json.dumps(cases, default=float))
    run = subprocess.run(
        [node(), "--test", "--test-reporter=tap", str(NODE_TESTS)],
        cwd=REPO,
        env={**os.environ, "LESSON_MATH_CASES": str(path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run.stdout + run.stderr
    failed = "\n".join(line for line in run.stdout.splitlines() if line.startswith("not ok"))
    assert run.returncode == 0, f"node --test failed:\n{failed}\n{output[-6000:]}"
    counts = {k: int(v) for k, v in re.findall(r"^# (\w+) (\d+)$", run.stdout, re.MULTILINE)}
    expected = 1 + sum(len(group) for group in cases.values())
    assert {k: counts.get(k) for k in ("tests", "pass", "fail", "skipped", "todo")} == {
        "tests": expected,
        "pass": expected,
        "fail": 0,
        "skipped": 0,
        "todo": 0,
    }, output[-3000:]


def test_the_textbook_numbers_are_numpys():
    """The page's textbook claim: the 7x7 example's right-hand cells are 88 and 117, not the 83
    and 127 some copies of the slide print (tests/test_lesson.py reads the page's own)."""
    out = correlate(*TEXTBOOK_STRIDED, 2, "valid")
    assert out.tolist() == TEXTBOOK_STRIDED_OUTPUT
    assert (out[0, 2], out[1, 2]) == (88, 117)


class ModuleScripts(HTMLParser):
    """The <script> elements of a page: (type, src)."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[str | None, str | None]] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "script":
            found = dict(attrs)
            self.scripts.append((found.get("type"), found.get("src")))


# A static import or re-export: `import {a, b} from "./x.js"`, `import "./x.js"`, `export ... from`.
IMPORT = re.compile(r"""^(?:import|export)\s+(?:[\w$*{}\s,]+?\s+from\s+)?["']([^"']+)["']""", re.M)


def test_the_page_is_es_modules_all_in_service_ui_and_packed():
    """index.html loads ES modules only, from files of service/ui; what they import is there too
    (relative, no other host), and bentofile.yaml's include packs each of them into the Bento."""
    parser = ModuleScripts()
    parser.feed((UI / "index.html").read_text())
    assert parser.scripts, "index.html loads no script"
    assert all(kind == "module" and src for kind, src in parser.scripts), parser.scripts
    todo, seen = [src for _, src in parser.scripts], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = UI / name
        assert path.is_file() and path.parent == UI, f"{name}: not a file of service/ui"
        for target in IMPORT.findall(path.read_text()):
            assert target.startswith("./"), f"{name} imports {target}: only ./ files of service/ui"
            todo.append(target.removeprefix("./"))
    assert {"app.js", "lesson.js", "lesson-math.js", "dom.js"} <= seen
    assert seen == {p.name for p in UI.glob("*.js")}, "a .js file of service/ui no page loads"
    include = yaml.safe_load((REPO / "bentofile.yaml").read_text())["include"]
    packed = {
        p.name
        for pattern in include
        if pattern.startswith("service/ui")
        for p in REPO.glob(pattern)
    }
    assert seen | {"index.html", "style.css"} <= packed
