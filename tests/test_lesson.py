"""Section 4 of the /ui page, the CNN lesson, in Debian's Chromium against the real service.

The arithmetic itself (service/ui/lesson-math.js) is tests/test_lesson_math.py's, in Node on
every kernel, padding, stride and pooling case of tests/lesson_reference.py. Here is what only a
browser shows, on a served test image, checked against the same numpy functions: a typed kernel
and a clicked pixel give the worked sum written out; every padding x stride draws the output the
formula says, and pooling the pooled map; the textbook examples load; a colour upload shows its
three channels and 27 products; a learned filter gives the served network's own first convolution
(its Keras model from the BentoML store) and the chain z = W·a + b, a = g(z) ends at the served
explainer's feature map (ONNX Runtime on the same store's explainer.onnx); the arrow keys, a phone
screen, no console errors.

Past 300 lines: the lesson's browser tests share one page and one served model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from browser_fixtures import PHONE, clear_item, explained, open_page, png, post, save_screenshot
from lesson_reference import (
    LINE_RIGHT,
    PADDINGS,
    POOL_STRIDES,
    POOL_WINDOWS,
    STRIDES,
    TEXTBOOK_SMALL,
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
from PIL import Image

from pipeline.core.preprocess import image_to_colour_pixels

pytest_plugins = ["service_fixtures", "browser_fixtures"]
pytestmark = pytest.mark.service

# --- reading the page ---------------------------------------------------------------------------


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
        page.fill("#lesson-typed", kernel_text(typed))
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
    """Typed in, clicked, written out. Every typed kernel's sums at more pixels, and the
    parsing of what is typed, are tests/test_lesson_math.py's."""
    page, console, pixels = lesson
    sobel, _, halves = typed_kernels()  # halves: products with decimals, odd "same" padding
    for kernel in (sobel, halves):
        for padding in PADDINGS:
            choose(page, typed=kernel, padding=padding, stride=1, pool=0)
            expected = correlate(pixels, kernel, 1, padding)
            n = expected.shape[0]
            assert drawn_cells(page, "#lesson-out") == n
            before, _ = pads(28, kernel.shape[0], 1, padding)
            padded = np.pad(pixels.astype(float), before + 3)  # room for the window anywhere
            for r, c in [(0, 0), (n - 1, n - 1), (n // 2, n // 3)]:
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
    """Every padding x stride and pooling window x stride: the formula shown and the map drawn;
    the pooled cells a click picks. Every pooled value and where it came from, for each of these
    cases, is tests/test_lesson_math.py's."""
    page, console, pixels = lesson
    choose(page, kernel="line-right")  # a line detector, integers
    for padding in PADDINGS:
        for stride in STRIDES:
            choose(page, padding=padding, stride=stride, pool=0)
            n_out, text = formula(28, 3, stride, padding)
            expected = correlate(pixels, LINE_RIGHT, stride, padding)
            assert expected.shape == (n_out, n_out)
            assert page.inner_text("#lesson-formula") == text
            assert drawn_cells(page, "#lesson-out") == n_out
            assert f"Output drawn: {n_out}×{n_out}." in page.inner_text("#lesson-size")
            for window in POOL_WINDOWS:
                for pool_stride in POOL_STRIDES:
                    choose(page, pool=window, pool_stride=pool_stride)
                    m, pool_text = formula(n_out, window, pool_stride, "valid")
                    assert page.inner_text("#lesson-pool-formula") == pool_text
                    assert drawn_cells(page, "#lesson-pool-out") == m
    # Clicks on pooled cells: the network's 2x2 at stride 2, and overlapping 3x3 windows.
    choose(page, padding="same", stride=1)
    expected = correlate(pixels, LINE_RIGHT, 1, "same")
    for window, pool_stride in ((2, 2), (3, 1)):
        choose(page, pool=window, pool_stride=pool_stride)
        pooled = max_pool(expected, window, pool_stride)
        m = pooled.shape[0]
        for r, c in [(0, 0), (m - 1, m - 1), (m // 2, m - 1)]:
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
    # windows add up to 88 and 117 (numpy agrees: tests/test_lesson_math.py), and the page says so.
    values = page.inner_text("#lesson-values")
    assert values == f"Output values: {values_text(np.array(TEXTBOOK_STRIDED_OUTPUT))}"
    assert "83" in page.inner_text("#lesson-textbook-note")
    point(page, "#lesson-out", 0, 2)
    (line,) = worked_sum(page)
    assert line == "6×3 + 2×4 + 9×4 + 7×1 + 4×0 + 3×2 + 8×(−1) + 9×0 + 7×3 = 88"

    page.click("#lesson-load-small")
    for padding, size in (("valid", 2), ("same", 4)):
        choose(page, padding=padding)
        assert drawn_cells(page, "#lesson-out") == size
        out = correlate(*TEXTBOOK_SMALL, 1, padding)
        assert page.inner_text("#lesson-values") == f"Output values: {values_text(out)}"
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
    for r, c in [(14, 14), (0, 0)]:  # more pixels: tests/test_lesson_math.py's colour case
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
