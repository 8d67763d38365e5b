"""The hand-built ONNX decoder (shared/onnx_lm.py) against transformers itself, on tiny seeded models of the
real classes: the same logits in float32 through prefill and KV-cache steps, close ones with int8 weights,
clear refusals, and builds stored once."""

from __future__ import annotations

import numpy as np
import pytest

import torch
import transformers

from shared import onnx_lm

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
IDS = [5, 17, 200, 3, 99, 150, 42, 7, 260, 1, 33, 76]


def tiny_model(kind: str):
    """A seeded random model of the real class; biases (where the class has them) made non-zero."""
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(**TINY, rope_theta=10000.0)
    elif kind == "llama-tied-bias-llama3-rope":
        config = transformers.LlamaConfig(**TINY, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                                          rope_scaling=LLAMA3_ROPE)
    elif kind == "qwen2":
        config = transformers.Qwen2Config(**TINY, rope_theta=1e6, use_sliding_window=False)
    else:
        config = transformers.MistralConfig(**TINY, sliding_window=None)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.1)
    return model


def reference_logits(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def onnx_logits(lm, ids, prefill=4):
    """Logits after each position from `prefill` on: one prefill, then one cached step per token."""
    logits, state = lm.prefill(ids[:prefill])
    rows = [logits]
    for token in ids[prefill:]:
        rows.append(lm.step(state, token))
    assert state.length == len(ids)
    return np.stack(rows).astype(np.float64)


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("kind", ["llama", "llama-tied-bias-llama3-rope", "qwen2", "mistral"])
def test_float32_graph_gives_transformers_logits_through_the_cache(kind, tmp_path):
    model = tiny_model(kind)
    lm = onnx_lm.OnnxCausalLM(onnx_lm.build_decoder(model, tmp_path / kind, "fp32"))
    expected = reference_logits(model, IDS)[3:]
    np.testing.assert_allclose(onnx_logits(lm, IDS), expected, atol=2e-4, rtol=1e-4)
    assert lm.config.model_type == model.config.model_type and lm.weights == "fp32"


@pytest.mark.parametrize("weights, max_kl", [("int8", 2e-3), ("int4", 5e-2)])
def test_quantized_weights_stay_close_and_int8_closer_than_int4(weights, max_kl, tmp_path):
    model = tiny_model("llama")
    lm = onnx_lm.OnnxCausalLM(onnx_lm.build_decoder(model, tmp_path, weights))
    reference = log_softmax(reference_logits(model, IDS)[3:])
    ours = log_softmax(onnx_logits(lm, IDS))
    kl = (np.exp(reference) * (reference - ours)).sum(axis=-1).mean()
    assert 0 < kl < max_kl
    fp32_size = sum(p.numel() * 4 for p in model.parameters())
    assert lm.nbytes < fp32_size  # the quantized build is smaller than the float32 weights


def test_unsupported_models_are_refused_with_the_reason():
    assert onnx_lm.supports(tiny_model("llama").config) is None
    assert "'gpt2'" in onnx_lm.supports(transformers.GPT2Config())
    assert "sliding-window" in onnx_lm.supports(transformers.MistralConfig(sliding_window=4096))
    dynamic = transformers.LlamaConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    assert "'dynamic'" in onnx_lm.supports(dynamic)
    gelu = transformers.LlamaConfig(hidden_act="gelu")
    assert "SiLU" in onnx_lm.supports(gelu)
    with pytest.raises(ValueError, match="weights must be one of"):
        onnx_lm.build_graph(tiny_model("llama"), "int3")


def test_sequences_past_the_model_positions_and_empty_prompts_are_refused(tmp_path):
    lm = onnx_lm.OnnxCausalLM(onnx_lm.build_decoder(tiny_model("llama"), tmp_path, "fp32"))
    with pytest.raises(ValueError, match="no tokens"):
        lm.prefill([])
    with pytest.raises(ValueError, match="at most 64"):
        lm.prefill([1] * 65)
    _, state = lm.prefill([1] * 64)
    with pytest.raises(ValueError, match="64 positions"):
        lm.step(state, 1)


def test_two_sequences_keep_their_own_cache(tmp_path):
    lm = onnx_lm.OnnxCausalLM(onnx_lm.build_decoder(tiny_model("llama"), tmp_path, "fp32"))
    _, first = lm.prefill(IDS[:4])
    _, second = lm.prefill([9, 9, 9])
    lm.step(second, 4)
    after = lm.step(first, IDS[4])
    alone, state = lm.prefill(IDS[:5])
    np.testing.assert_allclose(after, alone, atol=1e-5)


def test_a_build_is_stored_once_and_a_failed_build_leaves_nothing(tmp_path):
    source = tmp_path / "model"
    model = tiny_model("llama")
    model.save_pretrained(source)
    store = tmp_path / "store"
    loads = []

    def load():
        loads.append(1)
        return model

    first = onnx_lm.stored_build(source, "int8", load, store, name="tiny")
    again = onnx_lm.stored_build(source, "int8", load, store, name="tiny")
    assert first == again and len(loads) == 1 and first.name.startswith("tiny-int8-")
    other = onnx_lm.stored_build(source, "fp32", load, store, name="tiny")
    assert other != first and len(loads) == 2

    def broken():
        raise RuntimeError("out of memory halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        onnx_lm.stored_build(source, "int4", broken, store, name="tiny")
    assert sorted(p.name for p in store.iterdir()) == sorted([first.name, other.name])  # no scratch left behind
    model.config.rms_norm_eps = 1e-5  # new weights in the source folder: a new build replaces the old one
    model.save_pretrained(source)
    newer = onnx_lm.stored_build(source, "int8", load, store, name="tiny")
    assert newer != first and len(loads) == 3
    assert sorted(p.name for p in store.iterdir()) == sorted([newer.name, other.name])


def test_the_cache_loads_an_onnx_build_of_a_local_folder(tmp_path, monkeypatch):
    from shared.cache import LoadSpec, ModelCache
    from shared.loaders import STANDARD_LOADERS

    monkeypatch.setenv("PLAYGROUND_HOME", str(tmp_path / "home"))
    source = tmp_path / "model"
    model = tiny_model("qwen2")
    model.save_pretrained(source)
    cache = ModelCache(loaders=STANDARD_LOADERS)
    spec = LoadSpec("onnx-causal-lm", str(source), dtype="float32", device="cpu", options=(("weights", "fp32"),),
                    label="tiny (ONNX fp32)")
    lm = cache.get(spec)
    assert isinstance(lm, onnx_lm.OnnxCausalLM) and cache.get(spec) is lm
    [entry] = cache.entries()
    assert entry["model"] == "tiny (ONNX fp32)" and entry["dtype"] == "float32" and entry["MiB"] > 0
    assert (tmp_path / "home" / "onnx").is_dir()
    np.testing.assert_allclose(onnx_logits(lm, IDS), reference_logits(model, IDS)[3:], atol=2e-4, rtol=1e-4)
