"""The block from scratch (spaces/inside/scratch.py) against torch and the library, on the real offline models.

Each model runs once per checked layer (module-scoped fixtures); the refusals never reach the model.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from spaces.inside import scratch

TEXT = "The cat sat on the mat because it was warm."
FP32 = 1e-5  # the bound for a block recomputed in float32


@pytest.fixture(scope="module")
def decoder_checks(decoder):
    """Layer 0 and the middle layer, each checked once for the tests below."""
    middle = decoder.model.config.num_hidden_layers // 2
    return {index: scratch.check_decoder_block(decoder, TEXT, index) for index in (0, middle)}


def test_attention_matches_torch_with_and_without_mask():
    check = scratch.check_attention(seed=0)
    assert check.unmasked_diff < 1e-6 and check.causal_diff < 1e-6
    assert check.row_sum_error < 1e-6
    assert check.above_diagonal == 0.0
    assert check.shape == (2, 4, 7, 16) and check.n_tokens == 7


def test_attention_with_padding_mask_matches_torch():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=generator) for _ in range(3))
    keys = torch.tensor([True, True, True, False, False])[None, None, None, :]
    ours, weights = scratch.scaled_dot_product_attention(q, k, v, keys)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keys)
    assert (ours - theirs).abs().max() < 1e-6
    assert torch.all(weights[..., 3:] == 0)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 2, 5))


@pytest.mark.parametrize("which", ["first", "last"])
def test_encoder_block_matches_the_library(encoder, which):
    n_layers = encoder.model.config.num_hidden_layers
    index = 0 if which == "first" else n_layers - 1
    check = scratch.check_encoder_block(encoder, TEXT, index)
    assert (check.block, check.model_type, check.layer_index, check.n_layers) == ("encoder", "bert", index, n_layers)
    assert check.output_diff < FP32 and check.layer_call_diff < FP32 and check.attention_diff < FP32
    assert check.output_compared_to == f"hidden_states[{index + 1}]"
    assert check.tokens[0] == "[CLS]" and check.tokens[-1] == "[SEP]" and len(check.tokens) == check.n_tokens
    width, heads = encoder.model.config.hidden_size, encoder.model.config.num_attention_heads
    assert check.input_shape == check.output_shape == (1, check.n_tokens, width)
    assert check.attention_shape == (1, heads, check.n_tokens, check.n_tokens)
    assert torch.allclose(check.attention.sum(-1), torch.ones(heads, check.n_tokens), atol=1e-6)
    assert not check.cut and check.rope_diff is None


@pytest.mark.parametrize("which", ["first", "middle"])
def test_decoder_block_matches_the_library(decoder, decoder_checks, which):
    index = min(decoder_checks) if which == "first" else max(decoder_checks)
    check = decoder_checks[index]
    config = decoder.model.config
    assert (check.block, check.model_type, check.layer_index) == ("decoder", "llama", index)
    assert check.output_diff < FP32 and check.layer_call_diff < FP32 and check.attention_diff < FP32
    assert check.input_shape == check.output_shape == (1, check.n_tokens, config.hidden_size)
    assert check.attention_shape == (1, config.num_attention_heads, check.n_tokens, check.n_tokens)
    assert check.rope_diff < 1e-6


def test_decoder_attention_is_causal(decoder_checks):
    for check in decoder_checks.values():
        above = torch.ones(check.n_tokens, check.n_tokens, dtype=torch.bool).triu(1)
        assert torch.all(check.attention[:, above] == 0)
        assert torch.all(check.attention[:, ~above] > 0)  # softmax never gives an allowed key exactly 0 here
        assert torch.allclose(check.attention.sum(-1), torch.ones(check.attention.shape[:2]), atol=1e-6)


def test_rope_matches_the_models_rotary_embedding(decoder):
    config, rotary = decoder.model.config, decoder.model.model.rotary_emb
    positions = torch.arange(300)
    cos, sin = scratch.rope_cos_sin(positions, config.head_dim, config.rope_theta)
    library_cos, library_sin = rotary(torch.zeros(1, 300, config.hidden_size), positions[None])
    assert cos.shape == sin.shape == (300, config.head_dim)
    assert (cos - library_cos[0]).abs().max() < 1e-6 and (sin - library_sin[0]).abs().max() < 1e-6


def test_rope_keeps_lengths_and_depends_on_distance_only():
    generator = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 1, 1, 1, 8, generator=generator)
    cos, sin = scratch.rope_cos_sin(torch.arange(12), 8, 10000.0)
    rotated_q, rotated_k = scratch.apply_rope(q.expand(1, 1, 12, 8), k.expand(1, 1, 12, 8), cos, sin)
    assert torch.allclose(rotated_q.norm(dim=-1), q.norm(dim=-1).expand(1, 1, 12))
    # q at position 3 with k at 1 scores the same as q at 10 with k at 8: two apart both times.
    scores = rotated_q[0, 0] @ rotated_k[0, 0].T
    assert torch.isclose(scores[3, 1], scores[10, 8], atol=1e-5)


def test_grouped_query_attention_shares_each_kv_head_within_its_group():
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(1, 6, 4, 8, generator=generator)
    k, v = (torch.randn(1, 2, 4, 8, generator=generator) for _ in range(2))
    out, weights = scratch.grouped_query_attention(q, k, v)
    # Query heads 0-2 use kv head 0, heads 3-5 kv head 1: the same as attention with kv repeated by hand.
    expected, _ = scratch.scaled_dot_product_attention(q, k[:, [0, 0, 0, 1, 1, 1]], v[:, [0, 0, 0, 1, 1, 1]],
                                                       scratch.causal_mask(4))
    assert torch.equal(out, expected) and weights.shape == (1, 6, 4, 4)
    with pytest.raises(ValueError, match="n_kv_heads 4 must divide n_heads 6"):
        scratch.grouped_query_attention(q, torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 8))


def test_roberta_layout_is_the_same_as_berts(encoder):
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=encoder.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, attn_implementation="eager")
    tiny = SimpleNamespace(tokenizer=encoder.tokenizer, model=RobertaModel(config).eval())
    check = scratch.check_encoder_block(tiny, TEXT, 1)
    assert check.model_type == "roberta"
    assert check.output_diff < FP32 and check.layer_call_diff < FP32 and check.attention_diff < FP32


def test_long_text_is_cut_to_max_tokens(encoder):
    check = scratch.check_encoder_block(encoder, "word " * 400, 0)
    assert check.cut and check.n_tokens == scratch.MAX_TOKENS == 256
    assert check.tokens[-1] == "[SEP]"
    assert check.output_diff < FP32


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text_is_refused(encoder, decoder, text):
    with pytest.raises(ValueError, match="The text is empty"):
        scratch.check_encoder_block(encoder, text)
    with pytest.raises(ValueError, match="The text is empty"):
        scratch.check_decoder_block(decoder, text)


@pytest.mark.parametrize("index", [-1, 6, 1.0, True])
def test_encoder_layer_out_of_range_is_refused(encoder, index):
    with pytest.raises(ValueError, match=r"layer_index .* must be an integer from 0 to 5"):
        scratch.check_encoder_block(encoder, TEXT, index)


def test_decoder_layer_out_of_range_is_refused(decoder):
    with pytest.raises(ValueError, match=r"layer_index 30 is out of range: .* from 0 to 29"):
        scratch.check_decoder_block(decoder, TEXT, 30)


def test_wrong_model_type_is_refused(encoder, decoder):
    with pytest.raises(ValueError, match=r"model_type 'llama' is not supported for the encoder block.*bert, roberta"):
        scratch.check_encoder_block(decoder, TEXT)
    with pytest.raises(ValueError, match=r"model_type 'bert' is not supported for the decoder block.*llama"):
        scratch.check_decoder_block(encoder, TEXT)


def test_unsupported_settings_are_refused(encoder):
    from transformers import BertConfig, BertModel

    for settings, message in [({"hidden_act": "relu"}, "hidden_act 'relu'"),
                              ({"attn_implementation": "sdpa"}, "attention implementation 'sdpa'")]:
        config = BertConfig(vocab_size=encoder.tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=32, **settings)
        config._attn_implementation = settings.get("attn_implementation", "eager")
        other = SimpleNamespace(tokenizer=encoder.tokenizer, model=BertModel(config).eval())
        with pytest.raises(ValueError, match=message):
            scratch.check_encoder_block(other, TEXT)


def test_source_shows_the_functions():
    code = scratch.source(scratch.scaled_dot_product_attention, scratch.encoder_block)
    assert code.startswith("def scaled_dot_product_attention(") and "def encoder_block(" in code
    assert "math.sqrt(head_dim)" in code
    for function in scratch.ENCODER_CODE + scratch.DECODER_CODE:
        assert f"def {function.__name__}(" in scratch.source(*scratch.ENCODER_CODE, *scratch.DECODER_CODE)
    with pytest.raises(ValueError, match="at least one function"):
        scratch.source()
    with pytest.raises(ValueError, match="is not a function"):
        scratch.source(42)
