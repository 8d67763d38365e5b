"""The Inside page in Debian's Chromium: tokenize a sentence with two tokenizers and see the coloured tokens, then
draw the causal LM's attention and see the grid of heads, one head and one token across layers."""

from __future__ import annotations

import pytest

from tests.conftest import COLOURED_PIXELS_JS, drawn_marks

pytestmark = pytest.mark.browser


def test_tokens_and_attention_are_drawn(page, app_url, test_output):
    page.goto(app_url + "inside", wait_until="load")
    page.get_by_text("Inside the transformer").first.wait_for(timeout=60_000)
    # The tokenizers' dropdown is filled at load with the encoder's and the causal LM's.
    page.get_by_text("local:smollm2-135m-instruct").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Tokenize", exact=True).click()
    page.locator("#inside-tokens .token-view").nth(1).wait_for(timeout=60_000)
    spans = page.locator("#inside-tokens .token-view").first.locator("[data-token-id]")
    assert spans.count() > 10
    assert page.locator("#inside-tokens .token-unknown").count() >= 1  # the emoji, for WordPiece
    page.screenshot(path=str(test_output / "tokens.png"), full_page=True)

    page.get_by_role("tab", name="Attention").click()
    page.get_by_label("causal LM (SmolLM2: masked)").check()
    page.get_by_role("button", name="Show attention", exact=True).click()
    page.get_by_text("Grouped-query attention: 9 query heads share 3").first.wait_for(timeout=120_000)
    for chart in ("#inside-grid", "#inside-head", "#inside-across", "#inside-entropy"):
        page.wait_for_function(f"() => ({COLOURED_PIXELS_JS})('{chart}') > 0", timeout=60_000)
        assert drawn_marks(page, chart) > 0, chart
    page.screenshot(path=str(test_output / "attention.png"), full_page=True)
    assert page.console_errors == []
