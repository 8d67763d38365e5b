"""The number formats the quantization page compares, explained with figures: each format's range and precision,
and what rounding a model's own weights to it does.

    format_rows()                                  # fp32, fp16, bf16, int8, int4: bits, largest, smallest, step
    errors = rounding_errors(weight, "int8")       # |w - round_trip(w)| for every weight of one matrix
    round_trip(weight, "bf16")                     # the weights as the format stores them, back in fp32

Floating formats keep a relative precision (a step of about 2^-mantissa bits of the value, everywhere in their
range); integer formats keep an absolute one (the matrix's largest weight / 127 for int8, / 7 for int4, per output
row: symmetric, per-channel, as dynamic int8 quantization in ONNX Runtime and torchao does for weights).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT_FORMATS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
INT_FORMATS = {"int8": 127, "int4": 7}  # symmetric levels on each side of 0
FORMATS = (*FLOAT_FORMATS, *INT_FORMATS)
MAX_WEIGHTS = 4_000_000  # weights drawn in one histogram: a sample beyond this


def format_rows() -> list[dict[str, Any]]:
    """One row per format: its bits, the largest and the smallest positive normal value it holds, and its
    precision (the gap between 1 and the next value for floats; one step of a unit-scaled row for integers)."""
    import torch

    rows = []
    for name, dtype in FLOAT_FORMATS.items():
        info = torch.finfo(getattr(torch, dtype))
        rows.append({"format": name, "bits": info.bits, "largest": float(info.max), "smallest normal": float(info.tiny),
                     "precision": float(info.eps), "kind": "floating point: relative precision"})
    for name, levels in INT_FORMATS.items():
        rows.append({"format": name, "bits": 8 if name == "int8" else 4, "largest": float(levels),
                     "smallest normal": 1.0, "precision": 1.0 / levels,
                     "kind": f"integer: {2 * levels + 1} levels × a scale per row (largest |weight| / {levels})"})
    return rows


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {name!r}")
    return name


def round_trip(weight: Any, name: str) -> np.ndarray:
    """`weight` (a 2-D matrix, rows = output channels) stored in format `name` and read back as float32."""
    import torch

    check_format(name)
    tensor = torch.as_tensor(np.asarray(weight, dtype=np.float32))
    if tensor.ndim != 2:
        raise ValueError(f"a weight matrix has 2 dimensions, got {tensor.ndim}")
    if name in FLOAT_FORMATS:
        return tensor.to(getattr(torch, FLOAT_FORMATS[name])).to(torch.float32).numpy()
    levels = INT_FORMATS[name]
    scale = tensor.abs().amax(dim=1, keepdim=True) / levels
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero row stays zero
    return (torch.clamp(torch.round(tensor / scale), -levels, levels) * scale).numpy()


def rounding_errors(weight: Any, name: str, seed: int = 0) -> np.ndarray:
    """|w - round_trip(w)| for the matrix's weights (a seeded sample of MAX_WEIGHTS when it has more)."""
    original = np.asarray(weight, dtype=np.float32)
    errors = np.abs(original - round_trip(original, name)).ravel()
    if errors.size > MAX_WEIGHTS:
        errors = np.random.default_rng(seed).choice(errors, MAX_WEIGHTS, replace=False)
    return errors


def error_summary(weight: Any) -> list[dict[str, Any]]:
    """Per format: the mean and largest absolute rounding error of the matrix, and the mean relative to the
    mean |weight| (how much of a typical weight is lost)."""
    original = np.asarray(weight, dtype=np.float32)
    typical = float(np.abs(original).mean()) or 1.0
    rows = []
    for name in FORMATS:
        errors = np.abs(original - round_trip(original, name))
        rows.append({"format": name, "mean |error|": float(errors.mean()), "max |error|": float(errors.max()),
                     "mean |error| / mean |weight|": float(errors.mean()) / typical})
    return rows
