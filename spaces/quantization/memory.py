"""The quantization page's memory calculator: arithmetic, labeled as an estimate, with its formulas.

    size = model_size("7B")                              # or a hub id / local: label: counted from its config
    weights_table(size)                                  # GiB of weights in fp32, fp16, bf16, int8, int4
    plan = training_memory(size, precision="mixed", batch=8, sequence=2048)
    per_gpu(plan, gpus=8)                                # DDP vs FSDP full shard vs FSDP with CPU offload

Bytes per parameter follow the ZeRO paper (Rajbhandari et al. 2020, §3): mixed-precision Adam keeps 16-bit
weights and gradients (2 + 2 bytes) and an fp32 master copy, momentum and variance (4 + 4 + 4 bytes): 16 bytes a
parameter. Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", §4.1, no recomputation, 16-bit activations): s·b·h·(34 + 5·a·s/h) bytes per layer. Real frameworks add
buffers, fragmentation and a CUDA context (about 0.5-1 GiB a GPU): the page says so beside every figure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

GIB = 2**30
BYTES_PER_PARAMETER = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
FORMULAS = """\
- weights = parameters × bytes per parameter (fp32 4, fp16/bf16 2, int8 1, int4 0.5; quantization scales add a little)
- training with Adam, mixed precision: 2 (16-bit weights) + 2 (16-bit gradients) + 12 (fp32 master weights, momentum,
  variance) = 16 bytes per parameter; in fp32: 4 + 4 + 8 = 16 bytes per parameter
- activations per layer ≈ s·b·h·(34 + 5·a·s/h) bytes (sequence s, micro-batch b, hidden h, heads a; 16-bit, no
  recomputation; the 5·a·s/h term is the stored attention matrices, which FlashAttention-style kernels do not keep);
  × layers
- DDP: every GPU holds the weights, gradients and optimizer states, and its own activations
- FSDP full shard (ZeRO-3): weights, gradients and optimizer states ÷ N GPUs, plus the largest layer gathered whole,
  plus the activations
- FSDP with CPU offload: the shards live in CPU memory; a GPU holds the gathered layer(s) and the activations
"""
SIZE_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)
SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
MAX_PARAMETERS = 10e12


@dataclass(frozen=True)
class ModelSize:
    name: str
    parameters: int
    layers: int | None = None  # the architecture, when known: the activations need it
    hidden: int | None = None
    heads: int | None = None
    largest_layer: int | None = None  # parameters of the largest block (what FSDP gathers at once)


def parse_parameter_count(text: str) -> int:
    """'7B' -> 7_000_000_000; '135M', '1.3e9', '22700000' as well."""
    match = SIZE_PATTERN.match(str(text or ""))
    if not match:
        raise ValueError(f"A parameter count is a number with an optional K, M, B or T, like '7B' or '135M'; "
                         f"got {text!r}.")
    count = float(match.group(1)) * SUFFIXES[match.group(2).lower()]
    if not 1 <= count <= MAX_PARAMETERS:
        raise ValueError(f"The parameter count must be between 1 and {MAX_PARAMETERS:.0e}, got {count:.3g}.")
    return int(round(count))


def count_from_config(config: Any, name: str) -> ModelSize:
    """Build the model on the meta device (no weights, no memory) and count its parameters, tied ones once."""
    import torch
    import transformers

    architectures = getattr(config, "architectures", None) or []
    auto = transformers.AutoModelForCausalLM if any("CausalLM" in a for a in architectures) else transformers.AutoModel
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=False)
    parameters = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    layers = getattr(config, "num_hidden_layers", None)
    blocks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers]
    largest = max((sum(p.numel() for p in block.parameters()) for block in blocks[0]), default=None) if blocks else None
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    return ModelSize(name, int(parameters), layers, hidden, heads, largest)


def model_size(text: str, role: str = "chat-lm") -> ModelSize:
    """A parameter count ('7B') or a model: a hub id or a local: label, resolved like any model choice, counted
    from its configuration alone."""
    text = (text or "").strip()
    if not text:
        raise ValueError("Give a parameter count (like '7B') or a model id.")
    if SIZE_PATTERN.match(text):
        return ModelSize(text, parse_parameter_count(text))
    from transformers import AutoConfig

    from shared.registry import resolve

    try:
        source = resolve(role, text)
    except ValueError as error:
        raise ValueError(f"Give a parameter count (like '7B' or '135M') or a model id. {error}") from None
    config = AutoConfig.from_pretrained(source.location, trust_remote_code=False)
    return count_from_config(config, source.label)


def weights_table(size: ModelSize) -> list[dict[str, Any]]:
    return [{"format": fmt, "bytes per parameter": per, "GiB": size.parameters * per / GIB}
            for fmt, per in BYTES_PER_PARAMETER.items()]


@dataclass
class TrainingMemory:
    size: ModelSize
    precision: str  # "mixed" (bf16 weights and gradients, fp32 Adam states) or "fp32"
    batch: int  # micro-batch per GPU
    sequence: int
    parts: dict[str, float] = field(default_factory=dict)  # name -> bytes for the whole model on one device
    activations: float | None = None  # bytes per GPU; None when the architecture is unknown

    @property
    def model_states(self) -> float:
        return sum(self.parts.values())


def activation_bytes(size: ModelSize, batch: int, sequence: int) -> float | None:
    if not (size.layers and size.hidden and size.heads):
        return None
    s, b, h, a = sequence, batch, size.hidden, size.heads
    return size.layers * s * b * h * (34 + 5 * a * s / h)


def training_memory(size: ModelSize, precision: str = "mixed", batch: int = 1, sequence: int = 2048
                    ) -> TrainingMemory:
    """Adam training's memory on one device: weights, gradients, optimizer states, activations."""
    if precision not in ("mixed", "fp32"):
        raise ValueError(f"precision must be 'mixed' or 'fp32', got {precision!r}")
    for name, value, top in (("batch", batch, 4096), ("sequence", sequence, 1_048_576)):
        if not isinstance(value, int) or not 1 <= value <= top:
            raise ValueError(f"{name} must be a whole number from 1 to {top}, got {value!r}")
    p = size.parameters
    if precision == "mixed":
        parts = {"weights (bf16)": 2.0 * p, "gradients (bf16)": 2.0 * p,
                 "optimizer: fp32 master weights, momentum, variance": 12.0 * p}
    else:
        parts = {"weights (fp32)": 4.0 * p, "gradients (fp32)": 4.0 * p, "optimizer: momentum, variance": 8.0 * p}
    return TrainingMemory(size, precision, batch, sequence, parts, activation_bytes(size, batch, sequence))


def per_gpu(plan: TrainingMemory, gpus: int) -> list[dict[str, Any]]:
    """GiB per GPU, and in host memory per GPU, under DDP, FSDP full shard and FSDP with CPU offload."""
    if not isinstance(gpus, int) or not 1 <= gpus <= 100_000:
        raise ValueError(f"GPUs must be a whole number from 1 to 100000, got {gpus!r}")
    states = plan.model_states
    activations = plan.activations or 0.0
    # One block gathered whole in 16-bit (fp32 when training in fp32) while it runs; a twentieth of the model
    # when the architecture is unknown.
    weight_bytes = 2.0 if plan.precision == "mixed" else 4.0
    gathered = (plan.size.largest_layer or math.ceil(plan.size.parameters / 20)) * weight_bytes
    rows = [
        {"strategy": "DDP", "GPU GiB": (states + activations) / GIB, "host GiB": 0.0},
        {"strategy": "FSDP full shard", "GPU GiB": (states / gpus + gathered + activations) / GIB, "host GiB": 0.0},
        {"strategy": "FSDP with CPU offload", "GPU GiB": (gathered + activations) / GIB,
         "host GiB": states / gpus / GIB},  # each GPU's shard, in its host's memory
    ]
    for row in rows:
        row["activations known"] = plan.activations is not None
    return rows
