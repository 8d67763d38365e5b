"""The models this page opens, loaded through the shared cache in float32 with eager attention (the attention
weights are returned only by the eager implementation, and fp32 is what the from-scratch checks compare in).

    encoder = load_encoder(None)   # the encoder role's default: MiniLM offline, its hub id online
    decoder = load_decoder(None)   # the chat-lm role's default: SmolLM2-135M-Instruct
    vision = load_vision(None)     # the clip role's default: a hub CLIP, or the CLIP the retrieval page trained
    tokenizer = load_tokenizer("local:all-minilm-l6-v2")

Each is its own cache entry (the options are part of the key), so the other pages' sdpa copies are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import shared.loaders  # noqa: F401  (registers the loader kinds asked for below)
from shared.cache import LoadSpec, get_cache
from shared.hub import LOCAL_PREFIX
from shared.registry import ModelSource, choices, resolve

EAGER = (("attn_implementation", "eager"),)
TOKENIZER_ROLES = ("encoder", "chat-lm", "classifier", "clip")  # roles whose tokenizers the page compares


@dataclass
class Opened:
    source: ModelSource
    tokenizer: Any
    model: Any  # in eval mode, float32, eager attention


def _opened(role: str, kind: str, choice: str | None) -> Opened:
    source = resolve(role, choice)
    cache = get_cache()
    tokenizer = cache.get(LoadSpec("tokenizer", source.location, label=source.label))
    model = cache.get(LoadSpec(kind, source.location, dtype="float32", options=EAGER,
                               label=f"{source.label} (eager attention)"))
    return Opened(source, tokenizer, model)


def load_encoder(choice: str | None = None) -> Opened:
    """The encoder role's model (a BERT-family `AutoModel`)."""
    return _opened("encoder", "encoder", choice)


def load_decoder(choice: str | None = None) -> Opened:
    """The chat-lm role's model (an `AutoModelForCausalLM`)."""
    return _opened("chat-lm", "causal-lm", choice)


def load_vision(choice: str | None = None):
    """The clip role's dual encoder (shared/clip.DualEncoder) with eager attention: `.model.vision_model` is the
    ViT whose class-token attention the page draws, `.processor` prepares its images."""
    source = resolve("clip", choice)
    return get_cache().get(LoadSpec("clip", source.location, dtype="float32", options=EAGER,
                                    label=f"{source.label} (eager attention)"))


def tokenizer_choices() -> list[str]:
    """Every tokenizer the page can compare: the choices of the text roles, each once, in role order."""
    seen: dict[str, None] = {}
    for role in TOKENIZER_ROLES:
        for label in choices(role):
            seen.setdefault(label, None)
    return list(seen)


def default_tokenizers() -> list[str]:
    """The encoder's and the causal LM's (WordPiece beside BPE), as resolved here (offline or hub)."""
    return [resolve(role).label for role in ("encoder", "chat-lm")]


def load_tokenizer(label: str) -> Any:
    """A tokenizer by its label (a hub id or a local: label), through the cache; refused like any model choice."""
    role = "encoder"
    if not label.startswith(LOCAL_PREFIX) and label in choices("chat-lm"):
        role = "chat-lm"
    source = resolve(role, label)
    return get_cache().get(LoadSpec("tokenizer", source.location, label=source.label))
