"""The prompting page's chat models: which backend runs them, and loading them through the model cache.

    chat = load_chat_model(None, backend="auto")   # the chat-lm role's default model on the best backend here
    chat.tokenizer, chat.model, chat.backend, chat.context_length

transformers is imported inside the functions that need it: importing this module stays cheap.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import shared.loaders  # noqa: F401  (registers the standard loader kinds this module asks the cache for)
from shared.cache import LoadSpec, get_cache
from shared.registry import ModelSource, resolve

BACKENDS = {  # key -> what the page calls it
    "auto": "Auto: ONNX Runtime with int8 weights on a CPU, PyTorch on a GPU",
    "onnx-int8": "ONNX Runtime, int8 weights",
    "onnx-fp32": "ONNX Runtime, float32",
    "pytorch": "PyTorch (transformers generate)",
}


@dataclass
class ChatModel:
    source: ModelSource
    tokenizer: Any
    model: Any  # a transformers model, or a shared.onnx_lm.OnnxCausalLM for the ONNX Runtime backends
    backend: str = "pytorch"  # a key of BACKENDS other than "auto"

    @property
    def has_chat_template(self) -> bool:
        return has_chat_template(self.tokenizer)

    @property
    def context_length(self) -> int:
        return context_length(self.model, self.tokenizer)


def pick_backend(backend: str, source: ModelSource) -> str:
    """The backend that runs: "auto" is ONNX Runtime with int8 weights on a CPU (where transformers' eager
    decoding is bound by per-operator overhead) when the model's architecture converts, else PyTorch."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "pytorch":
        return backend
    from shared.device import pick_device

    reason = onnx_refusal(source.location)
    if backend == "auto":
        return "onnx-int8" if reason is None and pick_device() == "cpu" else "pytorch"
    if reason:
        raise ValueError(f"{source.label}: {reason}. Choose the PyTorch backend for it.")
    return backend


@functools.lru_cache(maxsize=32)
def onnx_refusal(location: str) -> str | None:
    """Why the ONNX builder cannot convert the model at `location` (None: it can). Reads only its config."""
    from transformers import AutoConfig

    from shared.cache import short_reason
    from shared.onnx_lm import supports

    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=False)
    except Exception as error:  # not a model, no network, a gated repo: say so rather than fail later
        raise ValueError(f"Could not read the configuration of {location}: {short_reason(error)}") from error
    return supports(config)


def load_chat_model(choice: str | None, dtype: str = "auto", backend: str = "pytorch") -> ChatModel:
    """The chat-lm role's model (the default, or a hub id / local: label) on `backend`, loaded once through
    the cache. The ONNX backends convert the model on first use and keep the build (shared/onnx_lm.py)."""
    source = resolve("chat-lm", choice)
    backend = pick_backend(backend, source)
    cache = get_cache()
    tokenizer = cache.get(LoadSpec("tokenizer", source.location, label=source.label))
    if backend == "pytorch":
        model = cache.get(LoadSpec("causal-lm", source.location, dtype=dtype, label=source.label))
    else:
        weights = backend.removeprefix("onnx-")
        model = cache.get(LoadSpec("onnx-causal-lm", source.location, dtype="float32", device="cpu",
                                   options=(("weights", weights),), label=f"{source.label} (ONNX {weights})"))
    return ChatModel(source, tokenizer, model, backend)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def context_length(model: Any, tokenizer: Any = None) -> int:
    """The longest sequence the model takes: its position embeddings, else the tokenizer's limit, else 2048."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else 2048
