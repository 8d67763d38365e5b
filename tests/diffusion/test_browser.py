"""The Stable Diffusion page in Debian's Chromium: load a tiny pipeline, generate, watch the step counter and the
final images appear, then drag the replay slider and see the noisy latent and x̂₀ of that step."""

from __future__ import annotations

import pytest

from tests.conftest import COLOURED_PIXELS_JS, drawn_marks
from tests.diffusion.test_app import tiny_sd  # noqa: F401  (the fixture)

pytestmark = pytest.mark.browser


def test_generate_watch_and_replay(page, app_url, tiny_sd, test_output):  # noqa: F811
    from playwright.sync_api import expect

    page.goto(app_url + "diffusion", wait_until="load")
    page.get_by_text("1. Model").first.wait_for(timeout=60_000)
    model = page.get_by_label("Model", exact=True)
    model.fill(tiny_sd)
    model.press("Enter")
    page.get_by_role("button", name="Load", exact=True).click()
    page.get_by_text("trained at 32×32").first.wait_for(timeout=60_000)
    page.get_by_label("Steps").first.fill("30")
    page.get_by_role("button", name="Generate", exact=True).click()
    # Previews stream: the status counts the steps before the final images come.
    page.get_by_text("Step ", exact=False).first.wait_for(timeout=60_000)
    page.get_by_text("image(s) made in 30 of 30 steps").first.wait_for(timeout=120_000)
    expect(page.locator("#diffusion-images img").first).to_be_visible(timeout=30_000)
    page.wait_for_function(f"() => ({COLOURED_PIXELS_JS})('#diffusion-convergence') > 0", timeout=60_000)
    # The replay follows the last step; move the slider to step 5 and see that step's frames.
    page.get_by_text("Step 30 of 30 (timestep").first.wait_for(timeout=60_000)
    slider = page.locator("#diffusion-replay input[type=number]")
    slider.fill("5")
    slider.press("Enter")
    slider.blur()
    page.get_by_text("Step 5 of 30 (timestep").first.wait_for(timeout=60_000)
    expect(page.locator("#diffusion-noisy img")).to_be_visible()
    expect(page.locator("#diffusion-clean img")).to_be_visible()
    assert drawn_marks(page, "#diffusion-convergence") > 0
    page.screenshot(path=str(test_output / "replayed.png"), full_page=True)
    assert page.console_errors == []
