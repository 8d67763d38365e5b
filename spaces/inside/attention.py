"""What each token looks at: the attention weights of every layer and head, for the encoder (bidirectional),
the causal LM (masked: nothing above the diagonal; grouped-query heads share keys) and the small ViT (the class
token over image patches).

    maps = text_attention(load_decoder(None), "The cat sat on the mat")
    maps.weights[layer, head]          # [T, T], rows (queries) sum to 1
    maps.kv_group(head)                # the key/value head this query head reads (grouped-query attention)
    view = image_attention(load_vision(None), image, layer=-1)   # class token -> patches, per head, on the image

The weights come from the model itself (`output_attentions=True` on the eager implementation), not from a copy
of its formula: spaces/inside/scratch.py is where the formula is checked against them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_ATTENTION_TOKENS = 40  # tokens drawn: a 40x40 map per head is readable, and a layer's grid stays light


@dataclass
class AttentionMaps:
    model: str  # the model's label
    tokens: list[str]  # as the vocabulary spells them, special tokens included
    weights: np.ndarray  # [layers, heads, T, T] float32; row q, column k: how much query q takes from key k
    causal: bool
    n_kv_heads: int  # == heads unless grouped-query attention
    note: str  # what was cut

    @property
    def layers(self) -> int:
        return self.weights.shape[0]

    @property
    def heads(self) -> int:
        return self.weights.shape[1]

    def kv_group(self, head: int) -> int:
        """Grouped-query attention: query heads [g·n, (g+1)·n) read key/value head g, n = heads / kv heads
        (transformers' repeat_kv)."""
        return head // (self.heads // self.n_kv_heads)

    def labels(self) -> list[str]:
        """Unique axis labels: the position, then the token."""
        return [f"{i} {token}" for i, token in enumerate(self.tokens)]


def check_text(text: str) -> str:
    if text is None or not text.strip():
        raise ValueError("The text is empty: type a sentence to see what each of its tokens attends to.")
    return text


def check_index(name: str, value: Any, size: int) -> int:
    """A layer, head or token index: negative counts from the end, as in Python."""
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if index != value and not (isinstance(value, float) and float(index) == value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not -size <= index < size:
        raise ValueError(f"{name} must be between 0 and {size - 1}, got {index}")
    return index % size


def text_attention(opened: Any, text: str, max_tokens: int = MAX_ATTENTION_TOKENS) -> AttentionMaps:
    """Every layer's attention weights for the visitor's text (special tokens included, as the model sees it);
    text past `max_tokens` tokens is cut, and the note says so."""
    import torch

    check_text(text)
    tokenizer = opened.tokenizer
    full = tokenizer(text, return_tensors="pt")["input_ids"]
    note = ""
    if full.shape[1] > max_tokens:
        note = (f"The text has {full.shape[1]} tokens; attention is drawn for the first {max_tokens} "
                f"(a {max_tokens}×{max_tokens} map per head).")
    encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)
    config = opened.model.config
    if getattr(config, "_attn_implementation", "eager") != "eager":
        raise ValueError(f"{opened.source.label} runs {config._attn_implementation} attention, which does not "
                         "return its weights; the page loads its models with eager attention.")
    with torch.no_grad():
        out = opened.model(**encoded.to(opened.model.device), output_attentions=True)
    if not out.attentions or out.attentions[0] is None:
        raise ValueError(f"{opened.source.label} did not return attention weights.")
    weights = torch.stack([a[0] for a in out.attentions]).float().cpu().numpy()
    heads = weights.shape[1]
    causal = bool(getattr(config, "is_decoder", False)) or type(opened.model).__name__.endswith("ForCausalLM")
    n_kv = int(getattr(config, "num_key_value_heads", None) or heads)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())
    return AttentionMaps(opened.source.label, tokens, weights, causal, n_kv, note)


def across_layers(maps: AttentionMaps, token: int, head: int | None = None) -> np.ndarray:
    """[layers, T]: what token `token` attends to in each layer, for one head or averaged over heads (None)."""
    token = check_index("token", token, len(maps.tokens))
    if head is None:
        return maps.weights[:, :, token, :].mean(axis=1)
    head = check_index("head", head, maps.heads)
    return maps.weights[:, head, token, :]


def head_summary(maps: AttentionMaps) -> list[list]:
    """Per layer and head: [layer, head, kv head, entropy, to first, to itself, to previous]: the mean entropy of
    its rows in nats (low: looks at one token; high: spreads out), and how much goes to the first token (an
    'attention sink'), to the token itself and to the previous one."""
    eps = 1e-12
    w = maps.weights.astype(np.float64)
    entropy = -(w * np.log(w + eps)).sum(-1).mean(-1)  # [L, H]
    first = w[..., :, 0].mean(-1)
    diagonal = np.diagonal(w, axis1=-2, axis2=-1).mean(-1)
    previous = np.diagonal(w, offset=-1, axis1=-2, axis2=-1).mean(-1) if w.shape[-1] > 1 else np.zeros_like(first)
    rows = []
    for layer in range(maps.layers):
        for head in range(maps.heads):
            rows.append([layer, head, maps.kv_group(head), round(float(entropy[layer, head]), 3),
                         round(float(first[layer, head]), 3), round(float(diagonal[layer, head]), 3),
                         round(float(previous[layer, head]), 3)])
    return rows


# ---- the small ViT -------------------------------------------------------------------------------------------

@dataclass
class ImageAttention:
    model: str
    image: np.ndarray  # [H, W, 3] uint8: what the model saw, before normalisation, resized to its input size
    grid: int  # patches per side
    class_attention: np.ndarray  # [layers, heads, grid, grid]: the class token's weights over the patches
    to_class: np.ndarray  # [layers, heads]: what the class token keeps for itself
    layers: int
    heads: int


def vision_tower(encoder: Any) -> Any:
    model = encoder.model
    tower = getattr(model, "vision_model", None)
    if tower is None:
        raise ValueError(f"{type(model).__name__} has no vision tower.")
    return tower


def image_attention(encoder: Any, image: Any) -> ImageAttention:
    """The class token's attention over the image's patches in every layer and head of the dual encoder's ViT
    (the CLIP the retrieval page trained, or a hub CLIP)."""
    import torch
    from PIL import Image

    from shared.clip import pixel_values

    if image is None:
        raise ValueError("Choose or upload an image first.")
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    tower = vision_tower(encoder)
    config = tower.config
    size = int(config.image_size)
    channels = int(getattr(config, "num_channels", 3))
    converted = image.convert("L" if channels == 1 else "RGB")
    pixels = pixel_values(encoder.processor, [converted], channels, size)  # as the retrieval page embeds it
    with torch.no_grad():
        weight = next(tower.parameters())  # CLIP's vision transformer is a plain Module: no .device / .dtype
        out = tower(pixel_values=pixels.to(weight.device, weight.dtype), output_attentions=True)
    if not out.attentions or out.attentions[0] is None:
        raise ValueError(f"{encoder.model.config.model_type} did not return attention weights: it needs eager "
                         "attention.")
    weights = torch.stack([a[0] for a in out.attentions]).float().cpu().numpy()  # [L, H, 1 + P, 1 + P]
    patches = weights.shape[-1] - 1
    grid = int(round(patches ** 0.5))
    if grid * grid != patches:
        raise ValueError(f"the ViT has {patches} patch tokens besides the class token, not a square grid.")
    class_attention = weights[:, :, 0, 1:].reshape(weights.shape[0], weights.shape[1], grid, grid)
    shown = np.asarray(converted.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    return ImageAttention(encoder.model.config.model_type, shown, grid, class_attention, weights[:, :, 0, 0],
                          weights.shape[0], weights.shape[1])


def patch_entropy(view: ImageAttention) -> list[float]:
    """Per layer, the entropy in bits of the class token's attention over the patches (renormalised without its
    own share), averaged over the heads: log2(patches) when it looks everywhere alike, 0 on a single patch."""
    weights = view.class_attention.reshape(view.layers, view.heads, -1).astype(np.float64)
    weights = weights / weights.sum(-1, keepdims=True)
    return [float(v) for v in -(weights * np.log2(weights + 1e-12)).sum(-1).mean(-1)]


def overlay(view: ImageAttention, layer: int, head: int | None = None, side: int = 224) -> np.ndarray:
    """The image with the class token's attention laid over it (bright = looked at), `side` pixels square; one
    head, or the mean over heads (None). Each patch's weight is shared by its pixels, so the grid shows."""
    from PIL import Image

    layer = check_index("layer", layer, view.layers)
    attention = view.class_attention[layer]
    attention = attention.mean(0) if head is None else attention[check_index("head", head, view.heads)]
    scaled = attention / max(float(attention.max()), 1e-12)
    heat = np.asarray(Image.fromarray((scaled * 255).astype(np.uint8)).resize((side, side),
                                                                              Image.Resampling.NEAREST)) / 255.0
    base = np.asarray(Image.fromarray(view.image).resize((side, side), Image.Resampling.BICUBIC)).astype(np.float64)
    # Dim what is not looked at, and tint what is: the picture stays readable under the weights.
    red = np.stack([heat, 0.35 * heat, np.zeros_like(heat)], axis=-1) * 255
    blended = base * (0.25 + 0.75 * heat[..., None]) * 0.6 + red * 0.4
    return np.clip(blended, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def sample_images() -> dict[str, Any]:
    """Pictures to look at without uploading one: the first Fashion-MNIST test image of each class (what the
    retrieval page's small CLIP was trained on) and the bundled sample photos (for a hub CLIP)."""
    from pathlib import Path

    from PIL import Image

    from shared.assets import ensure, read_photos

    samples: dict[str, Any] = {}
    with np.load(ensure("fashion-mnist") / "fashion-mnist.npz") as data:
        images, labels, names = data["test_images"], data["test_labels"], data["label_names"]
        for label, name in enumerate(names):
            first = int(np.flatnonzero(labels == label)[0])
            samples[f"Fashion-MNIST: {name} (test #{first})"] = Image.fromarray(images[first], mode="L")
    for photo in read_photos():
        with Image.open(Path(photo["path"])) as opened:
            samples[f"photo: {photo['caption']}"] = opened.convert("RGB")
    return samples
