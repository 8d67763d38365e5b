"""Where a token is: the sinusoidal positional encoding of "Attention Is All You Need", the encoder's learned
position embeddings, the causal LM's rotary positions (RoPE), and the visitor's token embeddings.

    sinusoidal(positions=64, d_model=128)                    # [64, 128]: PE(p, 2i) = sin(p / 10000^(2i/d)) ...
    learned_similarity(load_encoder(None), n_positions=64)   # cosine similarity of positions 0..63 (BERT learns them)
    rope_scores(load_decoder(None), "The cat sat", distances=range(0, 512, 8))   # q·k as the distance grows
    token_similarity(load_encoder(None), "king queen man woman", layer="input")   # cosine matrix + 2-D PCA

Everything returns plain numbers (numpy arrays, dataclasses); the page draws them (spaces/inside/plots.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.checks import check_range

MAX_POSITIONS = 512  # positions drawn in one plot: enough to see the slow dimensions turn
MAX_DIMENSIONS = 1024
MAX_SIMILARITY_TOKENS = 48  # tokens in a similarity matrix; longer text is cut, with a note


def whole_in_range(name: str, value: int, low: int, high: int) -> int:
    """`value` as an int, checked by the shared range check (a whole number from `low` to `high`)."""
    check_range(name, value, low, high, whole=True)
    return int(value)


# ---- sinusoidal ----------------------------------------------------------------------------------------------

def sinusoidal(positions: int, d_model: int, base: float = 10000.0) -> np.ndarray:
    """The fixed encoding of Vaswani et al. (2017), section 3.5: row p, columns 2i and 2i+1 are
    sin(p / base^(2i/d)) and cos(p / base^(2i/d)). Each pair turns at its own speed, from once every 2π
    positions (i = 0) to once every 2π·base positions: a position is told apart by the fast pairs nearby and by
    the slow pairs far away, and PE(p + k) is a rotation of PE(p) for any fixed k."""
    positions = whole_in_range("positions", positions, 1, MAX_POSITIONS)
    d_model = whole_in_range("dimensions", d_model, 2, MAX_DIMENSIONS)
    if d_model % 2:
        raise ValueError(f"dimensions must be even (sine and cosine come in pairs), got {d_model}")
    p = np.arange(positions, dtype=np.float64)[:, None]
    i = np.arange(d_model // 2, dtype=np.float64)[None, :]
    angle = p / base ** (2 * i / d_model)
    encoding = np.empty((positions, d_model))
    encoding[:, 0::2] = np.sin(angle)
    encoding[:, 1::2] = np.cos(angle)
    return encoding


def parse_dimensions(text: str, d_model: int) -> list[int]:
    """'0, 1, 10, 60' -> [0, 1, 10, 60]: the dimensions whose curves the page draws (at most 8)."""
    parts = [part.strip() for part in (text or "").replace(";", ",").split(",") if part.strip()]
    if not parts:
        raise ValueError("Give at least one dimension to draw, such as '0, 1, 20, 60'.")
    dims = []
    for part in parts:
        try:
            dims.append(int(part))
        except ValueError:
            raise ValueError(f"dimensions are whole numbers separated by commas; {part!r} is not one") from None
    bad = [d for d in dims if not 0 <= d < d_model]
    if bad:
        raise ValueError(f"dimensions must be between 0 and {d_model - 1} for d_model {d_model}; got {bad}")
    if len(dims) > 8:
        raise ValueError(f"at most 8 dimensions are drawn at once, got {len(dims)}")
    return list(dict.fromkeys(dims))


# ---- learned positions (BERT) --------------------------------------------------------------------------------

def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.maximum(norms, 1e-12)
    return unit @ unit.T


def learned_positions(opened: Any) -> np.ndarray:
    """The encoder's learned absolute position embeddings, [max positions, hidden]; ValueError if it has none
    (a model with rotary or relative positions)."""
    embeddings = getattr(opened.model, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if table is None:
        raise ValueError(f"{opened.source.label} ({opened.model.config.model_type}) has no learned absolute "
                         "position embeddings to draw.")
    return table.weight.detach().float().cpu().numpy()


def learned_similarity(opened: Any, n_positions: int) -> np.ndarray:
    """Cosine similarity between the first `n_positions` learned position embeddings: near positions end up
    alike, which is what the sinusoids build in by hand."""
    table = learned_positions(opened)
    n_positions = whole_in_range("positions", n_positions, 2, min(MAX_POSITIONS, len(table)))
    return cosine_matrix(table[:n_positions])


# ---- rotary positions (RoPE) ---------------------------------------------------------------------------------

@dataclass
class RotaryView:
    theta: float  # the base of the rotation frequencies (config.rope_theta)
    head_dim: int
    distances: np.ndarray  # m - n for a query at m and a key at n
    scores: dict[str, np.ndarray]  # name -> q·k / sqrt(head_dim) at each distance
    frequencies: np.ndarray  # angle per position of each dimension pair, theta^(-2i/d)
    shift_difference: float  # max |score(m, n) - score(m + s, n + s)|: RoPE sees only the distance


def rope_frequencies(head_dim: int, theta: float) -> np.ndarray:
    return theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def rotate(vector: np.ndarray, position: int, frequencies: np.ndarray) -> np.ndarray:
    """RoPE as transformers' Llama applies it: the vector's halves (x1, x2) are the pairs, each turned by
    position · frequency."""
    half = len(vector) // 2
    angle = position * frequencies
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2 = vector[:half], vector[half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin])


def rope_parameters(config: Any) -> tuple[int, float]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        raise ValueError(f"a {config.model_type!r} model has no rotary positions (no rope_theta in its config)")
    if getattr(config, "rope_scaling", None):
        raise ValueError(f"this view draws plain RoPE; the model scales it ({config.rope_scaling})")
    return int(head_dim), float(theta)


def model_query_key(opened: Any, text: str, layer: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The causal LM's own query of the text's last token and key of its first content token, for head 0 of
    `layer`, before rotation (the projections of the normed hidden state)."""
    import torch

    model = opened.model
    layers = model.model.layers
    layer = whole_in_range("layer", layer, 0, len(layers) - 1)
    ids = opened.tokenizer(text, return_tensors="pt", truncation=True, max_length=64)
    if ids["input_ids"].shape[1] < 2:
        raise ValueError("The text needs at least two tokens to take a query from one and a key from another.")
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states[layer]
        block = layers[layer]
        normed = block.input_layernorm(hidden)
        head_dim, _ = rope_parameters(model.config)
        query = block.self_attn.q_proj(normed)[0, -1, :head_dim]
        key = block.self_attn.k_proj(normed)[0, 0, :head_dim]
    tokens = opened.tokenizer.convert_ids_to_tokens(ids["input_ids"][0].tolist())
    return query.double().numpy(), key.double().numpy(), [tokens[-1], tokens[0]]


def rope_scores(opened: Any, text: str, layer: int = 0, max_distance: int = 256) -> RotaryView:
    """q·k/√d for one query and one key placed `distance` positions apart, for a few pairs: the model's own
    (from the visitor's text), a random pair, and q = k (whose score decays with distance: RoFormer §3.4.3)."""
    head_dim, theta = rope_parameters(opened.model.config)
    max_distance = whole_in_range("distance", max_distance, 1, 4096)
    frequencies = rope_frequencies(head_dim, theta)
    step = max(1, max_distance // 256)
    distances = np.arange(0, max_distance + 1, step)
    rng = np.random.default_rng(0)
    pairs = {"q = k (all ones)": (np.ones(head_dim), np.ones(head_dim)),
             "random q, k": (rng.standard_normal(head_dim), rng.standard_normal(head_dim))}
    if text and text.strip():
        query, key, (q_token, k_token) = model_query_key(opened, text, layer)
        pairs[f"layer {layer} head 0: q of {q_token!r}, k of {k_token!r}"] = (query, key)
    scores = {}
    for name, (q, k) in pairs.items():
        scores[name] = np.array([rotate(q, int(d), frequencies) @ rotate(k, 0, frequencies) for d in distances])
        scores[name] /= np.sqrt(head_dim)
    # The point of RoPE: moving both tokens by the same amount changes nothing.
    q, k = pairs["random q, k"]
    shift_difference = max(abs(rotate(q, 7 + s, frequencies) @ rotate(k, 3 + s, frequencies)
                               - rotate(q, 7, frequencies) @ rotate(k, 3, frequencies)) for s in (1, 100, 1000))
    return RotaryView(theta, head_dim, distances, scores, frequencies, float(shift_difference))


# ---- token embeddings ----------------------------------------------------------------------------------------

@dataclass
class TokenMap:
    tokens: list[str]  # labels: "index token", unique
    similarity: np.ndarray  # [T, T] cosine similarity
    points: np.ndarray  # [T, 2] PCA projection
    explained: tuple[float, float]  # share of the variance on each of the two axes
    note: str  # what was cut or dropped


EMBEDDING_LAYERS = ("input", "last")  # the token's own embedding, or the model's output for it in context


def token_similarity(opened: Any, text: str, layer: str = "input") -> TokenMap:
    """Cosine similarity between the vectors of the visitor's tokens (special tokens left out) and their 2-D PCA
    projection: "input" is the embedding table's row (the same word always gets the same vector), "last" the
    last layer's output (the same word differs with its context)."""
    import torch

    if layer not in EMBEDDING_LAYERS:
        raise ValueError(f"layer must be one of {EMBEDDING_LAYERS}, got {layer!r}")
    if not text or not text.strip():
        raise ValueError("The text is empty: type a few words to compare their embeddings.")
    tokenizer = opened.tokenizer
    encoded = tokenizer(text, return_tensors="pt", return_special_tokens_mask=True, truncation=True,
                        max_length=min(512, getattr(tokenizer, "model_max_length", 512)))
    special = encoded.pop("special_tokens_mask")[0].bool()
    ids = encoded["input_ids"][0]
    with torch.no_grad():
        if layer == "input":
            vectors = opened.model.get_input_embeddings()(ids)
        else:
            out = opened.model(**encoded, output_hidden_states=True)
            vectors = out.hidden_states[-1][0]
    keep = (~special).nonzero().flatten()
    note = ""
    if len(keep) > MAX_SIMILARITY_TOKENS:
        note = f"The text has {len(keep)} tokens; the first {MAX_SIMILARITY_TOKENS} are drawn."
        keep = keep[:MAX_SIMILARITY_TOKENS]
    if len(keep) < 2:
        raise ValueError("The text needs at least two tokens (besides special tokens) to compare.")
    vectors = vectors[keep].float().cpu().numpy().astype(np.float64)
    names = tokenizer.convert_ids_to_tokens(ids[keep].tolist())
    labels = [f"{i} {name}" for i, name in enumerate(names)]
    centred = vectors - vectors.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    points = centred @ vt[:2].T
    variance = singular ** 2 / max((singular ** 2).sum(), 1e-12)
    return TokenMap(labels, cosine_matrix(vectors), points, (float(variance[0]), float(variance[1])), note)
