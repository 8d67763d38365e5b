"""Shared fixtures: offline settings, a temporary Gradio folder, the running app, and the browser.

The hub is never reached in tests: HF_HUB_OFFLINE is set before anything imports huggingface_hub.
Models load for real from the offline assets that `make test` builds (shared/assets.py).

Browser tests are marked `@pytest.mark.browser` (or `pytestmark = pytest.mark.browser`) and use the `page`
fixture: Debian's Chromium through Playwright. Without Chromium every browser test is skipped, saying why.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PLAYGROUND_HOME", str(REPO_ROOT / ".cache"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PLAYGROUND_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="playground-gradio-"))
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pytest  # noqa: E402

TEST_OUTPUT = Path(os.environ.get("PLAYGROUND_TEST_OUTPUT", REPO_ROOT / "test-output"))
CHROMIUM = os.environ.get("PLAYGROUND_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def pytest_collection_modifyitems(config, items):
    """Every test marked `browser` skips, saying why, when Debian's Chromium is missing."""
    if os.path.exists(CHROMIUM):
        return
    skip = pytest.mark.skip(reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (make browser)")
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def app_url():
    """The whole app, launched once for the session on a free port, closed at the end."""
    import app
    from shared.launch import serve_in_background

    demo = app.build_app(list(app.TOPIC_PAGES))
    url = serve_in_background(demo)
    try:
        yield url
    finally:
        demo.close()


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture
def own_client(app_url):
    """A client session of its own. Tests that press a Stop use it: a Stop's `cancels=` ends the streams of the
    session that called it, so on the shared `client` it could cancel the next test's call."""
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture
def test_output(request) -> Path:
    folder = TEST_OUTPUT / request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh browser tab that records console errors in `page.console_errors`."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    yield page
    context.close()


# Counts the pixels a chart has drawn in colour (lines, points, bars, cells) inside `selector`: axes, grid and
# text are grey, so an empty chart counts ~0 however many <canvas>/<svg> elements it has. A matplotlib figure
# in gr.Plot is an <img>: its pixels are read through a canvas of its own.
COLOURED_PIXELS_JS = """(selector) => {
  const root = document.querySelector(selector);
  if (!root) return -1;
  let count = 0;
  const coloured = (data) => {
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
      if (a > 128 && Math.max(r, g, b) - Math.min(r, g, b) > 60) n++;
    }
    return n;
  };
  for (const canvas of root.querySelectorAll('canvas')) {
    count += coloured(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data);
  }
  for (const img of root.querySelectorAll('img')) {
    if (!img.complete || !img.naturalWidth) continue;
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(img, 0, 0);
    count += coloured(context.getImageData(0, 0, canvas.width, canvas.height).data);
  }
  for (const mark of root.querySelectorAll('svg .mark-line path, svg .mark-symbol path, svg .mark-rect path')) {
    if ((mark.getAttribute('d') || '').length > 10) count += 100;
  }
  return count;
}"""


def drawn_marks(page, selector: str) -> int:
    """How much a chart inside `selector` has drawn in colour (0: nothing but axes; -1: no such element)."""
    return page.evaluate(COLOURED_PIXELS_JS, selector)
