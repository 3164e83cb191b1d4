"""Section 4 of the /ui page, the CNN lesson, in Debian's Chromium against the real service.

Every number the page writes is checked against numpy's own arithmetic on the same pixels: the
worked sum of an output pixel, output and pooled sizes, pooled maxima, a colour image's 27
products; a learned filter against the served network's own first convolution (its Keras model
from the BentoML store) and the chain z = W·a + b, a = g(z) against the served explainer's
feature map (ONNX Runtime on the same store's explainer.onnx).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from browser_fixtures import PHONE, clear_item, explained, open_page, png, post, save_screenshot
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from pipeline.core.architecture import total_padding
from pipeline.core.preprocess import image_to_colour_pixels

pytest_plugins = ["service_fixtures", "browser_fixtures"]
pytestmark = pytest.mark.service

TOP_SOBEL = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]


# --- numpy's side -----------------------------------------------------------------------------


def pads(n: int, f: int, s: int, padding: str) -> tuple[int, int]:
    """Zero rows before and after, as Keras pads (the product's layer table uses the same rule)."""
    total = total_padding(n, f, s, padding)
    return total // 2, total - total // 2


def correlate(x: np.ndarray, kernel: np.ndarray, s: int, padding: str) -> np.ndarray:
    """Cross-correlation of (n, n) or (n, n, C) with (f, f) or (f, f, C): numpy's reference."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    if x.ndim == 2:
        x, kernel = x[..., None], kernel[..., None]
    before, after = pads(x.shape[0], kernel.shape[0], s, padding)
    padded = np.pad(x, ((before, after), (before, after), (0, 0)))
    windows = sliding_window_view(padded, kernel.shape[:2], axis=(0, 1))[::s, ::s]
    return np.einsum("rcCij,ijC->rc", windows, kernel)


def max_pool(x: np.ndarray, f: int, s: int) -> np.ndarray:
    return sliding_window_view(x, (f, f))[::s, ::s].max(axis=(2, 3))


def formula(n: int, f: int, s: int, padding: str) -> tuple[int, str]:
    p = total_padding(n, f, s, padding) / 2
    out = int((n + 2 * p - f) // s) + 1
    return out, f"floor(({n} + 2*{p:g} - {f}) / {s}) + 1 = {out}"


def number(text: str) -> float:
    return float(text.strip().strip("()").replace("\u2212", "-"))


def parse_sum(line: str) -> tuple[list[tuple[float, float]], float]:
    """'180×1 + 98×(−2) = 295' (optionally 'R: ...') -> ([(180, 1), (98, -2)], 295)."""
    line = re.sub(r"^[RGB]: ", "", line)
    products, total = line.rsplit(" = ", 1)
    terms = [tuple(number(v) for v in term.split("×")) for term in products.split(" + ")]
    return terms, number(total)


# --- driving the page -------------------------------------------------------------------------


def choose(
    page, *, kernel=None, typed=None, padding=None, stride=None, pool=None, pool_stride=None
):
    if typed is not None:
        page.select_option("#lesson-kernel", "typed")
        page.fill("#lesson-typed", "\n".join(" ".join(str(w) for w in row) for row in typed))
    elif kernel is not None:
        page.select_option("#lesson-kernel", kernel)
    if padding is not None:
        page.check(f'input[name="lesson-padding"][value="{padding}"]')
    if stride is not None:
        page.check(f'input[name="lesson-stride"][value="{stride}"]')
    if pool is not None:
        page.select_option("#lesson-pool", str(pool))
    if pool_stride is not None:
        page.select_option("#lesson-pool-stride", str(pool_stride))


def drawn_cells(page, canvas: str) -> int:
    """How many cells a lesson canvas draws per side (its pixel width is a whole number of them)."""
    cells, width = page.eval_on_selector(canvas, "c => [Number(c.dataset.cells), c.width]")
    assert width % cells == 0, (canvas, cells, width)
    return cells


def point(page, canvas: str, r: int, c: int) -> None:
    """Click the centre of cell (r, c) of a lesson canvas, as a person would."""
    n = drawn_cells(page, canvas)
    page.locator(canvas).scroll_into_view_if_needed()
    box = page.locator(canvas).bounding_box()
    page.mouse.click(
        box["x"] + (c + 0.5) * box["width"] / n, box["y"] + (r + 0.5) * box["height"] / n
    )
    target, text = (
        ("lesson-pixel", f"(row {r}, column {c},")
        if canvas == "#lesson-out"
        else ("lesson-pool-max", f"Pooled cell (row {r}, column {c}):")
    )
    page.wait_for_function(
        "([id, text]) => document.getElementById(id).textContent.includes(text)", arg=[target, text]
    )


def worked_sum(page) -> list[str]:
    return page.eval_on_selector_all("#lesson-sum code", "codes => codes.map(c => c.textContent)")


def shown_value(page) -> float:
    text = page.inner_text("#lesson-shown")
    return number(re.search(r"shows (\S+) there", text).group(1))


@pytest.fixture
def lesson(browser, service_url, test_images, evaluated, tmp_path) -> Iterator[tuple]:
    """The page with a clear test image explained: (page, console, the 28x28 pixels)."""
    page, console = open_page(browser, service_url, viewport={"width": 1200, "height": 1000})
    x, _ = test_images
    pixels = x[clear_item(evaluated)]
    image = tmp_path / "item.png"
    image.write_bytes(png(pixels))
    page.set_input_files("#file", image)
    explained(page)
    page.wait_for_function("document.getElementById('lesson-input').value === 'gray'")
    yield page, console, pixels
    page.context.close()


# --- the tests --------------------------------------------------------------------------------


def test_worked_sums_equal_numpy_for_a_typed_kernel(lesson):
    page, console, pixels = lesson
    rng = np.random.default_rng(7)
    kernels = [
        np.array(TOP_SOBEL),  # the example kernel, as a person would type it
        rng.integers(-4, 5, (5, 5)),
        rng.integers(-9, 10, (4, 4)) / 2,  # halves: products with decimals
    ]
    for kernel in kernels:
        for padding in ("valid", "same"):
            choose(page, typed=kernel.tolist(), padding=padding, stride=1, pool=0)
            expected = correlate(pixels, kernel, 1, padding)
            n = expected.shape[0]
            assert drawn_cells(page, "#lesson-out") == n
            before, _ = pads(28, kernel.shape[0], 1, padding)
            padded = np.pad(pixels.astype(float), before + 3)  # room for the window anywhere
            for r, c in [(0, 0), (n - 1, n - 1), (0, n - 1), (n // 2, n // 3), (7, 11)]:
                point(page, "#lesson-out", r, c)
                (line,) = worked_sum(page)
                terms, total = parse_sum(line)
                f = kernel.shape[0]
                window = padded[r + 3 : r + 3 + f, c + 3 : c + 3 + f]
                assert [x for x, _ in terms] == window.ravel().tolist(), (kernel, padding, r, c)
                assert [w for _, w in terms] == kernel.ravel().tolist()
                assert total == pytest.approx(expected[r, c], abs=1e-9)
                assert shown_value(page) == pytest.approx(expected[r, c], abs=1e-9)
    assert console.errors == []


def test_sizes_follow_the_formula_and_pooling_equals_numpy(lesson):
    page, console, pixels = lesson
    kernel = np.array([[0, 1, -1], [0, 1, -1], [0, 1, -1]])  # a line detector, integers
    choose(page, kernel="line-right")
    for padding in ("valid", "same"):
        for stride in (1, 2, 3):
            choose(page, padding=padding, stride=stride, pool=0)
            n_out, text = formula(28, 3, stride, padding)
            expected = correlate(pixels, kernel, stride, padding)
            assert expected.shape == (n_out, n_out)
            assert page.inner_text("#lesson-formula") == text
            assert drawn_cells(page, "#lesson-out") == n_out
            assert f"Output drawn: {n_out}×{n_out}." in page.inner_text("#lesson-size")
            for window in (2, 3):
                for pool_stride in (1, 2, 3):
                    choose(page, pool=window, pool_stride=pool_stride)
                    pooled = max_pool(expected, window, pool_stride)
                    m, pool_text = formula(n_out, window, pool_stride, "valid")
                    assert pooled.shape == (m, m)
                    assert page.inner_text("#lesson-pool-formula") == pool_text
                    assert drawn_cells(page, "#lesson-pool-out") == m
                    for r, c in {(0, 0), (m - 1, m - 1), (m // 2, m - 1)}:
                        point(page, "#lesson-pool-out", r, c)
                        text = page.inner_text("#lesson-pool-max")
                        assert text.startswith(f"Pooled cell (row {r}, column {c}):"), text
                        values, best = re.search(r"max\((.*)\) = (\S+), from", text).groups()
                        cell = expected[r * pool_stride :, c * pool_stride :][:window, :window]
                        assert [number(v) for v in values.split(", ")] == cell.ravel().tolist()
                        assert number(best) == pooled[r, c]
    assert console.errors == []


def test_textbook_examples(desktop):
    page, console = desktop  # no image needed: the examples are the page's own
    page.click("#lesson-load-strided")
    assert page.inner_text("#lesson-formula") == "floor((7 + 2*0 - 3) / 2) + 1 = 3"
    # The course slide prints 83 and 127 in the right-hand column; the nine products of those
    # windows add up to 88 and 117 (numpy agrees), and the page says so.
    values = page.inner_text("#lesson-values")
    assert values == "Output values: [91 100 88; 69 91 117; 44 72 74]"
    x = np.array(
        [[2, 3, 7, 4, 6, 2, 9], [6, 6, 9, 8, 7, 4, 3], [3, 4, 8, 3, 8, 9, 7], [7, 8, 3, 6, 6, 3, 4],
         [4, 2, 1, 8, 3, 4, 6], [3, 2, 4, 1, 9, 8, 3], [0, 1, 3, 9, 2, 1, 4]]
    )  # fmt: skip
    k = np.array([[3, 4, 4], [1, 0, 2], [-1, 0, 3]])
    assert correlate(x, k, 2, "valid").tolist() == [[91, 100, 88], [69, 91, 117], [44, 72, 74]]
    assert "83" in page.inner_text("#lesson-textbook-note")
    point(page, "#lesson-out", 0, 2)
    (line,) = worked_sum(page)
    assert line == "6×3 + 2×4 + 9×4 + 7×1 + 4×0 + 3×2 + 8×(−1) + 9×0 + 7×3 = 88"

    page.click("#lesson-load-small")
    for padding, size in (("valid", 2), ("same", 4)):
        choose(page, padding=padding)
        assert drawn_cells(page, "#lesson-out") == size
        out = correlate(
            np.array([[3, 0, 1, 2], [1, 5, 8, 9], [2, 7, 2, 5], [0, 1, 3, 1]]),
            np.array([[1, 0, -1]] * 3),
            1,
            padding,
        )
        rows = "; ".join(" ".join(f"{v:g}".replace("-", "\u2212") for v in row) for row in out)
        assert page.inner_text("#lesson-values") == f"Output values: [{rows}]"
    assert console.errors == []


def test_learned_filter_is_the_networks_first_convolution(
    lesson, service_url, bentoml_home, tmp_path
):
    import onnxruntime

    import pipeline.training.quiet_tensorflow  # noqa: F401

    # isort: split
    import keras

    from pipeline.training.model import network

    page, console, pixels = lesson
    name, version = (
        requests.get(f"{service_url}/metadata", timeout=10).json()["bento_model"].split(":")
    )
    store = bentoml_home / "models" / name / version
    net = network(keras.saving.load_model(store / "model.keras", compile=False))
    conv = keras.Model(net.inputs, net.get_layer("conv_0").output)  # before batch normalisation
    raw = keras.ops.convert_to_numpy(conv([pixels[None]]))[0]
    session = onnxruntime.InferenceSession(str(store / "explainer.onnx"))
    feature_maps = session.run(None, {session.get_inputs()[0].name: pixels[None]})[0][0]

    choose(page, padding="same", stride=1, pool=0)
    count = raw.shape[-1]
    for k in sorted({0, count // 2, count - 1}):
        choose(page, kernel=f"learned:{k}")
        for r, c in [(14, 14), (0, 27), (9, 20)]:
            point(page, "#lesson-out", r, c)
            (line,) = worked_sum(page)
            terms, total = parse_sum(line)
            assert len(terms) == 9
            assert [x for x, _ in terms][4] == pytest.approx(pixels[r, c] / 255, abs=5e-5)
            assert total == pytest.approx(raw[r, c, k], abs=1e-4)  # the network's own conv
            steps = page.eval_on_selector_all("#lesson-chain li", "l => l.map(i => i.textContent)")
            assert f"W·a = {line.rsplit(' = ', 1)[1]}" in steps[0]
            assert "batch normalisation" in steps[1] and "ReLU" in steps[2]
            a = number(re.search(r"a = (\S+)\.$", steps[2]).group(1))
            assert a == pytest.approx(feature_maps[r, c, k], abs=1e-4)  # the served feature map
            drawn = re.search(r"gray level (\d+) of 255: .* = (\S+), which is a", steps[3])
            assert drawn, steps[3]
            low, high = feature_maps[..., k].min(), feature_maps[..., k].max()
            assert abs(number(drawn.group(2)) - a) <= (high - low) / 510 + 1e-4
        assert "they agree" in page.inner_text("#lesson-agree")
    choose(page, stride=2)  # not how the network slides: the page says so
    assert "padding same and stride 1" in page.inner_text("#lesson-chain")
    assert console.errors == []


def colour_item(size: tuple[int, int] = (40, 56)) -> Image.Image:
    """A colour picture whose channels differ: a red gradient, green stripes, a blue disc."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack(
        [
            (255 * xx / (w - 1)),
            np.where((yy // 5) % 2 == 0, 220, 20),
            np.where((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (h / 3) ** 2, 250, 10),
        ],
        axis=-1,
    )
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def test_colour_upload_shows_three_channels_and_27_products(desktop, service_url, tmp_path):
    page, console = desktop
    path = tmp_path / "colour.png"
    colour_item().save(path)
    page.set_input_files("#file", path)
    explained(page)
    answer = post(service_url, "/explain", path.read_bytes()).json()
    rgb = np.array(answer["colour"])
    assert rgb.shape == (28, 28, 3)
    assert np.array_equal(rgb, image_to_colour_pixels(Image.open(path), answer["inverted"]))

    page.select_option("#lesson-input", "colour")
    choose(page, kernel="sobel-top", padding="same", stride=1, pool=0)
    page.select_option("#lesson-mix-g", "-1")  # per channel: R the kernel, G negated, B zeros
    page.select_option("#lesson-mix-b", "0")
    for name in "rgb":
        assert page.is_visible(f"#lesson-channel-{name}")
        assert drawn_cells(page, f"#lesson-channel-{name}") == 28 + 2  # the zero frame too
    kernel = np.stack([np.array(TOP_SOBEL) * m for m in (1, -1, 0)], axis=-1)
    assert page.eval_on_selector_all("#lesson-kernel-tables td", "t => t.length") == 27
    expected = correlate(rgb, kernel, 1, "same")
    for r, c in [(14, 14), (0, 0), (20, 5)]:
        point(page, "#lesson-out", r, c)
        *channels, total_line = worked_sum(page)
        assert len(channels) == 3
        terms = [parse_sum(line)[0] for line in channels]
        assert sum(len(t) for t in terms) == 27
        product_sum = sum(x * w for channel in terms for x, w in channel)
        padded = np.pad(rgb.astype(float), ((1, 1), (1, 1), (0, 0)))
        for ch, channel in enumerate(terms):
            assert [x for x, _ in channel] == padded[r : r + 3, c : c + 3, ch].ravel().tolist()
        assert product_sum == pytest.approx(expected[r, c], abs=1e-9)
        assert parse_sum(total_line)[1] == pytest.approx(expected[r, c], abs=1e-9)
    stacked = page.eval_on_selector_all("#lesson-stack-maps canvas", "c => c.length")
    assert stacked == 4  # the four line detectors, ticked by default
    assert "28×28×4" in page.inner_text("#lesson-stack-caption")
    assert console.errors == []


def test_keyboard_and_phone(browser, service_url, test_images, tmp_path):
    page, console = open_page(
        browser, service_url, viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2
    )
    try:
        page.click("#lesson-load-strided")
        page.focus("#lesson-out")
        start = re.search(r"\(row (\d+), column (\d+)", page.inner_text("#lesson-pixel")).groups()
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowLeft")
        r, c = min(int(start[0]) + 1, 2), max(int(start[1]) - 1, 0)  # the output is 3x3
        assert f"(row {r}, column {c}," in page.inner_text("#lesson-pixel")
        page.focus("#lesson-out")
        image = tmp_path / "item.png"
        image.write_bytes(png(test_images[0][3]))
        page.set_input_files("#file", image)
        explained(page)
        choose(page, kernel="learned:0", padding="same", pool=2)
        page.wait_for_selector("#lesson-network:not([hidden])")
        width = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert width[0] <= width[1], f"horizontal overflow on a {PHONE['width']}px screen: {width}"
        assert console.errors == []
    finally:
        page.context.close()


def test_screenshot_of_the_lesson(lesson, tmp_path):
    """docs/ui.md's picture of section 4: the person's image, a kernel, a worked pixel, pooling."""
    page, console, pixels = lesson
    choose(page, kernel="sobel-top", padding="same", stride=1, pool=2, pool_stride=2)
    inner = np.abs(correlate(pixels, np.array(TOP_SOBEL), 1, "same"))[6:22, 6:22]
    r, c = np.unravel_index(inner.argmax(), inner.shape)  # a strong edge, away from the border
    point(page, "#lesson-out", int(r) + 6, int(c) + 6)
    path = save_screenshot(page, tmp_path, "ui-lesson.png", publish=True, selector="#lesson")
    shot = Image.open(path)
    assert shot.width >= 600 and shot.height >= 600, shot.size  # the section, not a sliver
    assert console.errors == []
