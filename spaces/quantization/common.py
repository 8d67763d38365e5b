"""What the quantization page's two families (a sentence classifier, a causal LM) share: the variant description,
timing with warm-up and repeats, sizes, peak memory, the CPU's features and what they mean for each format.

    variant = Variant("onnx-int8-dynamic", "ONNX Runtime int8 (dynamic)", "onnxruntime", "int8")
    stats = latency(lambda: model(x), warmup=3, repeats=20, stop=stop)   # {"p50 ms", "p95 ms", "mean ms"}
    folder_bytes(path)                                                    # size on disk of a build
    format_note("bf16", "cpu")                                            # "emulated: ..." or ""

A variant is measured in a process of its own (spaces/quantization/runner.py), so `peak_rss_bytes()` is that
variant's peak resident memory, and its failure (even a crash) leaves the others running.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.device import cpu_flags
from shared.jobs import Progress, no_progress


class Stopped(Exception):
    """The visitor pressed Stop: the measurement ends where it is."""


@dataclass(frozen=True)
class Variant:
    name: str  # the key: "pytorch-fp32", "onnx-int8-static", ...
    title: str  # what the page shows
    runtime: str  # "PyTorch", "torchao", "ONNX Runtime", "optimum", "onnxruntime-genai", "bitsandbytes"
    precision: str  # "fp32", "bf16", "fp16", "int8", "int4", "int8 weights", ...
    needs: str = ""  # "gpu" when it runs only on a GPU; a package name when that package is required
    description: str = ""  # one sentence: what the variant does to the model


def check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Stopped("stopped")


def latency(fn: Callable[[], Any], warmup: int = 3, repeats: int = 20, stop: threading.Event | None = None,
            max_seconds: float = 30.0) -> dict[str, float]:
    """Run `fn` `warmup` times unmeasured, then up to `repeats` times measured (fewer once `max_seconds` have
    passed, at least 3): the median, 95th percentile and mean in milliseconds, and how many runs they hold."""
    for _ in range(warmup):
        check_stop(stop)
        fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - started < max_seconds):
        check_stop(stop)
        begin = time.perf_counter()
        fn()
        times.append((time.perf_counter() - begin) * 1000)
    values = np.asarray(times)
    return {"p50 ms": float(np.percentile(values, 50)), "p95 ms": float(np.percentile(values, 95)),
            "mean ms": float(values.mean()), "runs": len(times)}


def folder_bytes(path: str | os.PathLike) -> int:
    """Bytes of every file under `path` (or of the file itself)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def torch_bytes(model: Any) -> int:
    """Bytes of a torch module's parameters and buffers (shared storage counted once), including quantized
    tensors' packed data where torch reports it."""
    from shared.cache import measure_bytes

    return measure_bytes(model)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def cpu_summary() -> dict[str, str]:
    """What the page shows about this CPU: the vector units each format's speed depends on."""
    flags = cpu_flags()
    named = {"AVX2": "avx2", "AVX-512": "avx512f", "AVX-512 VNNI (int8 dot products)": "avx512_vnni",
             "AVX-VNNI": "avx_vnni", "AVX-512 BF16": "avx512_bf16", "AMX BF16": "amx_bf16", "AMX INT8": "amx_int8",
             "AVX-512 FP16": "avx512_fp16"}
    return {label: ("yes" if flag in flags else "no") for label, flag in named.items()} | {
        "cores": str(os.cpu_count() or 1)}


def format_note(precision: str, device: str = "cpu") -> str:
    """Whether this hardware runs `precision` natively; on a CPU without the units, a plain warning that it is
    emulated (bf16/fp16) or has no fast dot products (int8 without VNNI/AMX), so slower than expected."""
    if device != "cpu":
        return ""
    flags = cpu_flags()
    p = precision.lower()
    if p.startswith("bf16"):
        if {"avx512_bf16", "amx_bf16"} & flags:
            return "native (AVX-512 BF16 / AMX)"
        return ("emulated: this CPU has no AVX-512 BF16 or AMX, so bf16 math is converted to fp32 and back: "
                "compute-bound work (a batch, a long prompt) is slower; memory-bound work (decoding one token) "
                "can still gain from reading half the bytes")
    if p.startswith("fp16"):
        if {"avx512_fp16", "amx_fp16"} & flags:
            return "native (AVX-512 FP16 / AMX)"
        return ("emulated: this CPU has no AVX-512 FP16, so fp16 math is converted to fp32 and back: "
                "compute-bound work is slower; memory-bound work can still gain from reading half the bytes")
    if p.startswith("int8") and "weights" not in p:
        if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags:
            return "native int8 dot products (VNNI / AMX)"
        if "avx2" in flags:
            return "int8 on AVX2 without VNNI: works, with a smaller gain than on VNNI/AMX CPUs"
    return ""


def report(progress: Progress | None, fraction: float, text: str) -> None:
    (progress or no_progress)(max(0.0, min(1.0, fraction)), text)


class Unavailable(Exception):
    """The variant cannot run here (it needs a GPU, or a package that is not installed): listed, not hidden."""
