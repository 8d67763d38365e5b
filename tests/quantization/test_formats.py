"""The number formats: their ranges and precisions as torch states them, and rounding a model's own weights to
each (SmolLM2's first attention projection, loaded offline)."""

from __future__ import annotations

import numpy as np
import pytest

from spaces.quantization import formats


def test_the_formats_ranges_and_precisions():
    rows = {row["format"]: row for row in formats.format_rows()}
    assert rows["fp32"]["precision"] == pytest.approx(2**-23) and rows["fp16"]["largest"] == 65504
    assert rows["bf16"]["precision"] == pytest.approx(2**-7) and rows["bf16"]["largest"] > 3e38  # fp32's range
    assert rows["fp16"]["precision"] == pytest.approx(2**-10)
    assert rows["int8"]["precision"] == pytest.approx(1 / 127) and rows["int4"]["bits"] == 4


def test_integer_round_trips_are_symmetric_per_row():
    weight = np.array([[1.0, -0.4, 0.26, 0.0], [0.0, 0.0, 0.0, 0.0], [-2.0, 1.0, 0.1, 0.3]])
    back = formats.round_trip(weight, "int4")
    assert back[0].tolist() == pytest.approx([1.0, -3 / 7, 2 / 7, 0.0])  # steps of 1/7 of the row's largest |w|
    assert back[1].tolist() == [0.0] * 4  # an all-zero row stays zero
    assert back[2, 0] == pytest.approx(-2.0) and back[2, 2] == pytest.approx(0.0)  # 0.1 < half a step of 2/7
    assert np.abs(weight - formats.round_trip(weight, "int8")).max() <= 2 / 127 / 2 + 1e-7


def test_float_round_trips_keep_relative_precision():
    weight = np.array([[1.0 + 2**-9, 1000.0 + 0.3, 1e-3]])
    assert np.array_equal(formats.round_trip(weight, "fp32"), weight.astype(np.float32))
    bf16 = formats.round_trip(weight, "bf16")[0]
    assert bf16[0] == 1.0 and abs(bf16[1] - 1000.3) <= 1000.3 * 2**-8  # 8 significant bits


def test_the_models_own_weights_lose_most_in_int4_and_least_in_fp32():
    from spaces.prompting.models import load_chat_model

    weight = load_chat_model(None, backend="pytorch").model.model.layers[0].self_attn.q_proj.weight.detach()
    summary = {row["format"]: row["mean |error|"] for row in formats.error_summary(weight.float().numpy())}
    assert summary["fp32"] == 0 < summary["fp16"] < summary["bf16"] < summary["int8"] < summary["int4"]
    errors = formats.rounding_errors(weight.float().numpy(), "int8")
    assert errors.shape == (weight.numel(),) and errors.max() > 0


@pytest.mark.parametrize("weight, name, message", [([[1.0]], "fp8", "format must be one of"),
                                                   ([1.0, 2.0], "int8", "2 dimensions")])
def test_bad_formats_and_shapes_are_refused(weight, name, message):
    with pytest.raises(ValueError, match=message):
        formats.round_trip(weight, name)
