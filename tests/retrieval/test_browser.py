"""The retrieval page in Debian's Chromium: train a small CLIP briefly and see its loss plot draw, then embed
the sample photos with it, search by text and see the result gallery."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import COLOURED_PIXELS_JS, drawn_marks

pytestmark = pytest.mark.browser


def test_train_briefly_then_search_by_text(page, app_url, test_output):
    from playwright.sync_api import expect

    from shared.registry import models_dir

    name = "small-clip-browser"
    try:
        page.goto(app_url + "retrieval", wait_until="load")
        page.get_by_text("Train a small CLIP").first.wait_for(timeout=60_000)
        page.get_by_label("Save as (local:<name>)").fill(name)
        page.get_by_label("Time budget (s)").first.fill("0")
        page.get_by_label("Max steps (0 = no cap)").fill("15")
        page.get_by_role("button", name="Train", exact=True).click()
        page.get_by_text(f"Saved as local:{name}").first.wait_for(timeout=240_000)
        page.wait_for_function(f"() => ({COLOURED_PIXELS_JS})('#retrieval-loss') > 0", timeout=60_000)
        assert drawn_marks(page, "#retrieval-similarity") > 0, "the similarity matrix drew nothing"
        page.screenshot(path=str(test_output / "trained.png"), full_page=True)
        # The trained model is now the page's model: embed the photos and search them.
        page.get_by_role("button", name="Embed the gallery").click()
        page.get_by_text("reused from disk").first.wait_for(timeout=120_000)
        page.get_by_label("Search by text").fill("a cat")
        page.get_by_role("button", name="Search", exact=True).click()
        expect(page.locator("#retrieval-results img").first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(test_output / "searched.png"), full_page=True)
        assert page.console_errors == []
    finally:
        shutil.rmtree(models_dir() / name, ignore_errors=True)
