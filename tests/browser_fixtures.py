"""Browser fixtures and helpers for the /ui tests: headless Chromium from Debian's `chromium`
package (scripts/system-deps.sh test installs it), driven by Playwright pointed at that binary
(Playwright's own browser download is not used).

A test module loads the fixtures with `pytest_plugins = ["browser_fixtures"]` and imports the
helpers. FASHION_MNIST_SCREENSHOTS=<dir> also saves published screenshots there (docs/images/,
shown in README.md and docs/).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

CHROMIUM = (
    os.environ.get("FASHION_MNIST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
TIMEOUT_MS = 30_000
DESKTOP = {"width": 1200, "height": 1000}
PHONE = {"width": 390, "height": 844}


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def decode(url: str) -> np.ndarray:
    head, data = url.split(",", 1)
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def post(
    url: str, path: str, data: bytes, name: str = "item.png", ctype: str = "image/png", **form
):
    files = {"image": (name, data, ctype)}
    return requests.post(f"{url}{path}", files=files, data=form, timeout=60)


def clear_item(evaluated, limit: int = 200) -> int:
    """A test image the model is sure about: its class cannot flip between runtimes."""
    return int(evaluated["confidence"].iloc[:limit].idxmax())


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run scripts/system-deps.sh test (Debian's chromium)"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on(
            "console", lambda m: m.type == "error" and self.errors.append(f"{m.text} {m.location}")
        )
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


def open_page(browser, service_url: str, **context) -> tuple:
    ctx = browser.new_context(**context)
    page = ctx.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console = Console(page)
    page.goto(f"{service_url}/ui/")
    return page, console


@pytest.fixture
def desktop(browser, service_url) -> Iterator[tuple]:
    page, console = open_page(browser, service_url, viewport=DESKTOP)
    yield page, console
    page.context.close()


def explained(page) -> dict:
    """Wait for an answer to be drawn; the numbers the page shows."""
    page.wait_for_selector("#inside:not([hidden])")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Explained')")
    return {
        "top": page.inner_text("#top-class"),
        "probabilities": page.eval_on_selector_all(
            "#probabilities li", "items => items.map(i => Number(i.dataset.probability))"
        ),
        "caption": page.inner_text("#seen-caption"),
    }


def images_loaded(page) -> list[dict]:
    """Every image in the answer: loaded and decoded (a broken data URL has naturalWidth 0)."""
    page.wait_for_function(
        "[...document.querySelectorAll('#result img, #inside img')].every(i => i.complete)"
    )
    return page.eval_on_selector_all(
        "#result img, #inside img",
        "imgs => imgs.map(i => ({alt: i.alt, width: i.naturalWidth, shown: i.clientWidth}))",
    )


def save_screenshot(
    page,
    tmp_path: Path,
    name: str,
    height: int | None = None,
    publish: bool = False,
    selector: str | None = None,
) -> Path:
    """The whole page (or its top `height` pixels, or only the element `selector`) to tmp_path,
    and if `publish` also to FASHION_MNIST_SCREENSHOTS (docs/images/ comes from there)."""
    path = tmp_path / name
    if selector:
        page.locator(selector).screenshot(path=path)
    else:
        width = page.viewport_size["width"]
        clip = {"x": 0, "y": 0, "width": width, "height": height} if height else None
        page.screenshot(path=path, full_page=True, clip=clip)
    if publish and os.environ.get("FASHION_MNIST_SCREENSHOTS"):
        dest = Path(os.environ["FASHION_MNIST_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / name)
    return path
