"""A block from scratch: one BERT encoder block and one Llama (SmolLM2) decoder block written as the formulas, in
plain PyTorch tensor operations, run on the models' own weights and checked against the library's layers.

The formulas (short and commented, the page shows their source with `source`):

    out, weights = scaled_dot_product_attention(q, k, v, mask)       # softmax(q·kᵀ/√d) · v
    out, weights = multi_head_attention(x, wq, bq, wk, bk, wv, bv, wo, bo, n_heads, mask)
    out, weights = encoder_block(x, bert_layer)                        # post-LayerNorm, GELU feed-forward
    out, weights = decoder_block(x, llama_layer, config, positions)   # pre-RMSNorm, RoPE, GQA, SwiGLU
    cos, sin = rope_cos_sin(positions, head_dim, theta)                # and rms_norm, apply_rope, swiglu, ...

Masks are boolean, as in torch's own scaled_dot_product_attention: True means "this query may attend to this
key". Shapes: x is (batch, seq, width); q, k, v are (batch, heads, seq, head_dim).

The checks the page calls (each runs the library model once, in float32 with eager attention as
spaces/inside/models.py loads it, and returns a dataclass of max absolute differences):

    check_attention(seed=0)                           # ours vs torch.nn.functional.scaled_dot_product_attention
    check_encoder_block(load_encoder(None), text, 0)  # ours vs hidden_states[1], the layer, its attention weights
    check_decoder_block(load_decoder(None), text, 0)  # the same for a decoder layer, plus RoPE vs rotary_emb
    source(encoder_block, multi_head_attention)       # the functions' source code, for the page's code view

The text is cut at MAX_TOKENS tokens (the result says when it was). Refused with a ValueError: empty text, a
layer index out of range, a model whose type is not one the formulas are written for (ENCODER_TYPES,
DECODER_TYPES), or whose settings they do not cover (another activation, scaled RoPE, non-eager attention).
"""

from __future__ import annotations

import inspect
import math
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from spaces.inside.models import Opened

MAX_TOKENS = 256  # attention is quadratic in the tokens: 256 keeps the maps readable and a CPU check quick
ENCODER_TYPES = ("bert", "roberta")  # RoBERTa's layer is BERT's, weight for weight
DECODER_TYPES = ("llama",)  # SmolLM2 is a Llama; others (Mistral, Qwen2, ...) differ in details and are refused


# --- attention --------------------------------------------------------------------------------------------------

def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q·kᵀ / √d + mask) · v. mask: boolean, broadcastable to (..., q_len, k_len), True = may attend.
    Returns the output (..., q_len, d_v) and the attention weights (..., q_len, k_len)."""
    head_dim = q.shape[-1]
    # Dot products of d-dimensional vectors grow like √d; dividing keeps the softmax from saturating.
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
    if mask is not None:
        # exp(-inf) = 0: a masked key gets exactly no weight, and the others still sum to 1.
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x · Wᵀ + b, with a weight stored as PyTorch's nn.Linear stores it."""
    # nn.Linear keeps its weight as (out_features, in_features), hence the transpose.
    out = x @ weight.T
    return out if bias is None else out + bias


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(batch, seq, n_heads·head_dim) -> (batch, n_heads, seq, head_dim)."""
    batch, seq, width = x.shape
    if width % n_heads:
        raise ValueError(f"n_heads {n_heads} must divide the width {width}")
    # Each head owns a contiguous slice of the width; moving heads before seq lets one matmul do all heads.
    return x.view(batch, seq, n_heads, width // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, n_heads, seq, head_dim) -> (batch, seq, n_heads·head_dim): the heads side by side again."""
    batch, n_heads, seq, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq, n_heads * head_dim)


def multi_head_attention(x: torch.Tensor, wq: torch.Tensor, bq: torch.Tensor | None, wk: torch.Tensor,
                         bk: torch.Tensor | None, wv: torch.Tensor, bv: torch.Tensor | None, wo: torch.Tensor,
                         bo: torch.Tensor | None, n_heads: int,
                         mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention with n_heads heads. x: (batch, seq, width); weights as nn.Linear stores them.
    Returns the output (batch, seq, width) and the weights (batch, n_heads, seq, seq)."""
    # Every head projects the same tokens into its own smaller space, so each can look for a different relation.
    q = split_heads(linear(x, wq, bq), n_heads)
    k = split_heads(linear(x, wk, bk), n_heads)
    v = split_heads(linear(x, wv, bv), n_heads)
    attended, weights = scaled_dot_product_attention(q, k, v, mask)
    # The output projection mixes what the heads found back into one vector per token.
    return linear(merge_heads(attended), wo, bo), weights


# --- the encoder block (BERT) -----------------------------------------------------------------------------------

def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / √(variance + eps) · weight + bias, over the last dimension."""
    # Each token's vector is brought to mean 0 and variance 1, then the learned weight and bias rescale it.
    mean = x.mean(-1, keepdim=True)
    variance = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps) * weight + bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The exact GELU, x · Φ(x), as BERT's config names it ("gelu")."""
    # Φ is the standard normal CDF: a smooth ReLU that lets a little negative signal through.
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def encoder_block(x: torch.Tensor, layer: Any,
                  attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One BERT encoder block from the weights of a transformers BertLayer. x: (batch, seq, width);
    attention_mask: (batch, seq), 1 for a real token, 0 for padding. Returns the output and attention weights."""
    attention, attention_out = layer.attention.self, layer.attention.output
    mask = None
    if attention_mask is not None:
        # Padding must not be looked at by anyone: mask keys only, shaped to broadcast over heads and queries.
        mask = attention_mask.bool()[:, None, None, :]
    attended, weights = multi_head_attention(
        x, attention.query.weight, attention.query.bias, attention.key.weight, attention.key.bias,
        attention.value.weight, attention.value.bias, attention_out.dense.weight, attention_out.dense.bias,
        attention.num_attention_heads, mask)
    # Post-LayerNorm (the 2018 layout): add the residual first, then normalise the sum.
    x = layer_norm(x + attended, attention_out.LayerNorm.weight, attention_out.LayerNorm.bias,
                   attention_out.LayerNorm.eps)
    # The feed-forward works on each token alone: widen (4x), GELU, narrow back.
    hidden = gelu(linear(x, layer.intermediate.dense.weight, layer.intermediate.dense.bias))
    output = layer.output
    x = layer_norm(x + linear(hidden, output.dense.weight, output.dense.bias), output.LayerNorm.weight,
                   output.LayerNorm.bias, output.LayerNorm.eps)
    return x, weights


# --- the decoder block (Llama / SmolLM2) ------------------------------------------------------------------------

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / √(mean(x²) + eps) · weight, over the last dimension."""
    # Only the scale is normalised (no mean, no bias): cheaper than LayerNorm and works as well.
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary angles' cos and sin, each (seq, head_dim), for integer positions (seq,)."""
    # Pair i turns by position · theta^(-2i/d): early pairs spin fast (near order), late pairs slowly (far order).
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    # Llama pairs dimension i with i + head_dim/2 (not 2i with 2i+1), so the angles are laid out twice.
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Each pair (a, b) = (x[i], x[i + d/2]) becomes (-b, a): the pair turned by 90 degrees."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys (batch, heads, seq, head_dim) by their positions' angles (seq, head_dim)."""
    # x·cos + (x turned 90°)·sin turns each pair by its angle. Rotating both q and k makes q·k depend only on
    # the distance between the two positions: that is how the model knows word order.
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def causal_mask(seq_len: int) -> torch.Tensor:
    """(seq, seq) boolean, True on and below the diagonal: token i may look at tokens 0..i."""
    # A decoder learns to predict the next token, so it must never see it.
    return torch.ones(seq_len, seq_len, dtype=torch.bool).tril()


def grouped_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with fewer key/value heads than query heads. q: (batch, n_heads, seq, head_dim);
    k, v: (batch, n_kv_heads, seq, head_dim). Returns the output and weights (batch, n_heads, seq, seq)."""
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads {n_kv_heads} must divide n_heads {n_heads}")
    # Several query heads share one key/value head (a smaller cache when generating): repeat each kv head for
    # its group, kv head 0 for query heads 0..g-1, kv head 1 for g..2g-1, and so on.
    group = n_heads // n_kv_heads
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    mask = causal_mask(q.shape[2]) if causal else None
    return scaled_dot_product_attention(q, k, v, mask)


def silu(x: torch.Tensor) -> torch.Tensor:
    """x · sigmoid(x), also called swish. (torch's fused F.silu may differ from this in the last bit.)"""
    return x * torch.sigmoid(x)


def swiglu(x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor) -> torch.Tensor:
    """The SwiGLU feed-forward: down(silu(gate(x)) · up(x)), weights as nn.Linear stores them (no biases)."""
    # Two widening projections: one carries the value, the other (through SiLU) gates how much of it passes.
    return linear(silu(linear(x, gate_w)) * linear(x, up_w), down_w)


def decoder_block(x: torch.Tensor, layer: Any, config: Any,
                  positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Llama decoder block from the weights of a transformers LlamaDecoderLayer. x: (batch, seq, width);
    config: the model's config; positions: (seq,) integers. Returns the output and attention weights."""
    attention, mlp, eps = layer.self_attn, layer.mlp, config.rms_norm_eps
    n_heads, n_kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    # Pre-norm (the modern layout): normalise a copy going into attention, keep the residual stream untouched.
    h = rms_norm(x, layer.input_layernorm.weight, eps)
    q = split_heads(linear(h, attention.q_proj.weight, attention.q_proj.bias), n_heads)
    k = split_heads(linear(h, attention.k_proj.weight, attention.k_proj.bias), n_kv_heads)
    v = split_heads(linear(h, attention.v_proj.weight, attention.v_proj.bias), n_kv_heads)
    # Positions enter here and only here: no position embedding is added to the tokens, q and k are rotated.
    cos, sin = rope_cos_sin(positions, head_dim, config.rope_theta)
    q, k = apply_rope(q, k, cos, sin)
    attended, weights = grouped_query_attention(q, k, v, causal=True)
    x = x + linear(merge_heads(attended), attention.o_proj.weight, attention.o_proj.bias)
    h = rms_norm(x, layer.post_attention_layernorm.weight, eps)
    x = x + swiglu(h, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    return x, weights


ENCODER_CODE = (scaled_dot_product_attention, linear, split_heads, merge_heads, multi_head_attention, layer_norm,
                gelu, encoder_block)
DECODER_CODE = (rms_norm, rope_cos_sin, rotate_half, apply_rope, causal_mask, grouped_query_attention, silu, swiglu,
                decoder_block)


def source(*functions: Callable[..., Any]) -> str:
    """The source code of the given functions, in that order, separated by a blank line (for the code view).
    ENCODER_CODE and DECODER_CODE list each block's functions: source(*ENCODER_CODE)."""
    if not functions:
        raise ValueError("source needs at least one function, e.g. source(*ENCODER_CODE)")
    for function in functions:
        if not (inspect.isfunction(function) or inspect.isclass(function)):
            raise ValueError(f"{function!r} is not a function or class: only those have source code to show")
    return "\n\n".join(textwrap.dedent(inspect.getsource(function)).rstrip() for function in functions) + "\n"


# --- the checks against the library ------------------------------------------------------------------------------

@dataclass
class AttentionCheck:
    shape: tuple[int, ...]  # of q, k and v: (batch, heads, tokens, head_dim)
    n_tokens: int
    unmasked_diff: float  # max |ours - torch's| without a mask
    causal_diff: float  # max |ours - torch's| with a causal mask
    row_sum_error: float  # max |sum of a row of our weights - 1|
    above_diagonal: float  # the largest weight our causal mask left above the diagonal (0)


@dataclass
class BlockCheck:
    block: str  # "encoder" or "decoder"
    model_type: str  # the config's model_type, e.g. "bert", "llama"
    layer_index: int
    n_layers: int
    tokens: list[str]  # the tokens that went in, special tokens included
    n_tokens: int
    cut: bool  # True when the text had more than MAX_TOKENS tokens and was cut to MAX_TOKENS
    input_shape: tuple[int, ...]  # (1, tokens, width)
    output_shape: tuple[int, ...]
    attention_shape: tuple[int, ...]  # (1, heads, tokens, tokens)
    output_compared_to: str  # what output_diff compares against
    output_diff: float  # max |our block's output - the library's|
    output_rel_diff: float  # max of |ours - library's| / (1 + |library's|) per number: float32 keeps ~7 digits,
    # and deep decoder layers hold values in the thousands, where rounding alone can pass 1e-5 absolute
    layer_call_diff: float  # max |our block's output - the library's layer module called on the same input|
    attention_diff: float  # max |our attention weights - the library's output_attentions for this layer|
    output_scale: float  # max |the library's output|: the differences are relative to this
    rope_diff: float | None  # decoder: max |our cos, sin - model.model.rotary_emb's|; None for the encoder
    attention: torch.Tensor  # our attention weights (heads, tokens, tokens), for the page to draw


def _max_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return (ours - theirs).abs().max().item()


def _rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs() / (1 + theirs.abs())).max().item()


def check_attention(seed: int = 0) -> AttentionCheck:
    """Our scaled_dot_product_attention against torch.nn.functional's, on random q, k, v, without and with a
    causal mask."""
    generator = torch.Generator().manual_seed(seed)
    shape = (2, 4, 7, 16)
    q, k, v = (torch.randn(shape, generator=generator) for _ in range(3))
    mask = causal_mask(shape[2])
    ours, weights = scaled_dot_product_attention(q, k, v)
    ours_causal, weights_causal = scaled_dot_product_attention(q, k, v, mask)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    theirs_causal = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return AttentionCheck(
        shape=shape, n_tokens=shape[2], unmasked_diff=_max_diff(ours, theirs),
        causal_diff=_max_diff(ours_causal, theirs_causal),
        row_sum_error=max((w.sum(-1) - 1).abs().max().item() for w in (weights, weights_causal)),
        above_diagonal=weights_causal.masked_select(~mask).abs().max().item())


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise ValueError(f"The text must be a string, not {type(text).__name__}")
    if not text.strip():
        raise ValueError("The text is empty: type a sentence to run through the block")


def _check_layer_index(layer_index: int, n_layers: int) -> None:
    if isinstance(layer_index, bool) or not isinstance(layer_index, int) or not 0 <= layer_index < n_layers:
        raise ValueError(f"layer_index {layer_index!r} is out of range: this model has {n_layers} layers, "
                         f"so it must be an integer from 0 to {n_layers - 1}")


def _check_config(config: Any, supported: tuple[str, ...], role: str, settings: dict[str, Any]) -> None:
    if config.model_type not in supported:
        raise ValueError(f"model_type {config.model_type!r} is not supported for the {role} block: the formulas "
                         f"here are written for {', '.join(supported)}")
    for name, expected in settings.items():
        value = getattr(config, name, None)
        if value != expected:
            raise ValueError(f"{name} {value!r} is not supported for the {role} block: the formulas here assume "
                             f"{expected!r}")
    if getattr(config, "_attn_implementation", None) != "eager":
        raise ValueError(f"attention implementation {getattr(config, '_attn_implementation', None)!r} returns no "
                         "attention weights to compare: load the model with attn_implementation='eager' "
                         "(spaces.inside.models does)")


def _tokenize(tokenizer: Any, text: str) -> tuple[dict[str, torch.Tensor], bool]:
    """The text's encoding cut at MAX_TOKENS (special tokens included), and whether it was cut."""
    whole = tokenizer(text, verbose=False)["input_ids"]
    encoded = tokenizer(text, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    return dict(encoded), len(whole) > MAX_TOKENS


def _run(opened: Opened, text: str) -> tuple[dict[str, torch.Tensor], bool, Any]:
    encoded, cut = _tokenize(opened.tokenizer, text)
    with torch.no_grad():
        outputs = opened.model(**encoded, output_hidden_states=True, output_attentions=True)
    return encoded, cut, outputs


def check_encoder_block(opened: Opened, text: str, layer_index: int = 0) -> BlockCheck:
    """Our encoder_block against layer `layer_index` of a BERT-family encoder (spaces.inside.models.load_encoder):
    fed the library's hidden_states[layer_index], compared with hidden_states[layer_index + 1], with the layer
    module called directly, and with the library's attention weights."""
    _check_text(text)
    config = opened.model.config
    _check_config(config, ENCODER_TYPES, "encoder",
                  {"hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False})
    layers = opened.model.base_model.encoder.layer
    _check_layer_index(layer_index, len(layers))
    encoded, cut, outputs = _run(opened, text)
    layer_in, library_out = outputs.hidden_states[layer_index], outputs.hidden_states[layer_index + 1]
    layer = layers[layer_index]
    with torch.no_grad():
        ours, weights = encoder_block(layer_in, layer, encoded["attention_mask"])
        # One text, no padding: the library's extended mask is all zeros, the same as none.
        layer_out = layer(layer_in)[0]
    library_weights = outputs.attentions[layer_index]
    return BlockCheck(
        block="encoder", model_type=config.model_type, layer_index=layer_index, n_layers=len(layers),
        tokens=opened.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist()),
        n_tokens=encoded["input_ids"].shape[1], cut=cut, input_shape=tuple(layer_in.shape),
        output_shape=tuple(ours.shape), attention_shape=tuple(weights.shape),
        output_compared_to=f"hidden_states[{layer_index + 1}]", output_diff=_max_diff(ours, library_out),
        output_rel_diff=_rel_diff(ours, library_out), layer_call_diff=_max_diff(ours, layer_out),
        attention_diff=_max_diff(weights, library_weights),
        output_scale=library_out.abs().max().item(), rope_diff=None, attention=weights[0])


def check_decoder_block(opened: Opened, text: str, layer_index: int = 0) -> BlockCheck:
    """Our decoder_block against layer `layer_index` of a Llama causal LM (spaces.inside.models.load_decoder):
    fed hidden_states[layer_index], compared with hidden_states[layer_index + 1] (for the last layer, which
    transformers reports after the final norm, our output goes through rms_norm with the final norm's weight
    first), with the layer module called directly, with the library's attention weights, and our RoPE cos/sin
    with the model's rotary_emb."""
    _check_text(text)
    config = opened.model.config
    _check_config(config, DECODER_TYPES, "decoder", {"hidden_act": "silu", "rope_scaling": None, "mlp_bias": False})
    base = opened.model.base_model
    _check_layer_index(layer_index, len(base.layers))
    encoded, cut, outputs = _run(opened, text)
    layer_in = outputs.hidden_states[layer_index]
    layer = base.layers[layer_index]
    n_tokens = layer_in.shape[1]
    positions = torch.arange(n_tokens)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    with torch.no_grad():
        ours, weights = decoder_block(layer_in, layer, config, positions)
        cos, sin = rope_cos_sin(positions, head_dim, config.rope_theta)
        library_cos, library_sin = base.rotary_emb(layer_in, positions[None])
        # The eager layer adds its mask to the scores: 0 where allowed, the dtype's minimum where not.
        blocked = torch.finfo(torch.float32).min
        additive = torch.zeros(n_tokens, n_tokens).masked_fill(~causal_mask(n_tokens), blocked)
        layer_out = layer(layer_in, attention_mask=additive[None, None],
                          position_embeddings=(library_cos, library_sin))
        layer_out = layer_out[0] if isinstance(layer_out, tuple) else layer_out
        if layer_index + 1 < len(base.layers):
            compared_to, ours_compared = f"hidden_states[{layer_index + 1}]", ours
        else:
            compared_to = f"hidden_states[{layer_index + 1}] (after the final norm, applied to ours too)"
            ours_compared = rms_norm(ours, base.norm.weight, config.rms_norm_eps)
    library_out = outputs.hidden_states[layer_index + 1]
    return BlockCheck(
        block="decoder", model_type=config.model_type, layer_index=layer_index, n_layers=len(base.layers),
        tokens=opened.tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist()), n_tokens=n_tokens,
        cut=cut, input_shape=tuple(layer_in.shape), output_shape=tuple(ours.shape),
        attention_shape=tuple(weights.shape), output_compared_to=compared_to,
        output_diff=_max_diff(ours_compared, library_out),
        output_rel_diff=_rel_diff(ours_compared, library_out), layer_call_diff=_max_diff(ours, layer_out),
        attention_diff=_max_diff(weights, outputs.attentions[layer_index]),
        output_scale=library_out.abs().max().item(),
        rope_diff=max(_max_diff(cos, library_cos[0]), _max_diff(sin, library_sin[0])), attention=weights[0])
