"""The app online, in Debian's Chromium: the home page says the hub is online and lists the roles' hub ids, a
typed hub id loads, and every topic page opens without a console error (screenshots in test-output/)."""

from __future__ import annotations

import pytest

from tests.hub import repos

pytestmark = pytest.mark.browser


def test_home_online_in_the_browser(page, online_app, test_output):
    url = online_app[1]
    page.goto(url, wait_until="load")
    page.get_by_text("online", exact=True).first.wait_for(timeout=60_000)
    page.get_by_text(repos.CLIP, exact=True).first.wait_for(timeout=10_000)
    # The Load box's role is the encoder: a BERT-family hub id typed there downloads and loads.
    page.get_by_label("Model (optional)").fill(repos.CLASSIFIER)
    page.get_by_role("button", name="Load", exact=True).click()
    page.get_by_text(f"{repos.CLASSIFIER} (hub) is loaded").first.wait_for(timeout=120_000)
    page.screenshot(path=str(test_output / "home-online.png"), full_page=True)
    assert page.console_errors == []


def test_every_page_opens_online(page, online_app, test_output):
    import app

    for name in app.available_pages(list(app.TOPIC_PAGES)):
        page.goto(online_app[1] + name, wait_until="load")
        page.locator("h1").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(test_output / f"{name}.png"), full_page=True)
    assert page.console_errors == []
