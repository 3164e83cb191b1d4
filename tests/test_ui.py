"""The /ui page in a real browser, and the POST /explain and GET /samples API behind it.

The service is the session's real `bentoml serve` of the pipeline workspace's champion, the
browser Debian's Chromium (tests/browser_fixtures.py). Every page must load without console
errors or uncaught exceptions, and do everything it does without a Content-Security-Policy
violation (service/security.py's policy; every `securitypolicyviolation` event is collected).
Section 4 of the page, the lesson, is tests/test_lesson.py's.

Past 300 lines: the page's browser tests share one Chromium and one served model.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from browser_fixtures import (
    DESKTOP,
    PHONE,
    TIMEOUT_MS,
    Console,
    clear_item,
    decode,
    explained,
    images_loaded,
    png,
    post,
    save_screenshot,
)

from pipeline.core.architecture import layer_table
from pipeline.core.fashion_mnist import CLASS_NAMES
from pipeline.core.params import load_params
from service.security import OPENAPI_POLICY, PAGE_POLICY
from service.ui import UI_DIR

pytest_plugins = ["service_fixtures", "browser_fixtures"]  # service_url, ...; browser
pytestmark = pytest.mark.service

# Runs in every document before its own scripts: each CSP violation is kept for the test to read.
WATCH_CSP = """
document.addEventListener("securitypolicyviolation", (e) => {
  (window.__cspViolations ||= []).push({
    directive: e.effectiveDirective, blocked: e.blockedURI, source: e.sourceFile, line: e.lineNumber,
  });
});
"""


def open_watched(browser, url: str | None, **context) -> tuple:
    """A page whose CSP violations are collected (`violations(page)`), and its console; at `url`
    unless None (the test then registers its listeners and goes there itself)."""
    ctx = browser.new_context(**context)
    ctx.add_init_script(WATCH_CSP)
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console = Console(page)
    if url is not None:
        page.goto(url)
    return page, console


def violations(page) -> list[dict]:
    return page.evaluate("window.__cspViolations || []")


@pytest.fixture
def desktop(browser, service_url) -> Iterator[tuple]:
    """The page /ui on a desktop screen, its CSP violations collected (browser_fixtures' own
    `desktop`, plus the watcher)."""
    page, console = open_watched(browser, f"{service_url}/ui/", viewport=DESKTOP)
    yield page, console
    page.context.close()


# --- the API ---------------------------------------------------------------------------------


def test_explain_answers_like_classify_and_shows_every_layer(
    service_url, pipeline_run, test_images, evaluated
):
    x, _ = test_images
    i = clear_item(evaluated)
    resp = post(service_url, "/explain", png(x[i]))
    assert resp.status_code == 200, resp.text
    assert len(resp.content) < 250_000  # compact: PNG grids, not float arrays
    body = resp.json()
    classified = post(service_url, "/classify", png(x[i])).json()
    assert body["class_id"] == classified["class_id"] == evaluated.loc[i, "predicted_id"]
    assert body["probabilities"] == pytest.approx(classified["probabilities"], abs=1e-5)
    assert body["inverted"] is False and body["model"] == classified["model"]
    assert np.array_equal(np.array(body["pixels"]), x[i])  # what the model saw
    assert np.array_equal(decode(body["image"]), x[i])

    # The geometry is read from the served model's layers; this champion was trained on the
    # workspace's params, so it must be their layer table.
    params = load_params(pipeline_run / "params.yaml")
    table = [r.as_dict() for r in layer_table(28, params.model.conv_blocks)]
    layers = body["layers"]
    assert [{k: layer[k] for k in table[0]} for layer in layers] == table
    for layer in layers:
        n, f, p, s, out = (layer[k] for k in ("n_in", "f", "p", "s", "n_out"))
        assert out == (n + 2 * p - f) // s + 1
        assert layer["formula"].endswith(f"= {out}")
        grid = layer["maps"]
        assert grid["tile"] == out and grid["cols"] * grid["rows"] >= layer["channels"]
        step = out + grid["gap"]
        assert decode(grid["png"]).shape == (
            grid["rows"] * step - grid["gap"],
            grid["cols"] * step - grid["gap"],
        )
        assert len(layer["low"]) == len(layer["high"]) == layer["channels"]
        assert all(lo <= hi for lo, hi in zip(layer["low"], layer["high"], strict=True))
    assert all(a["n_out"] == b["n_in"] for a, b in itertools.pairwise(layers))
    filters = body["filters"]
    assert (filters["layer"], filters["f"], filters["count"]) == (
        layers[0]["layer"],
        layers[0]["f"],
        layers[0]["channels"],
    )
    assert filters["scale"] > 0

    # Explaining does not change the answer of the pixels it reports.
    predicted = requests.post(
        f"{service_url}/predict", json={"images": [body["pixels"]]}, timeout=60
    )
    assert predicted.json()["predictions"][0]["probabilities"] == pytest.approx(
        body["probabilities"], abs=1e-5
    )
    paths = requests.get(f"{service_url}/docs.json", timeout=10).json()["paths"]
    assert {"/explain", "/samples"} <= set(paths)


def test_explain_refuses_bad_input_like_classify(service_url, pipeline_run, test_images):
    """The same guard and decoding: each bad request gets /classify's status and message."""
    good = png(test_images[0][0])
    big = b"\0" * (load_params(pipeline_run / "params.yaml").serve.max_upload_bytes + 1)
    cases = [  # (request, whether the message is the guard's or the decoder's)
        ({"files": {"image": ("a.png", b"hello, world", "image/png")}}, True),  # 415
        ({"files": {"image": ("a.png", good[: len(good) // 2], "image/png")}}, True),  # 422
        ({"files": {"image": ("a.png", b"", "image/png")}}, True),  # empty: 422
        ({"files": {"image": ("a.txt", b"hello", "text/plain")}}, True),  # text part: 415
        ({"json": {"image": "a.png"}}, True),  # not multipart: 415
        ({"data": {"image": "http://example.com/a.png"}}, True),  # a URL, not a file: 415
        ({"files": {"picture": ("a.png", good, "image/png")}}, True),  # no image field: 400
        ({"files": {"image": ("a.png", big, "image/png")}}, True),  # oversize: 413
        # BentoML's own validation message names the endpoint's input type: status only
        ({"files": {"image": ("a.png", good, "image/png")}, "data": {"invert": "maybe"}}, False),
    ]
    for kwargs, same_message in cases:
        explained = requests.post(f"{service_url}/explain", timeout=60, **kwargs)
        classified = requests.post(f"{service_url}/classify", timeout=60, **kwargs)
        assert 400 <= explained.status_code < 500, (kwargs.keys(), explained.text)
        assert explained.status_code == classified.status_code, explained.text
        assert "error" in explained.json()
        if same_message:
            assert explained.json()["error"] == classified.json()["error"].replace(
                "/classify", "/explain"
            )
    wrong_method = requests.get(f"{service_url}/explain", timeout=10)
    assert wrong_method.status_code == 405 and "use POST" in wrong_method.json()["error"]


def test_samples_are_test_images_of_every_class(service_url, test_images):
    samples = requests.get(f"{service_url}/samples", timeout=10).json()["samples"]
    x, y = test_images
    assert len(samples) == 20
    assert sorted(s["class_id"] for s in samples) == sorted(list(range(10)) * 2)
    for s in samples:
        assert s["class_name"] == CLASS_NAMES[s["class_id"]] and y[s["index"]] == s["class_id"]
        assert np.array_equal(decode(s["image"]), x[s["index"]])


def test_page_is_served_offline(service_url):
    """/ui redirects to the page; its files are all local (no CDN, nothing to fetch elsewhere).
    Its ES modules come with a JavaScript MIME type: under `X-Content-Type-Options: nosniff` a
    browser runs a module script of no other type (tests/test_lesson_math.py checks which files
    the page's modules import)."""
    resp = requests.get(f"{service_url}/ui", timeout=10, allow_redirects=False)
    assert resp.status_code in (301, 302, 307, 308) and resp.headers["location"].endswith("/ui/")
    names = sorted(path.name for path in UI_DIR.iterdir() if path.is_file())
    assert {"index.html", "app.js", "lesson.js", "lesson-math.js", "dom.js"} <= set(names)
    for name in ["", *names]:
        page = requests.get(f"{service_url}/ui/{name}", timeout=10)
        assert page.status_code == 200, name
        assert not re.search(r"https?://", page.text), f"/ui/{name} refers to another host"
        if name.endswith(".js"):
            assert page.headers["x-content-type-options"] == "nosniff"
            kind = page.headers["content-type"].split(";")[0].strip()
            assert kind in ("text/javascript", "application/javascript"), (name, kind)


# --- the page in Chromium --------------------------------------------------------------------


def test_upload_shows_classify_answer_layers_and_model(
    desktop, service_url, champion, test_images, evaluated, tmp_path
):
    page, console = desktop
    x, _ = test_images
    i = clear_item(evaluated)
    image = tmp_path / f"test-{i}.png"
    image.write_bytes(png(x[i]))
    meta = requests.get(f"{service_url}/metadata", timeout=10).json()
    page.wait_for_function("document.getElementById('model').textContent.includes('version')")
    model_line = page.inner_text("#model")
    assert (
        meta["model"]["name"] in model_line and f"version {meta['model']['version']}" in model_line
    )
    assert f"{100 * meta['test_accuracy']:.1f}%" in model_line

    page.set_input_files("#file", image)
    shown = explained(page)
    classified = post(service_url, "/classify", image.read_bytes()).json()
    assert shown["top"] == classified["class_name"]
    assert sum(shown["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert "not inverted" in shown["caption"]

    layers = post(service_url, "/explain", image.read_bytes()).json()["layers"]
    images = images_loaded(page)
    assert len(images) == 1 + 1 + len(layers)  # what it saw, the filters, one grid per layer
    assert all(img["width"] > 0 and img["shown"] > 0 for img in images), images
    captions = page.eval_on_selector_all("#layers figcaption", "c => c.map(x => x.textContent)")
    for layer, caption in zip(layers, captions, strict=True):
        n, f, p, s = (layer[k] for k in ("n_in", "f", "p", "s"))
        assert caption.startswith(layer["layer"])
        assert f"n = {n}, f = {f}, p = {p:g}, s = {s}" in caption
        assert layer["formula"] in caption
    assert "learned" in page.inner_text("#filters-caption")
    # docs/ui.md's: from the top down to the first row of feature maps.
    first_row_end = page.evaluate(
        "Math.ceil(Math.max(...[...document.querySelectorAll('#layers .layer')].slice(0, 2)"
        ".map(f => f.getBoundingClientRect().bottom)) + window.scrollY + 16)"
    )
    save_screenshot(page, tmp_path, "ui-explain.png", height=first_row_end, publish=True)
    assert console.errors == [] and violations(page) == []


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Drag the mouse through each stroke's points, given as fractions of the canvas."""
    box = page.locator("#canvas").bounding_box()
    for stroke in strokes:
        points = [
            (box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke
        ]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=8)
        page.mouse.up()


def test_drawing_is_explained(desktop):
    page, console = desktop
    # A trouser-like shape: two long legs joined at the top.
    with page.expect_response("**/explain") as answer:
        draw(page, [[(0.35, 0.15), (0.65, 0.15)], [(0.38, 0.15), (0.36, 0.9)]])
    sent = answer.value.json()
    shown = explained(page)
    assert len(shown["probabilities"]) == 10
    assert sum(shown["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert shown["top"] in CLASS_NAMES
    pixels = np.array(sent["pixels"])
    assert sent["inverted"] is False and 0 < (pixels > 128).mean() < 0.5  # light strokes on dark

    with page.expect_response("**/explain"):
        draw(page, [[(0.62, 0.15), (0.64, 0.9)]])  # the second leg: explained again
    explained(page)
    page.click("#clear")
    page.click("#explain-drawing")  # nothing drawn: the page says so, asks nothing
    assert "Draw something first" in page.inner_text("#error")
    assert console.errors == [] and violations(page) == []


def test_bad_file_shows_the_api_error(desktop, service_url, test_images, tmp_path):
    page, console = desktop
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"hello, world")
    page.set_input_files("#file", bad)
    page.wait_for_selector("#error:not([hidden])")
    api_error = post(service_url, "/explain", bad.read_bytes()).json()["error"]
    assert api_error in page.inner_text("#error")
    assert page.is_hidden("#inside") and page.is_hidden("#result")

    good = tmp_path / "good.png"  # the page still works
    good.write_bytes(png(test_images[0][1]))
    page.set_input_files("#file", good)
    explained(page)
    assert page.is_hidden("#error")
    # The browser itself logs the 415 response as a console error; nothing else may appear.
    unexpected = [e for e in console.errors if not re.match(r"Failed to load resource: .* 415", e)]
    assert unexpected == [] and len(console.errors) == 1
    assert violations(page) == []


def test_dropped_file_is_explained(desktop, test_images, evaluated):
    page, console = desktop
    x, _ = test_images
    i = clear_item(evaluated)
    payload = list(png(x[i]))
    transfer = page.evaluate_handle(
        """bytes => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
            return data;
        }""",
        payload,
    )
    page.dispatch_event("#drop", "dragenter", {"dataTransfer": transfer})
    assert "dragging" in page.get_attribute("#drop", "class")  # the zone shows it takes the drop
    with page.expect_response("**/explain") as answer:
        page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    shown = explained(page)
    assert answer.value.json()["pixels"] == x[i].tolist()
    assert shown["top"] == CLASS_NAMES[evaluated.loc[i, "predicted_id"]]
    assert "dragging" not in page.get_attribute("#drop", "class")
    assert console.errors == [] and violations(page) == []


def test_keyboard_reaches_every_control_and_explains_a_test_image(desktop):
    page, console = desktop
    controls = {
        "file": page.get_by_label("Choose an image file"),
        "random": page.get_by_role("button", name="Random test image"),
        "invert": page.get_by_label("Invert to light on dark"),
        "explain-drawing": page.get_by_role("button", name="Explain the drawing"),
        "clear": page.get_by_role("button", name="Clear"),
    }
    for name, control in controls.items():  # each has an accessible name
        assert control.get_attribute("id") == name
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id"))
    assert list(dict.fromkeys(c for c in reached if c in controls)) == list(controls)

    page.focus("#invert")
    page.keyboard.press("ArrowDown")  # "always": a test image, light on dark, gets inverted
    assert page.input_value("#invert") == "true"
    page.focus("#random")
    with page.expect_response("**/explain") as answer:
        page.keyboard.press("Enter")
    shown = explained(page)
    assert answer.value.json()["inverted"] is True
    assert "inverted (invert=true)" in shown["caption"]
    assert "not inverted" not in shown["caption"]
    assert re.search(r"test image #\d+ \(labelled .+\)", page.inner_text("#status"))
    assert console.errors == [] and violations(page) == []


def test_phone_screen_fits_and_takes_a_finger(browser, service_url, test_images, tmp_path):
    page, console = open_watched(
        browser,
        f"{service_url}/ui/",
        viewport=PHONE,
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
    )
    try:
        image = tmp_path / "item.png"
        image.write_bytes(png(test_images[0][2]))
        page.set_input_files("#file", image)
        explained(page)
        assert all(img["width"] > 0 for img in images_loaded(page))
        width = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert width[0] <= width[1], f"horizontal overflow on a {PHONE['width']}px screen: {width}"
        box = page.locator("#canvas").bounding_box()
        assert box["width"] <= PHONE["width"]
        with page.expect_response("**/explain") as answer:
            page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert np.array(answer.value.json()["pixels"]).max() > 0  # the finger drew a dot
        save_screenshot(page, tmp_path, "ui-phone.png", height=1500)
        assert console.errors == [] and violations(page) == []
    finally:
        page.context.close()


def test_is_this_right_stores_the_class_picked_for_the_answer_shown(
    desktop, pipeline_run, test_images, evaluated, tmp_path
):
    """Under the probabilities, one button per class; picking one (here with the keyboard)
    stores a correction of the answer shown, with the pixels the model saw, and says so."""
    from pipeline.core.feedback_log import read_shards

    page, console = desktop
    x, y = test_images
    i = clear_item(evaluated)
    image = tmp_path / "item.png"
    image.write_bytes(png(x[i]))
    page.set_input_files("#file", image)
    explained(page)
    buttons = page.locator("#feedback-classes button")
    assert buttons.all_inner_texts() == list(CLASS_NAMES)
    assert all(box["height"] >= 44 for box in (b.bounding_box() for b in buttons.all()))
    right = CLASS_NAMES[y[i]]
    page.get_by_role("button", name=right, exact=True).focus()
    with page.expect_response("**/feedback") as answer:
        page.keyboard.press("Enter")
    stored = answer.value.json()["stored"][0]
    page.wait_for_function(
        "document.getElementById('feedback-status').textContent.startsWith('Stored')"
    )
    assert right in page.inner_text("#feedback-status")
    assert page.get_attribute(f"#feedback-classes button >> nth={y[i]}", "aria-pressed") == "true"
    items, _ = read_shards(pipeline_run / "monitoring" / "feedback")
    (mine,) = [item for item in items if item.id == stored["id"]]
    assert (mine.label, mine.source) == (y[i], "page")
    assert np.array_equal(mine.pixels, x[i])  # the 28x28 the model saw
    assert mine.predicted == evaluated.loc[i, "predicted_id"]
    assert console.errors == [] and violations(page) == []


# --- the Content-Security-Policy -------------------------------------------------------------


def test_the_page_runs_under_its_policy_and_the_policy_bites(desktop, service_url):
    """The page got service/security.py's policy, and it is enforced: what the policy forbids
    (an inline script, an image from another host, a style attribute) is blocked and reported,
    so the empty violation lists of the tests above mean something."""
    page, console = desktop
    resp = requests.get(f"{service_url}/ui/", timeout=10)
    assert resp.headers["content-security-policy"] == PAGE_POLICY
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    page.wait_for_function("document.getElementById('model').textContent.includes('version')")
    assert violations(page) == []  # the page's own loading and first drawing
    ran = page.evaluate(
        """() => {
            const script = document.createElement("script");
            script.textContent = "window.__inlineRan = true";
            document.head.append(script);
            const img = new Image();
            img.src = "http://192.0.2.1/pixel.png";  // TEST-NET-1: never answers anyway
            document.body.append(img);
            const div = document.createElement("div");
            div.setAttribute("style", "color: red");
            document.body.append(div);
            return window.__inlineRan === true;
        }"""
    )
    assert ran is False
    page.wait_for_function("(window.__cspViolations || []).length >= 3")
    seen = {v["directive"] for v in violations(page)}
    assert seen == {"script-src-elem", "img-src", "style-src-attr"}, violations(page)
    assert any("Content Security Policy" in e for e in console.errors)  # Chromium says it too


def test_the_openapi_page_renders_under_its_policy_and_calls_no_other_host(browser, service_url):
    """BentoML's Swagger UI at / renders every endpoint under OPENAPI_POLICY. What the policy
    blocks there is only what would reach other hosts (its inline Google Tag Manager loader, the
    badges of its description) and the Swagger logo's <style>, in a top bar its CSS hides."""
    resp = requests.get(f"{service_url}/", timeout=10)
    assert resp.headers["content-security-policy"] == OPENAPI_POLICY
    page, console = open_watched(browser, None, viewport=DESKTOP)
    finished: list[str] = []
    page.on("requestfinished", lambda request: finished.append(request.url))
    try:
        page.goto(f"{service_url}/")
        for route in ("/classify", "/predict", "/explain", "/metadata"):
            page.locator(f'.opblock-summary-path[data-path="{route}"]').wait_for()
        page.locator('.opblock-summary-path[data-path="/classify"]').click()  # it expands
        page.locator(".opblock-body").first.wait_for()
        here = urlsplit(service_url).netloc
        assert {urlsplit(u).netloc for u in finished} <= {here}, finished
        unexpected = [
            v
            for v in violations(page)
            if not (
                (v["directive"], v["blocked"], v["source"])
                == ("script-src-elem", "inline", f"{service_url}/")
                or (v["directive"] == "img-src" and urlsplit(v["blocked"]).netloc != here)
                or (
                    (v["directive"], v["blocked"]) == ("style-src-elem", "inline")
                    and v["source"].endswith("/static_content/swagger-ui-bundle.js")
                )
            )
        ]
        assert unexpected == []
        assert not [e for e in console.errors if e.startswith("uncaught")]
    finally:
        page.context.close()
