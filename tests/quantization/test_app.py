"""The quantization page through gradio_client: a comparison of two variants on a tiny classifier, a variant that
fails while the others run, kept results, the LM family's Stop, bad input, the number formats and the memory
calculator. The tiny classifiers are put on the local allow-list the way a page saving a model does."""

from __future__ import annotations

import time

import pytest
from gradio_client.exceptions import AppError

from shared import jobs
from shared.registry import register_local
from tests.quantization.tiny import make_tiny_classifier

SMALL = dict(test_size=20, other_domain_size=4, repeats=3, text_tokens=32, new_tokens=4,
             prompt="What is the capital of France?")


@pytest.fixture(scope="module")
def tiny_classifiers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantization-app")
    return {architecture: register_local(f"tiny-quant-{architecture}", make_tiny_classifier(
        folder / architecture, architecture), "classifier") for architecture in ("bert", "ernie")}


def compare(client, model: str, variants: list[str], family: str = "Sentence classifier", fresh: bool = True,
            **changes):
    settings = {**SMALL, **changes}
    return client.predict(family_label=family, model=model, variants=variants, fresh=fresh, **settings,
                          api_name="/quantization_compare")


def rows_of(table: dict) -> dict[str, dict]:
    return {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}


def test_the_family_switch_offers_that_familys_models_and_variants(own_client):
    # Its own session: the switch narrows the session's variant list to the LM's, which the other tests do not want.
    model, variants = own_client.predict("Causal LM", api_name="/quantization_family")
    assert model["value"] == "local:smollm2-135m-instruct"
    names = [value for _, value in variants["choices"]]
    assert {"pytorch-fp32", "onnx-int8", "onnx-int4"} <= set(names)
    assert "gpu-bitsandbytes-nf4" in names and "gpu-bitsandbytes-nf4" not in variants["value"]  # listed, not run


def test_a_comparison_of_two_variants_then_kept(client, tiny_classifiers):
    status, table, scatter, bars, _ = compare(client, tiny_classifiers["bert"], ["onnx-int8-dynamic"])
    rows = rows_of(table)
    assert list(rows) == ["PyTorch fp32", "ONNX Runtime int8 (dynamic)"]
    fp32, int8 = rows.values()
    assert fp32["status"] == int8["status"] == "measured"
    assert fp32["speed × fp32"] == 1.0 and int8["speed × fp32"] > 0
    assert 0 <= int8["accuracy"] <= 1 and int8["agreement"] >= 0.8  # random weights: near-ties may flip
    assert int8["disk MB"] < fp32["disk MB"]  # int8 weights are about a quarter of fp32's
    assert scatter is not None and bars is not None and "2 of 2 variants" in status
    _, again, *_ = compare(client, tiny_classifiers["bert"], ["onnx-int8-dynamic"], fresh=False)
    assert [r["status"] for r in rows_of(again).values()] == ["cached", "cached"]


def test_a_variant_that_fails_does_not_stop_the_others(client, tiny_classifiers):
    status, table, *_ = compare(client, tiny_classifiers["ernie"], ["onnx-int8-dynamic", "pytorch-fp16"])
    rows = rows_of(table)
    assert list(rows) == ["PyTorch fp32", "PyTorch fp16", "ONNX Runtime int8 (dynamic)"]  # the variants' order
    assert [r["status"] for r in rows.values()] == ["measured", "measured", "failed"]
    assert "'ernie'" in rows["ONNX Runtime int8 (dynamic)"]["notes"]  # the reason names what could not be exported
    assert "failed" in status and "ONNX Runtime int8" in status


def test_bad_settings_are_refused_with_a_message(client, tiny_classifiers):
    with pytest.raises(AppError, match="repeats must be between 3"):
        compare(client, tiny_classifiers["bert"], ["onnx-int8-dynamic"], repeats=1)
    with pytest.raises(AppError, match="at least one variant"):
        compare(client, tiny_classifiers["bert"], [])
    with pytest.raises(AppError, match="not on the local allow-list"):
        compare(client, "local:no-such-model", ["onnx-int8-dynamic"])
    with pytest.raises(AppError, match="Type the prompt"):
        compare(client, "", [], family="Causal LM", prompt="  ")  # the settings are checked before the variants


def test_stop_ends_an_lm_comparison(own_client):
    own_client.predict("Causal LM", api_name="/quantization_family")  # the session's variant list becomes the LM's
    job = own_client.submit(family_label="Causal LM", model="local:smollm2-135m-instruct",
                            variants=["onnx-int8", "onnx-int4"], fresh=True, **{**SMALL, "text_tokens": 1024},
                            api_name="/quantization_compare")
    time.sleep(8)  # the reference's worker process is loading or measuring by now
    message = own_client.predict(api_name="/quantization_stop")
    assert message.startswith("Stopped")
    deadline = time.time() + 30
    while time.time() < deadline and jobs.active("quantization-compare"):
        time.sleep(0.2)
    assert jobs.active("quantization-compare") == 0
    job.cancel()


def test_number_formats_and_rounding_error(client):
    formats_table = client.predict(api_name="/quantization_formats")
    assert [row[0] for row in formats_table["data"]] == ["fp32", "fp16", "bf16", "int8", "int4"]
    matrix, plot, summary = client.predict("MiniLM (encoder)", "", api_name="/quantization_rounding")
    assert matrix["value"] == "bert.encoder.layer.0.attention.self.query.weight" or "layer.0" in matrix["value"]
    errors = {row[0]: row[1] for row in summary["data"]}
    assert errors["fp32"] == 0 and errors["fp16"] < errors["bf16"] < errors["int8"] < errors["int4"]
    assert plot is not None
    with pytest.raises(AppError, match="is not a weight matrix"):
        client.predict("MiniLM (encoder)", "no.such.weight", api_name="/quantization_rounding")


def test_memory_calculator(client):
    headline, weights, parts, per_gpu, plot = client.predict("7B", "mixed", 1, 2048, 8,
                                                             api_name="/quantization_memory")
    gib = {row[0]: row[2] for row in weights["data"]}
    assert gib["bf16"] == 13.0 and gib["fp32"] == 26.1 and gib["int4"] == 3.26
    strategies = {row[0]: row[1] for row in per_gpu["data"]}
    assert strategies["DDP"] > strategies["FSDP full shard"] > strategies["FSDP with CPU offload"]
    assert "architecture unknown" in headline and plot is not None
    headline, *_ = client.predict("local:smollm2-135m-instruct", "mixed", 8, 2048, 2, api_name="/quantization_memory")
    assert "134,515,008 parameters" in headline and "30 layers" in headline
    with pytest.raises(AppError, match="parameter count"):
        client.predict("seven billion", "mixed", 1, 2048, 8, api_name="/quantization_memory")
