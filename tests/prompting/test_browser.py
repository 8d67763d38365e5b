"""The prompting page in Debian's Chromium: generate text, then see the next-token distribution plotted.
Skips, saying why, without Chromium (as tests/test_browser.py does)."""

from __future__ import annotations

from tests.test_browser import browser, page, pytestmark  # noqa: F401  (shared fixtures and skip rule)


def test_generate_then_see_the_distribution(page, app_url, test_output):
    from playwright.sync_api import expect

    # "load", not "networkidle": a page with gr.State keeps a heartbeat stream open, so the network is never idle.
    page.goto(app_url + "prompting", wait_until="load")
    page.get_by_text("Prompting and decoding").first.wait_for(timeout=60_000)
    page.get_by_label("Max new tokens").first.fill("8")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.get_by_text("new tokens after a").first.wait_for(timeout=120_000)
    expect(page.get_by_label("Model output")).not_to_have_value("", timeout=60_000)
    page.get_by_role("button", name="Show the next-token distribution").click()
    page.get_by_text("Tokens that can still be drawn").first.wait_for(timeout=60_000)
    chart = page.locator("#prompting-dist-0")
    chart.locator("canvas, svg").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Step: append one token").click()
    expect(page.get_by_label("Tokens stepped so far")).not_to_have_value("", timeout=60_000)
    page.screenshot(path=str(test_output / "prompting.png"), full_page=True)
    assert page.console_errors == []
