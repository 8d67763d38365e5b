"""Every page in Debian's Chromium through Playwright: it renders, logs no console error, and a screenshot
lands in test-output/. Without Chromium these tests skip and say why (tests/conftest.py; CI installs it:
`make browser`)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def page_paths() -> list[str]:
    import app

    return [""] + [f"{name}" for name in app.available_pages(list(app.TOPIC_PAGES))]


@pytest.mark.parametrize("path", page_paths())
def test_page_opens_without_console_errors(page, app_url, path, test_output):
    page.goto(app_url + path, wait_until="load")
    page.locator("h1").first.wait_for(timeout=60_000)  # every page opens with its own heading
    page.wait_for_timeout(1500)  # let load events finish
    page.screenshot(path=str(test_output / f"{path or 'home'}.png"), full_page=True)
    assert page.console_errors == []


def test_home_shows_environment_and_refuses_a_path(page, app_url, test_output):
    page.goto(app_url, wait_until="load")
    page.get_by_text("local:all-minilm-l6-v2").first.wait_for(timeout=60_000)
    page.get_by_label("Model (optional)").fill("../../etc")
    page.get_by_role("button", name="Load", exact=True).click()
    page.get_by_text("is a path or URL").first.wait_for(timeout=30_000)
    page.screenshot(path=str(test_output / "refused.png"), full_page=True)
    # The app is still up: loading the default encoder works right after.
    page.get_by_label("Model (optional)").fill("")
    page.get_by_role("button", name="Load", exact=True).click()
    page.get_by_text("is loaded for the encoder role").first.wait_for(timeout=60_000)
    page.screenshot(path=str(test_output / "loaded.png"), full_page=True)
