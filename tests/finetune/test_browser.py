"""The fine-tuning page in Debian's Chromium: start a run, watch the loss plot draw, stop it."""

from __future__ import annotations

import pytest

from spaces.finetune import runs
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, browser, page  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser]


def test_start_watch_and_stop_a_run(page, app_url, test_output):  # noqa: F811
    page.goto(app_url + "finetune", wait_until="load")
    page.get_by_text("trainable of").first.wait_for(timeout=60_000)
    page.get_by_label("Train examples (0 = all)").fill("0")
    page.get_by_role("button", name="Train", exact=True).click()
    page.get_by_text("step 2 of").first.wait_for(timeout=120_000)
    page.wait_for_timeout(1500)  # one more poll, so the plot has points
    page.screenshot(path=str(test_output / "training.png"), full_page=True)
    assert page.locator(".vega-embed, canvas, svg").count() > 0
    page.get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text("— stopped").first.wait_for(timeout=120_000)
    page.screenshot(path=str(test_output / "stopped.png"), full_page=True)
    stopped = [r for r in runs.RUNS.values() if r.status == "stopped"]
    assert stopped and stopped[-1].step < stopped[-1].total_steps
    assert page.console_errors == []
