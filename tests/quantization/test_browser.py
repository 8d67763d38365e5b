"""The quantization page in Debian's Chromium: compare two variants of a tiny classifier and see the table, the
latency-against-quality scatter and the bars drawn."""

from __future__ import annotations

import pytest

from shared.registry import register_local
from tests.conftest import drawn_marks
from tests.quantization.tiny import make_tiny_classifier

pytestmark = pytest.mark.browser


def test_compare_two_variants(page, app_url, test_output, tmp_path):
    label = register_local("tiny-quant-browser", make_tiny_classifier(tmp_path / "tiny", seed=3), "classifier")
    page.goto(app_url + "quantization", wait_until="load")
    page.get_by_text("Storing a model's numbers in fewer bits").first.wait_for(timeout=60_000)
    model = page.get_by_label("Model", exact=True)
    model.click()
    page.get_by_role("option", name=label).click()
    variants = page.locator("label").filter(has=page.locator("input[type=checkbox]"))
    for index in range(variants.count()):  # keep one variant besides the reference
        box = variants.nth(index).locator("input")
        wanted = variants.nth(index).inner_text().strip() == "ONNX Runtime int8 (dynamic)"
        if box.is_checked() != wanted and box.is_enabled():
            box.click()
    page.get_by_label("Held-out movie sentences").fill("20")
    page.get_by_label("Tweets / Amazon / NYT, each").fill("4")
    page.get_by_label("Timed runs at batch 1").fill("3")
    page.get_by_label("Measure again (ignore kept results)").check()
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_text("2 of 2 variants (2 measured).").first.wait_for(timeout=240_000)
    results = page.locator("#quantization-results")
    assert results.get_by_text("ONNX Runtime int8 (dynamic)").count() >= 1
    assert results.get_by_text("PyTorch fp32").count() >= 1
    page.wait_for_function("() => document.querySelector('#quantization-scatter svg, #quantization-scatter canvas')",
                           timeout=30_000)
    assert drawn_marks(page, "#quantization-scatter") > 0
    assert drawn_marks(page, "#quantization-bars") > 0
    page.screenshot(path=str(test_output / "quantization.png"), full_page=True)
    assert page.console_errors == []
