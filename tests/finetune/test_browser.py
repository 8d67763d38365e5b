"""The fine-tuning page in Debian's Chromium: start a run, watch the loss plot draw, stop it."""

from __future__ import annotations

import re

import pytest

from spaces.finetune import runs
from tests.conftest import COLOURED_PIXELS_JS, drawn_marks

pytestmark = pytest.mark.browser


def test_start_watch_and_stop_a_run(page, app_url, test_output):
    page.goto(app_url + "finetune", wait_until="load")
    page.get_by_text("trainable of").first.wait_for(timeout=60_000)
    page.get_by_label("Train examples (0 = all)").fill("0")
    page.get_by_role("button", name="Train", exact=True).click()
    # Step 2 or later: the page shows the step its once-a-second poll finds, so a fast run can skip any one step.
    training = page.get_by_text(re.compile(r"step ([2-9]|\d{2,}) of \d+")).first
    training.wait_for(timeout=120_000)
    # This page's own run, by the id it shows (other tests' runs share the process).
    run_id = re.search(r"run-\d+-\w+", training.inner_text()).group(0)
    # Vega draws after the data arrives: wait (a hang guard, not a timing check) until the chart has colour.
    page.wait_for_function(f"() => ({COLOURED_PIXELS_JS})('#finetune-loss') > 0", timeout=60_000)
    page.screenshot(path=str(test_output / "training.png"), full_page=True)
    assert drawn_marks(page, "#finetune-loss") > 0, "the loss plot drew no line or point"
    page.get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text(f"{run_id} — stopped: step").first.wait_for(timeout=120_000)
    run = runs.RUNS[run_id]
    assert run.job.finished and run.status == "stopped" and run.step < run.total_steps
    page.screenshot(path=str(test_output / "stopped.png"), full_page=True)
    assert page.console_errors == []
