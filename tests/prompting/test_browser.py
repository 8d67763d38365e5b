"""The prompting page in Debian's Chromium: generate text, see the next-token distribution drawn, step a token,
and measure in-context learning on a few sentences with its chart drawn. Skips, saying why, without Chromium
(tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.conftest import COLOURED_PIXELS_JS, drawn_marks

pytestmark = pytest.mark.browser

TIMEOUT_MS = 120_000  # a hang guard for loading the model and running it, not a measured duration


def test_generate_explore_step_and_measure(page, app_url, test_output):
    from playwright.sync_api import expect

    # "load", not "networkidle": a page with gr.State keeps a heartbeat stream open, so the network is never idle.
    page.goto(app_url + "prompting", wait_until="load")
    page.get_by_text("Prompting and decoding").first.wait_for(timeout=TIMEOUT_MS)
    # 1. Generate a few tokens.
    page.get_by_label("Max new tokens").first.fill("8")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.get_by_text("new tokens after a").first.wait_for(timeout=TIMEOUT_MS)
    expect(page.get_by_label("Model output")).not_to_have_value("", timeout=TIMEOUT_MS)
    # 2. The distribution is drawn, then a step appends a token.
    page.get_by_role("button", name="Show the next-token distribution").click()
    page.get_by_text("Tokens that can still be drawn").first.wait_for(timeout=TIMEOUT_MS)
    expect_drawn(page, "#prompting-dist-0")
    page.get_by_role("button", name="Step: append one token").click()
    expect(page.get_by_label("Tokens stepped so far")).not_to_have_value("", timeout=TIMEOUT_MS)
    # 3. The in-context-learning lab on 4 sentences, 0 and 1 shots, two formats and two seeds: two settings,
    # each before and after calibration, drawn as lines with error bars, and the label bias beside them.
    page.get_by_label("N sentences").fill("4")
    page.get_by_label("Shot counts k").fill("0, 1")
    page.get_by_label("Seeds (draws of demonstrations)").fill("2")
    page.get_by_label("one message").check()
    page.get_by_role("button", name="Measure", exact=True).click()
    page.get_by_text("N=4 balanced, 2 seed(s)").first.wait_for(timeout=TIMEOUT_MS)
    expect_drawn(page, "#prompting-icl-plot")
    expect_drawn(page, "#prompting-icl-bias")
    # The session's table: both formats, before and after calibration (the legend is drawn on a canvas).
    for setting in ("chat turns · positive/negative", "one message · positive/negative · calibrated"):
        assert page.get_by_text(setting, exact=True).count() >= 2, setting  # this run's table and the session's
    page.screenshot(path=str(test_output / "prompting.png"), full_page=True)
    assert page.console_errors == []


def expect_drawn(page, selector: str) -> None:
    """The chart in `selector` drew coloured marks (an empty chart has axes only). Charts render after the data
    arrives, so this polls (a hang guard) rather than reading once."""
    page.locator(selector).scroll_into_view_if_needed()
    page.wait_for_function(f"(selector) => ({COLOURED_PIXELS_JS})(selector) > 0", arg=selector, timeout=TIMEOUT_MS)
    assert drawn_marks(page, selector) > 0
