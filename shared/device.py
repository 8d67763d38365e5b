"""Device and dtype, chosen at run time: a GPU when there is one, else the CPU.

Defaults follow diffusers: CPU and float32 unless told otherwise; on a GPU, bfloat16 where the card
supports it, else float16. torch is imported only when a model is about to be loaded.
"""

from __future__ import annotations

from functools import lru_cache

from shared.settings import read_settings

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


@lru_cache(maxsize=1)
def pick_device() -> str:
    forced = read_settings().device
    if forced:
        return forced
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, requested: str = "auto") -> str:
    """The dtype name to load with. "auto" means float32 on CPU, bf16 (or fp16) on a GPU."""
    if requested not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "mps":
        return "float16"
    return "float32"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (avx2, avx512_vnni, amx_bf16, ...) from /proc/cpuinfo; empty where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=4)
def bf16_is_native(device: str) -> bool:
    """Whether bfloat16 math runs in hardware here: a GPU that supports it, or a CPU with AVX512-BF16 or AMX.

    Elsewhere torch emulates bf16 and autocast is slower than float32, which a learner should be told.
    """
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def describe_device() -> dict[str, str]:
    """What the home page shows about where models run."""
    import torch

    device = pick_device()
    info = {"device": device, "default dtype": pick_dtype(device), "torch": torch.__version__,
            "bfloat16": "native" if bf16_is_native(device) else "emulated (slower than float32)"}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    else:
        info["cpu threads"] = str(torch.get_num_threads())
    return info
