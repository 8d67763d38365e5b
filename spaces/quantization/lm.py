"""The quantization page's causal-LM family: the chat-LM role's model (SmolLM2-135M-Instruct offline) in every
precision and runtime, each measured the same way, side by side with float32 PyTorch.

    python -m spaces.quantization.lm                               # every CPU variant, one process each, a table
    python -m spaces.quantization.lm --variants onnx-int8 genai-int4 --text-tokens 128 --fresh

The page's runner (spaces/quantization/runner.py) calls `measure(variant, params, work_dir, progress, stop)` in a
fresh process per variant, the reference (pytorch-fp32) first. The variants:

    pytorch-fp32, pytorch-bf16           transformers itself (bf16 is emulated on CPUs without AVX-512 BF16 / AMX)
    onnx-fp32, onnx-int8, onnx-int4      the suite's own fused decoder (shared/onnx_lm.py), the prompting page's
                                         builds reused (same store, same names)
    optimum-ort                          optimum's traced export (ORTModelForCausalLM), fp32
    genai-int4, genai-int8               onnxruntime-genai's model builder and its generator
    gpu-bitsandbytes-int8, -nf4          bitsandbytes on a CUDA GPU (Unavailable on a CPU)

What is measured, batch 1, one variant per process:
- The tokens. The quality text is the offline movie-review sentences (shared/assets.py) joined into one passage and
  cut to `text_tokens` tokens; the prompt is `prompt` through the chat template. Every variant reads the same token
  ids, made by the transformers tokenizer (onnxruntime-genai's own tokenizer is not used).
- Quality, teacher-forced: the model reads the quality text; at each position the distribution of the next token.
  "perplexity" = exp(mean negative log-likelihood of the true next tokens); "top-1 agreement" = share of positions
  whose most likely token is fp32's; "mean KL" = KL(fp32 || variant) in nats, averaged over positions. The
  reference writes its log-probabilities to work_dir/reference.npz as float16, with its argmax and Σ p log p of
  each position computed in full precision (see `Reference`: the float16 rounding only weighs the terms, and fp32
  against itself is exactly 0); the other variants read it.
- "prefill tok/s": text_tokens / the median time to read the whole quality text in one call, from an empty KV
  cache, up to the next token's choice (what a long prompt costs before the first new token appears).
- Decode: the prompt is read, then `new_tokens` greedy tokens are made one at a time with the KV cache. Each step
  after the first token (one token in, the next token's logits out, argmax included) is timed, over `repeats` runs
  after a warm-up run: "p50 ms" / "p95 ms" per token, "decode tok/s" = 1000 / mean ms. End-of-text does not end
  the timed runs; "greedy output" is the first run's text, cut at the first end-of-text token.
- "memory MB": PyTorch, the bytes of the parameters and buffers; ONNX Runtime-based, the growth of this process's
  resident memory while the session loads (what ONNX Runtime keeps after pre-packing the weights).
- "disk MB": the variant's model files (for bf16 and bitsandbytes, converted at load, the bytes of the weights as
  they are held, i.e. what saving them would take). "build s": the time to build it in this run, 0.0 when the
  build came from the store. Builds run in a child process, so this process's peak memory is the variant's own,
  not the conversion's; Stop ends a build too.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared.jobs import Progress, no_progress
from spaces.quantization.common import (Unavailable, Variant, check_stop, folder_bytes, format_note, latency, report,
                                        rss_bytes, torch_bytes)

FAMILY = "lm"
REFERENCE = "pytorch-fp32"
VARIANTS: tuple[Variant, ...] = (
    Variant("pytorch-fp32", "PyTorch fp32", "PyTorch", "fp32",
            description="the model as trained: transformers, float32 weights and math"),
    Variant("pytorch-bf16", "PyTorch bf16", "PyTorch", "bf16",
            description="weights and math in bfloat16, converted when the model loads"),
    Variant("onnx-fp32", "ONNX Runtime fp32 (suite decoder)", "ONNX Runtime", "fp32",
            description="the suite's hand-built fused ONNX graph (shared/onnx_lm.py), float32 weights"),
    Variant("onnx-int8", "ONNX Runtime int8 (suite decoder)", "ONNX Runtime", "int8 weights",
            description="the suite's graph with int8 weights in blocks of 32 (MatMulNBits), activations quantized "
                        "to int8 on the fly"),
    Variant("onnx-int4", "ONNX Runtime int4 (suite decoder)", "ONNX Runtime", "int4 weights",
            description="the suite's graph with int4 weights in blocks of 32 (MatMulNBits), activations quantized "
                        "to int8 on the fly"),
    Variant("optimum-ort", "optimum ORTModelForCausalLM fp32", "optimum", "fp32", needs="optimum",
            description="optimum's traced export (text-generation-with-past) run by ONNX Runtime"),
    Variant("genai-int4", "ONNX Runtime GenAI int4", "onnxruntime-genai", "int4 weights", needs="onnxruntime-genai",
            description="onnxruntime-genai's model builder (int4 MatMulNBits weights; a tied embedding table is "
                        "shared with the LM head, so it is int4 too) and its generator"),
    Variant("genai-int8", "ONNX Runtime GenAI int8", "onnxruntime-genai", "int8 weights", needs="onnxruntime-genai",
            description="onnxruntime-genai's model builder (int8 MatMulNBits weights) and its generator"),
    Variant("gpu-bitsandbytes-int8", "bitsandbytes int8 (GPU)", "bitsandbytes", "int8 weights", needs="gpu",
            description="LLM.int8(): int8 weights with the outlier features kept in 16 bits"),
    Variant("gpu-bitsandbytes-nf4", "bitsandbytes NF4 (GPU)", "bitsandbytes", "nf4", needs="gpu",
            description="4-bit NormalFloat weights in blocks of 64, bf16 math"),
)
QUALITY = ("top-1 agreement", "higher")

DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."
DEFAULTS: dict[str, Any] = {"source": "", "label": "", "text_tokens": 256, "new_tokens": 32, "prompt": DEFAULT_PROMPT,
                            "repeats": 3}
LIMITS = {"text_tokens": (8, 2048), "new_tokens": (2, 256), "repeats": (1, 20)}  # (lowest, highest), whole numbers
MAX_PROMPT_CHARS = 2000
REFERENCE_FILE = "reference.npz"
BUILD_INFO = "playground-build.json"  # written last into an optimum / genai build: the build is complete
SOURCE_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "*.jinja"]  # as shared/loaders.py
CHUNK_ROWS = 64  # positions converted to log-probabilities at a time (float64 rows of the whole vocabulary)
SUITE_WEIGHTS = {"onnx-fp32": "fp32", "onnx-int8": "int8", "onnx-int4": "int4"}
GENAI_PRECISIONS = {"genai-int4": "int4", "genai-int8": "int8"}
# For a model with tied embeddings (SmolLM2) the builder shares one quantized table between the embedding and the
# LM head. That table can only be 4-bit: without shared_embeddings=false its int8 build logs "Gather only supports
# 4 bits quantization" and still ships a 4-bit embedding (seen with 0.15.2), so the int8 variant would not be int8.
GENAI_EXTRA_OPTIONS = {"int4": [], "int8": ["shared_embeddings=false"]}
BUILT_IN_CHILD = ("onnx-fp32", "onnx-int8", "onnx-int4", "optimum-ort")  # built by `python -m ... --build`


def variant_named(name: str) -> Variant:
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    raise ValueError(f"variant must be one of {[v.name for v in VARIANTS]}, got {name!r}")


# --------------------------------------------------------------------------------------------------------
# Settings and the tokens every variant reads
# --------------------------------------------------------------------------------------------------------


def default_params(**overrides: Any) -> dict[str, Any]:
    """The settings of one comparison (JSON-serialisable), `overrides` checked: ValueError names a bad one.
    No source means the chat-LM role's model (offline: SmolLM2-135M-Instruct)."""
    from shared.checks import check_range

    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown LM setting(s) {unknown}; the settings are {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    if not params["source"]:
        from shared.registry import resolve

        source = resolve("chat-lm")
        params["source"], params["label"] = source.location, params["label"] or source.label
    params["source"] = str(params["source"])
    params["label"] = str(params["label"] or params["source"])
    for name, (low, high) in LIMITS.items():
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a whole number, got {value!r}.")
        check_range(name, value, low, high, whole=True)
        params[name] = int(value)
    prompt = params["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be some text, got an empty one.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt must be at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}.")
    return params


def source_folder(source: str) -> str:
    """`source` as a local folder (a hub id's files downloaded once, as the prompting page's ONNX loader does)."""
    from shared.loaders import local_folder

    return local_folder(source, SOURCE_PATTERNS)


def load_tokenizer(folder: str) -> Any:
    from shared.cache import LoadSpec
    from shared.loaders import load_tokenizer as load

    return load(LoadSpec("tokenizer", folder), "cpu", "float32")


def quality_ids(tokenizer: Any, count: int) -> list[int]:
    """The quality text's first `count` token ids: the offline movie-review sentences, in file order, joined."""
    from shared.assets import read_sentiment

    sentences = [row["text"] for row in read_sentiment("movies")]
    take = 8
    while True:
        ids = list(tokenizer(" ".join(sentences[:take]))["input_ids"])
        if len(ids) >= count:
            return ids[:count]
        if take >= len(sentences):
            raise ValueError(f"the quality text has only {len(ids)} tokens; text_tokens must be at most that")
        take *= 2


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """`prompt` as the user's turn through the chat template (plain text for a tokenizer without one)."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # a BatchEncoding in some versions
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return list(tokenizer(prompt)["input_ids"])


def end_ids(tokenizer: Any, folder: str) -> set[int]:
    """The tokens that end a reply: the tokenizer's end-of-text and the model config's."""
    from transformers import AutoConfig

    found = {tokenizer.eos_token_id}
    eos = getattr(AutoConfig.from_pretrained(folder, trust_remote_code=False), "eos_token_id", None)
    found.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return {int(i) for i in found if i is not None}


# --------------------------------------------------------------------------------------------------------
# Quality: log-probabilities, perplexity, agreement and KL against fp32
# --------------------------------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class Scores:
    """What a variant's teacher-forced logits say: one row per position of the text but the last."""

    logprobs: np.ndarray  # float32 [positions, vocabulary]: log p(token | the text so far)
    argmax: np.ndarray  # int64 [positions]: the most likely next token
    nll: np.ndarray  # float64 [positions]: -log p(the true next token)

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll.mean()))


def score(logits: np.ndarray, ids: list[int]) -> Scores:
    """`logits` [len(ids) - 1, vocabulary] (row t predicts ids[t + 1]) as log-probabilities and losses."""
    logits = np.asarray(logits)
    targets = np.asarray(ids[1:], dtype=np.int64)
    if logits.ndim != 2 or logits.shape[0] != len(targets):
        raise ValueError(f"expected logits of shape [{len(targets)}, vocabulary], got {list(logits.shape)}")
    logprobs = np.empty(logits.shape, dtype=np.float32)
    nll = np.empty(len(targets), dtype=np.float64)
    for start in range(0, len(targets), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        chunk = log_softmax(logits[rows])
        nll[rows] = -chunk[np.arange(len(chunk)), targets[rows]]
        logprobs[rows] = chunk
    return Scores(logprobs, logits.argmax(axis=-1).astype(np.int64), nll)


def perplexity(logprobs: np.ndarray, ids: list[int]) -> float:
    """exp(mean negative log-likelihood) of ids[1:], row t of `logprobs` being the distribution after ids[:t + 1]."""
    targets = np.asarray(ids[1:], dtype=np.int64)
    picked = np.asarray(logprobs, dtype=np.float64)[np.arange(len(targets)), targets]
    return float(np.exp(-picked.mean()))


def expected_logprob(weights: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """Σ_v exp(weights[t, v]) · logprobs[t, v] for each row t, in float64: the expectation of one distribution's
    log-probabilities under another's probabilities (given as log-probabilities)."""
    if weights.shape != logprobs.shape:
        raise ValueError(f"the log-probabilities differ in shape: {list(weights.shape)} and {list(logprobs.shape)}")
    out = np.empty(weights.shape[0], dtype=np.float64)
    for start in range(0, weights.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        p = np.exp(np.asarray(weights[rows], dtype=np.float64))
        out[rows] = (p * np.asarray(logprobs[rows], dtype=np.float64)).sum(axis=-1)
    return out


@dataclass
class Reference:
    """fp32's teacher-forced view of the quality text, as REFERENCE_FILE keeps it.

    KL(p || q) = Σ p log p − Σ p log q. The file keeps p as float16 log-probabilities (half the bytes) and the
    first term exactly, computed from fp32's own float32 log-probabilities; so the float16 rounding enters only
    as the weights p (a second-order error), and fp32 against itself gives exactly 0."""

    ids: np.ndarray  # int64 [tokens]: the text it was computed on
    logprobs: np.ndarray  # float16 [tokens - 1, vocabulary]
    argmax: np.ndarray  # int64 [tokens - 1]
    self_term: np.ndarray  # float64 [tokens - 1]: Σ p log p (minus the entropy), in the weights above

    @classmethod
    def of(cls, ids: list[int], scores: Scores) -> Reference:
        weights = scores.logprobs.astype(np.float16)
        return cls(np.asarray(ids, dtype=np.int64), weights, scores.argmax,
                   expected_logprob(weights, scores.logprobs))

    def kl(self, logprobs: np.ndarray) -> np.ndarray:
        """KL(fp32 || a variant) at each position, in nats, from the variant's log-probabilities."""
        return self.self_term - expected_logprob(self.logprobs, logprobs)


def write_reference(path: Path, reference: Reference) -> Reference:
    """Keep fp32's scores: written to a temporary file beside `path` and renamed, so a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.parent / f".{path.stem}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(scratch, "wb") as handle:
            np.savez(handle, ids=reference.ids, logprobs=reference.logprobs, argmax=reference.argmax,
                     self_term=reference.self_term)
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    return reference


def read_reference(path: Path, ids: list[int]) -> Reference | None:
    """The kept reference for exactly these token ids, or None (missing, unreadable, or another text)."""
    try:
        with np.load(path) as data:
            kept = Reference(data["ids"], data["logprobs"], data["argmax"], data["self_term"])
    except (OSError, ValueError, KeyError):
        return None
    return kept if np.array_equal(kept.ids, np.asarray(ids, dtype=np.int64)) else None


def compare(reference: Reference, scores: Scores) -> dict[str, float]:
    """Top-1 agreement and mean KL(fp32 || variant) of a variant's scores against the reference's."""
    if scores.logprobs.shape != reference.logprobs.shape:
        raise ValueError(f"the variant's logits {list(scores.logprobs.shape)} do not match the reference's "
                         f"{list(reference.logprobs.shape)} (another vocabulary or text)")
    kl = float(reference.kl(scores.logprobs).mean())
    # A KL is never negative; float16 weights (summing to 1 ± 1e-4) can make one of ~1e-12 look so.
    return {"top-1 agreement": float((scores.argmax == reference.argmax).mean()), "mean KL": max(0.0, kl)}


# --------------------------------------------------------------------------------------------------------
# The runtimes, behind one small interface
# --------------------------------------------------------------------------------------------------------


class Decoder(Protocol):
    """One loaded variant. Token ids in, greedy tokens out; the state is whatever the runtime keeps (KV cache)."""

    def next_token_logits(self, ids: list[int], stop: threading.Event | None) -> np.ndarray:
        """float32 [len(ids) - 1, vocabulary]: row t is the distribution of ids[t + 1] given ids[:t + 1]."""

    def prefill(self, ids: list[int], room: int) -> tuple[int, Any]:
        """Read `ids` from an empty cache: (the greedy next token, the state). `room`: tokens that may follow."""

    def step(self, state: Any, token: int) -> tuple[int, Any]:
        """Append `token`: (the greedy next token, the state after it)."""


class TorchDecoder:
    """A transformers causal LM with its DynamicCache."""

    def __init__(self, model: Any):
        self.model = model
        self.device = next(model.parameters()).device

    def _tensor(self, ids: list[int]):
        import torch

        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def next_token_logits(self, ids: list[int], stop: threading.Event | None) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(self._tensor(ids[:-1])).logits[0].float().cpu().numpy()

    def prefill(self, ids: list[int], room: int) -> tuple[int, Any]:
        import torch
        from transformers import DynamicCache

        with torch.inference_mode():
            out = self.model(self._tensor(ids), past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
        return int(out.logits[0, -1].argmax()), out.past_key_values

    def step(self, state: Any, token: int) -> tuple[int, Any]:
        import torch

        with torch.inference_mode():
            out = self.model(self._tensor([token]), past_key_values=state, use_cache=True)
        return int(out.logits[0, -1].argmax()), out.past_key_values


class SuiteDecoder:
    """shared/onnx_lm.py's OnnxCausalLM. Its graph returns only the last position's logits, so the teacher-forced
    view reads the text one token at a time through the KV cache (the same numbers as one pass, by construction)."""

    def __init__(self, lm: Any):
        self.lm = lm

    def next_token_logits(self, ids: list[int], stop: threading.Event | None) -> np.ndarray:
        first, state = self.lm.prefill(ids[:1])
        rows = np.empty((len(ids) - 1, first.shape[-1]), dtype=np.float32)
        rows[0] = first
        for t, token in enumerate(ids[1:-1], start=1):
            check_stop(stop)
            rows[t] = self.lm.step(state, token)
        return rows

    def prefill(self, ids: list[int], room: int) -> tuple[int, Any]:
        logits, state = self.lm.prefill(ids)
        return int(logits.argmax()), state

    def step(self, state: Any, token: int) -> tuple[int, Any]:
        return int(self.lm.step(state, token).argmax()), state


class OptimumDecoder:
    """optimum's ORTModelForCausalLM, called as a transformers model (torch tensors in and out)."""

    def __init__(self, model: Any):
        self.model = model

    def _run(self, ids: list[int], past: Any, total: int) -> tuple[Any, Any]:
        import torch

        out = self.model(input_ids=torch.tensor([ids], dtype=torch.long),
                         attention_mask=torch.ones(1, total, dtype=torch.long), past_key_values=past, use_cache=True)
        return out.logits[0], out.past_key_values

    def next_token_logits(self, ids: list[int], stop: threading.Event | None) -> np.ndarray:
        logits, _ = self._run(ids[:-1], None, len(ids) - 1)
        return logits.float().numpy()

    def prefill(self, ids: list[int], room: int) -> tuple[int, Any]:
        logits, past = self._run(ids, None, len(ids))
        return int(logits[-1].argmax()), (past, len(ids))

    def step(self, state: Any, token: int) -> tuple[int, Any]:
        past, length = state
        logits, past = self._run([token], past, length + 1)
        return int(logits[-1].argmax()), (past, length + 1)


class GenaiDecoder:
    """onnxruntime-genai's Model and Generator. Tokens go in with `append_tokens` (the prompt, then each chosen
    token), so the greedy choice is the same argmax as for every other runtime (timed on SmolLM2 int4, this loop
    and genai's own `generate_next_token` loop took the same time per token, within 4%); a Generator sizes its
    KV buffer once, for the prompt plus `room`."""

    def __init__(self, model: Any):
        self.model = model

    def _generator(self, length: int) -> Any:
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=length, do_sample=False)
        return og.Generator(self.model, params)

    def next_token_logits(self, ids: list[int], stop: threading.Event | None) -> np.ndarray:
        generator = self._generator(len(ids))
        generator.append_tokens(np.asarray(ids[:-1], dtype=np.int32))
        return np.array(generator.get_output("logits")[0], dtype=np.float32)  # [positions, vocabulary]

    def prefill(self, ids: list[int], room: int) -> tuple[int, Any]:
        generator = self._generator(len(ids) + room + 1)
        generator.append_tokens(np.asarray(ids, dtype=np.int32))
        return int(generator.get_logits().reshape(-1).argmax()), generator

    def step(self, state: Any, token: int) -> tuple[int, Any]:
        state.append_tokens(np.asarray([token], dtype=np.int32))
        return int(state.get_logits().reshape(-1).argmax()), state


# --------------------------------------------------------------------------------------------------------
# Builds: made once, in child processes, stored under PLAYGROUND_HOME
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    folder: Path
    seconds: float  # time spent building in this run; 0.0 when the build came from the store


class _NotBuilt(Exception):
    """Raised instead of loading the torch model: asks shared/onnx_lm.stored_build whether a build exists."""


def _refuse_to_build() -> Any:
    raise _NotBuilt


def suite_build_name(label: str, weights: str) -> str:
    """The name the prompting page's loader gives a build (shared/loaders.py load_onnx_causal_lm), so the two pages
    share one build of each model and format."""
    return f"{label} (ONNX {weights})".replace("local:", "").replace("/", "--")


def stored_suite_build(folder: str, label: str, weights: str) -> Path | None:
    """The suite decoder's stored build of `folder` in `weights`, or None when there is none yet."""
    from shared.onnx_lm import stored_build
    from shared.settings import read_settings

    try:
        return stored_build(folder, weights, _refuse_to_build, read_settings().onnx_dir,
                            name=suite_build_name(label, weights))
    except _NotBuilt:
        return None


def builds_dir() -> Path:
    from shared.settings import read_settings

    return read_settings().home / "quantization" / "builds"


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def own_build_folder(variant: str, folder: str, label: str) -> Path:
    """Where the optimum / genai build of `folder` lives: keyed by the source's files, the variant, the tool's
    version and its options (shared/onnx_lm.fingerprint), under PLAYGROUND_HOME/quantization/builds."""
    from shared.onnx_lm import fingerprint

    if variant == "optimum-ort":
        key = f"{variant}|optimum-onnx {_package_version('optimum-onnx')}|text-generation-with-past"
    else:
        precision = GENAI_PRECISIONS[variant]
        key = f"{variant}|onnxruntime-genai {_package_version('onnxruntime-genai')}|{GENAI_EXTRA_OPTIONS[precision]}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", label.replace("local:", "")).strip("-") or "model"
    return builds_dir() / f"{safe}-{variant}-{fingerprint(folder, key)}"


def scratch_for(target: Path) -> Path:
    """A fresh temporary folder beside `target`, to build into."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))


def publish(scratch: Path, target: Path, seconds: float) -> Path:
    """Move a complete build from `scratch` to `target` in one rename (BUILD_INFO written last, so no reader ever
    sees half a build); older builds of the same model and variant are removed."""
    (scratch / BUILD_INFO).write_text(json.dumps({"target": target.name, "seconds": seconds}))
    if (target / BUILD_INFO).is_file():  # another process finished first
        shutil.rmtree(scratch)
    else:
        shutil.rmtree(target, ignore_errors=True)
        scratch.rename(target)
    for old in target.parent.glob(f"{target.name.rsplit('-', 1)[0]}-*"):
        if old != target and old.is_dir() and (old / BUILD_INFO).is_file():
            shutil.rmtree(old, ignore_errors=True)
    return target


def stored_build_folder(variant: str, folder: str, label: str) -> Path | None:
    """The variant's stored build, or None when it has not been built (variants without a build: None)."""
    if variant in SUITE_WEIGHTS:
        return stored_suite_build(folder, label, SUITE_WEIGHTS[variant])
    if variant == "optimum-ort" or variant in GENAI_PRECISIONS:
        target = own_build_folder(variant, folder, label)
        return target if (target / BUILD_INFO).is_file() else None
    return None


def build_in_process(variants: list[str], folder: str, label: str) -> dict[str, float]:
    """Build suite ONNX and optimum variants here, one after the other (what the child process started by
    `build_many` runs); the seconds each took, also printed as `BUILT {"variant": ..., "seconds": ...}` lines."""
    from shared.cache import LoadSpec
    from shared.loaders import load_pretrained
    from shared.onnx_lm import stored_build
    from shared.settings import read_settings

    def fp32_model() -> Any:
        return load_pretrained("AutoModelForCausalLM")(LoadSpec("causal-lm", folder), "cpu", "float32")

    took = {}
    for variant in variants:
        started = time.perf_counter()
        if variant in SUITE_WEIGHTS:
            weights = SUITE_WEIGHTS[variant]
            stored_build(folder, weights, fp32_model, read_settings().onnx_dir, name=suite_build_name(label, weights))
        elif variant == "optimum-ort":
            from optimum.exporters.onnx import main_export

            target = own_build_folder(variant, folder, label)
            scratch = scratch_for(target)
            try:
                main_export(folder, scratch, task="text-generation-with-past", device="cpu", do_validation=False,
                            trust_remote_code=False)
                publish(scratch, target, time.perf_counter() - started)
            except BaseException:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
        else:
            raise ValueError(f"build_in_process builds {BUILT_IN_CHILD}, not {variant!r}")
        took[variant] = time.perf_counter() - started
        print("BUILT " + json.dumps({"variant": variant, "seconds": took[variant]}), flush=True)
    return took


def _die_with_parent() -> None:
    """In a build child (Linux): end when the process that started it ends, as the runner's Stop ends a worker."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """A build running in a child process, its output going to a temporary file."""

    what: str  # what the page is told: "building onnx-int8"
    process: subprocess.Popen
    log: Any  # the open temporary file of its stdout and stderr
    started: float

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def failure(self) -> str:
        tail = [line.strip() for line in self.output()[-4000:].splitlines() if line.strip()]
        return f"{self.what} failed (exit code {self.process.returncode}): {' | '.join(tail[-3:])[-600:]}"


def start_child(command: list[str], what: str, env: dict[str, str] | None = None) -> Child:
    from shared.settings import REPO_ROOT

    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(command, cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
    return Child(what, process, log, time.perf_counter())


def wait_for(children: list[Child], progress: Progress, stop: threading.Event | None) -> None:
    """Wait for every child, reporting once a second. Stop interrupts them all (SIGINT, so a Python child removes
    its half-written folder; killed if not ended 10 s later) and raises Stopped."""
    try:
        while any(child.process.poll() is None for child in children):
            check_stop(stop)
            running = [c for c in children if c.process.poll() is None]
            elapsed = time.perf_counter() - min(c.started for c in running)
            report(progress, 0.05, f"{', '.join(c.what for c in running)} (first time only): {elapsed:.0f} s")
            try:
                running[0].process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
    finally:
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def build_many(variants: list[str], folder: str, label: str, progress: Progress = no_progress,
               stop: threading.Event | None = None) -> dict[str, Build]:
    """Each variant's build: from the store, or made now in child processes running side by side (their memory is
    not this process's): one for the suite decoder and optimum builds, one per onnxruntime-genai precision (its
    model builder's command line, `python -m onnxruntime_genai.models.builder`)."""
    # 1. Check the variants, and take what is stored already.
    unknown = [v for v in variants if v not in BUILT_IN_CHILD and v not in GENAI_PRECISIONS]
    if unknown:
        raise ValueError(f"only {[*BUILT_IN_CHILD, *GENAI_PRECISIONS]} are built; not {unknown}")
    builds = {v: Build(found, 0.0) for v in variants if (found := stored_build_folder(v, folder, label))}
    missing = [v for v in variants if v not in builds]
    if not missing:
        return builds
    if any(v in GENAI_PRECISIONS for v in missing):
        from importlib.util import find_spec

        if find_spec("onnx_ir") is None:
            raise Unavailable("needs the onnx-ir package for onnxruntime-genai's model builder (pip install onnx-ir)")
    # 2. Start the children: ours for the suite and optimum builds, the genai builder's into scratch folders.
    children: list[Child] = []
    genai: dict[str, tuple[Child, Path, Path]] = {}  # variant -> (child, scratch, target)
    caches: list[tempfile.TemporaryDirectory] = []
    try:
        ours = [v for v in missing if v in BUILT_IN_CHILD]
        if ours:
            command = [sys.executable, "-m", "spaces.quantization.lm", "--build", *ours, "--source", folder,
                       "--label", label]
            children.append(start_child(command, f"building {', '.join(ours)}"))
        for variant in [v for v in missing if v in GENAI_PRECISIONS]:
            precision, target = GENAI_PRECISIONS[variant], own_build_folder(variant, folder, label)
            scratch = scratch_for(target)
            caches.append(tempfile.TemporaryDirectory(prefix="genai-cache-"))
            command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", folder, "-o", str(scratch),
                       "-p", precision, "-e", "cpu", "-c", caches[-1].name]
            if GENAI_EXTRA_OPTIONS[precision]:
                command += ["--extra_options", *GENAI_EXTRA_OPTIONS[precision]]
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # it reads the local folder; the hub is not needed
            child = start_child(command, f"building {variant} (onnxruntime-genai's model builder)", env)
            children.append(child)
            genai[variant] = (child, scratch, target)
        # 3. Wait for them all; publish the genai builds that succeeded.
        wait_for(children, progress, stop)
        for variant, (child, scratch, target) in genai.items():
            if child.process.returncode == 0 and (scratch / "genai_config.json").is_file():
                seconds = time.perf_counter() - child.started
                publish(scratch, target, seconds)
                builds[variant] = Build(target, seconds)
        for line in children[0].output().splitlines() if ours else []:
            if line.startswith("BUILT "):
                done = json.loads(line[len("BUILT "):])
                found = stored_build_folder(done["variant"], folder, label)
                if found is not None:
                    builds[done["variant"]] = Build(found, float(done["seconds"]))
    finally:
        for child in children:
            child.log.close()
        for _, scratch, _ in genai.values():
            shutil.rmtree(scratch, ignore_errors=True)  # what a failed or stopped builder left
        for cache in caches:
            cache.cleanup()
    # 4. Every variant asked for is now in the store, or the failures are named.
    failures = [c.failure() for c in children if c.process.returncode != 0]
    left = [v for v in variants if v not in builds]
    if failures or left:
        raise RuntimeError("; ".join(failures) or f"building {left} finished but left no build in the store")
    return builds


def build(variant: str, folder: str, label: str, progress: Progress = no_progress,
          stop: threading.Event | None = None) -> Build:
    """One variant's build, from the store or made now in a child process."""
    return build_many([variant], folder, label, progress, stop)[variant]


def onnx_bytes(folder: Path) -> int:
    """Bytes of a build's model files (the graph and its external weights, not tokenizer or config files)."""
    return sum(folder_bytes(p) for p in folder.iterdir() if p.is_file() and ".onnx" in p.name)


# --------------------------------------------------------------------------------------------------------
# Loading a variant
# --------------------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    decoder: Decoder
    memory_bytes: int
    disk_bytes: int
    device: str  # where it runs: "cpu", "cuda", ...
    notes: list[str]


def check_available(variant: Variant, device: str) -> None:
    """Unavailable (with the reason) when the variant cannot run on this machine."""
    from importlib.util import find_spec

    if variant.needs == "gpu":
        if not device.startswith("cuda"):
            raise Unavailable(f"needs a GPU: bitsandbytes {variant.precision} runs on CUDA only")
        if find_spec("bitsandbytes") is None:
            raise Unavailable("needs the bitsandbytes package (pip install bitsandbytes)")
    elif variant.needs == "optimum":
        if find_spec("optimum") is None or find_spec("optimum.onnxruntime") is None:
            raise Unavailable("needs optimum with its ONNX Runtime backend (pip install optimum-onnx)")
    elif variant.needs == "onnxruntime-genai":
        if find_spec("onnxruntime_genai") is None:
            raise Unavailable("needs the onnxruntime-genai package (pip install onnxruntime-genai)")


def load_torch(folder: str, variant: Variant, device: str) -> Loaded:
    """A PyTorch variant through the suite's loader (shared/loaders.py), on `device`."""
    from shared.cache import LoadSpec
    from shared.loaders import load_pretrained

    options: tuple = ()
    dtype = {"fp32": "float32", "bf16": "bfloat16"}.get(variant.precision, "auto")
    if variant.runtime == "bitsandbytes":
        import torch
        from transformers import BitsAndBytesConfig

        if variant.precision == "nf4":
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_compute_dtype=torch.bfloat16)
            dtype = "bfloat16"
        else:  # LLM.int8()'s kernels take float16 (bf16 inputs are cast to it on every call)
            config = BitsAndBytesConfig(load_in_8bit=True)
            dtype = "float16"
        options = (("quantization_config", config),)
    model = load_pretrained("AutoModelForCausalLM")(LoadSpec("causal-lm", folder, options=options), device, dtype)
    notes = [format_note(variant.precision, device)]
    weights = [p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin")]
    held = torch_bytes(model)
    if variant.name == REFERENCE:
        disk = sum(folder_bytes(p) for p in weights)
    else:
        disk = held
        notes.append("converted at load: disk MB is what its weights would take saved")
    return Loaded(TorchDecoder(model), held, disk, device, [n for n in notes if n])


def load_variant(variant: Variant, folder: str, built: Path | None, device: str) -> Loaded:
    """The variant loaded in this process, with what it holds in memory and on disk."""
    if variant.runtime in ("PyTorch", "bitsandbytes"):
        return load_torch(folder, variant, device)
    # The runtime is imported before the memory is read: what grows after that is the model's.
    if variant.name in SUITE_WEIGHTS:
        import transformers  # noqa: F401  (OnnxCausalLM reads its config with it)

        from shared.onnx_lm import OnnxCausalLM

        before = rss_bytes()
        decoder: Decoder = SuiteDecoder(OnnxCausalLM(built))
    elif variant.name == "optimum-ort":
        from optimum.onnxruntime import ORTModelForCausalLM

        before = rss_bytes()
        decoder = OptimumDecoder(ORTModelForCausalLM.from_pretrained(built, use_cache=True))
    else:
        import onnxruntime_genai as og

        before = rss_bytes()
        decoder = GenaiDecoder(og.Model(str(built)))
    memory = max(0, rss_bytes() - before)
    notes = [] if device == "cpu" else ["ONNX Runtime on the CPU (the GPU is not used)"]
    if "int" in variant.precision:  # MatMulNBits at accuracy level 4: int8 dot products, whatever the weights
        notes.append(format_note("int8"))
    return Loaded(decoder, memory, onnx_bytes(built), "cpu", [n for n in notes if n])


def reference_scores(folder: str, text: list[int], device: str, stop: threading.Event | None) -> Scores:
    """fp32 PyTorch's scores on the text, computed here (when the reference's file is missing) and let go."""
    loaded = load_torch(folder, variant_named(REFERENCE), device)
    try:
        return score(loaded.decoder.next_token_logits(text, stop), text)
    finally:
        del loaded
        gc.collect()


# --------------------------------------------------------------------------------------------------------
# Generating and timing
# --------------------------------------------------------------------------------------------------------


def generate(decoder: Decoder, ids: list[int], new_tokens: int, stop: threading.Event | None = None,
             on_token: Callable[[int], None] | None = None) -> tuple[list[int], list[float]]:
    """`new_tokens` greedy tokens after `ids` (end-of-text does not stop it), and the seconds of each step after
    the first token. Checks `stop` before every token; `on_token(token)` is called as each one is chosen."""
    check_stop(stop)
    token, state = decoder.prefill(ids, new_tokens)
    tokens, seconds = [token], []
    if on_token:
        on_token(token)
    for _ in range(new_tokens - 1):
        check_stop(stop)
        started = time.perf_counter()
        token, state = decoder.step(state, token)
        seconds.append(time.perf_counter() - started)
        tokens.append(token)
        if on_token:
            on_token(token)
    return tokens, seconds


def time_decoding(decoder: Decoder, ids: list[int], new_tokens: int, repeats: int, stop: threading.Event | None,
                  progress: Progress, at: float, span: float) -> tuple[dict[str, float], list[int]]:
    """Per-token decode latency over `repeats` greedy runs after a warm-up run, and the first run's tokens."""
    generate(decoder, ids, min(new_tokens, 4), stop)  # warm-up: first-call allocations are not what we time
    steps: list[float] = []
    tokens: list[int] = []
    for run in range(repeats):
        report(progress, at + span * run / repeats, f"timing decode, run {run + 1}/{repeats}")
        made, seconds = generate(decoder, ids, new_tokens, stop)
        tokens = tokens or made
        steps += seconds
    ms = np.asarray(steps) * 1000
    return {"p50 ms": float(np.percentile(ms, 50)), "p95 ms": float(np.percentile(ms, 95)),
            "decode tok/s": float(1000 / ms.mean())}, tokens


def reply_text(tokenizer: Any, tokens: list[int], ends: set[int]) -> str:
    """The greedy tokens as text, up to (not including) the first end-of-text token."""
    cut = next((i for i, t in enumerate(tokens) if t in ends), len(tokens))
    return tokenizer.decode(tokens[:cut], skip_special_tokens=True).strip()


# --------------------------------------------------------------------------------------------------------
# Measuring one variant
# --------------------------------------------------------------------------------------------------------


def _rounded(figures: dict[str, Any]) -> dict[str, Any]:
    digits = {"disk MB": 1, "memory MB": 1, "build s": 1, "load s": 2, "p50 ms": 2, "p95 ms": 2, "decode tok/s": 1,
              "prefill tok/s": 1, "perplexity": 3, "top-1 agreement": 4}
    out = {}
    for key, value in figures.items():
        if key == "mean KL":
            out[key] = float(f"{value:.4g}")
        elif key in digits:
            out[key] = round(float(value), digits[key])
        else:
            out[key] = value
    return out


def measure(variant: str, params: dict[str, Any], work_dir: Path, progress: Progress = no_progress,
            stop: threading.Event | None = None) -> dict[str, Any]:
    """Build (or find), load, score and time one variant; its figures (see the module docstring)."""
    from shared.device import pick_device

    # 1. Check the inputs, and that the variant can run here.
    spec = variant_named(variant)
    params = default_params(**params)
    device = pick_device()
    check_available(spec, device)
    work_dir = Path(work_dir)
    # 2. The tokens every variant reads: the quality text and the prompt.
    report(progress, 0.0, "tokenizing")
    folder = source_folder(params["source"])
    tokenizer = load_tokenizer(folder)
    text = quality_ids(tokenizer, params["text_tokens"])
    prompt = prompt_ids(tokenizer, params["prompt"])
    # 3. fp32's scores: the reference writes them; another variant reads them (computing them if missing).
    reference_path = work_dir / REFERENCE_FILE
    reference = read_reference(reference_path, text)
    if reference is None and variant != REFERENCE:
        report(progress, 0.02, "reference file missing: computing fp32 logits")
        reference = write_reference(reference_path, Reference.of(text, reference_scores(folder, text, device, stop)))
    check_stop(stop)
    # 4. The build: from the store, or made now in a child process (its memory is not this process's).
    built = Build(Path(folder), 0.0)
    if variant in SUITE_WEIGHTS or variant == "optimum-ort" or variant in GENAI_PRECISIONS:
        report(progress, 0.05, "looking for a stored build")
        built = build(variant, folder, params["label"], progress, stop)
    check_stop(stop)
    # 5. Load it.
    report(progress, 0.3, "loading")
    started = time.perf_counter()
    loaded = load_variant(spec, folder, built.folder, device)
    load_s = time.perf_counter() - started
    # 6. Quality: the text read once, teacher-forced, against fp32.
    report(progress, 0.4, f"scoring {len(text)} tokens of text")
    scores = score(loaded.decoder.next_token_logits(text, stop), text)
    if reference is None:  # the reference variant with no file yet: it is the file
        reference = write_reference(reference_path, Reference.of(text, scores))
    quality = compare(reference, scores)
    check_stop(stop)
    # 7. Prefill: the whole text in one call.
    def read_text() -> None:
        loaded.decoder.prefill(text, 1)

    report(progress, 0.55, f"timing prefill of {len(text)} tokens")
    prefill = latency(read_text, warmup=1, repeats=params["repeats"], stop=stop)
    # 8. Decode: greedy tokens after the prompt, one at a time with the KV cache.
    decode, tokens = time_decoding(loaded.decoder, prompt, params["new_tokens"], params["repeats"], stop, progress,
                                   0.65, 0.33)
    notes = list(loaded.notes)
    if variant in GENAI_PRECISIONS:
        notes.append(f"onnxruntime-genai {_package_version('onnxruntime-genai')}")
    report(progress, 1.0, "done")
    return _rounded({
        "disk MB": loaded.disk_bytes / 2**20, "memory MB": loaded.memory_bytes / 2**20, "build s": built.seconds,
        "load s": load_s, "p50 ms": decode["p50 ms"], "p95 ms": decode["p95 ms"],
        "decode tok/s": decode["decode tok/s"], "prefill tok/s": len(text) / (prefill["p50 ms"] / 1000),
        "perplexity": scores.perplexity, "top-1 agreement": quality["top-1 agreement"],
        "mean KL": quality["mean KL"], "greedy output": reply_text(tokenizer, tokens, end_ids(tokenizer, folder)),
        "device": loaded.device, "notes": "; ".join(notes),
    })


# --------------------------------------------------------------------------------------------------------
# Command line: a comparison in the terminal, and the build child
# --------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=None, help="variants to measure (default: all but GPU ones)")
    parser.add_argument("--text-tokens", type=int, default=DEFAULTS["text_tokens"], help="tokens of the quality text")
    parser.add_argument("--new-tokens", type=int, default=DEFAULTS["new_tokens"], help="greedy tokens to time")
    parser.add_argument("--repeats", type=int, default=DEFAULTS["repeats"], help="timed runs of prefill and decode")
    parser.add_argument("--fresh", action="store_true", help="measure again even where a result is kept")
    parser.add_argument("--build", nargs="+", default=None,
                        help="(internal: what build_many runs in a child) build these suite ONNX / optimum variants "
                             "in this process and exit")
    parser.add_argument("--source", default="", help="model folder (default: the chat-LM role's model)")
    parser.add_argument("--label", default="", help="the model's label (names its builds)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build:
        build_in_process(args.build, args.source, args.label or args.source)
        return 0
    from spaces.quantization import runner

    params = default_params(source=args.source, label=args.label, text_tokens=args.text_tokens,
                            new_tokens=args.new_tokens, repeats=args.repeats)
    names = args.variants or [v.name for v in VARIANTS if v.needs != "gpu"]

    def show(fraction: float, text: str) -> None:
        print(f"{fraction:5.0%} {text}", file=sys.stderr)

    rows = list(runner.compare(FAMILY, names, params, progress=show, use_cache=not args.fresh))
    base = next((r.figures for r in rows if r.variant == REFERENCE and r.figures), None)
    for row in rows:
        figures = {k: v for k, v in row.figures.items() if k != "greedy output"}
        ratio = ""
        if base and row.figures.get("decode tok/s"):
            ratio = f" ({row.figures['decode tok/s'] / base['decode tok/s']:.2f}x fp32 decode)"
        print(f"{row.variant} [{row.status}]{ratio} {row.reason}\n  {json.dumps(figures)}\n"
              f"  greedy output: {row.figures.get('greedy output', '')!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
