"""Run a comparison: each variant of one model measured in a process of its own, the fp32 reference first, every
result kept on disk so a second visit shows it at once.

    for row in compare("classifier", ["pytorch-fp32", "onnx-int8-dynamic"], {"source": folder}, progress, stop):
        print(row.variant, row.status, row.figures)

Why a process per variant: its peak resident memory is its own (not the high-water mark of everything measured
before it), a variant that crashes (a segfault in a runtime, out of memory) takes only itself down, and Stop ends
the computation for certain: the process is terminated. The worker (spaces/quantization/worker.py) reads one JSON
request on stdin and answers with `PROGRESS {...}` lines and one `RESULT {...}` line on stdout.

A result is keyed by the family, variant, settings, the model's files (a fingerprint of the folder), this
machine's CPU and the runtime versions: anything that changes a figure changes the key.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from shared.jobs import Progress, no_progress
from shared.onnx_lm import fingerprint
from shared.settings import REPO_ROOT, read_settings
from spaces.quantization.common import cpu_flags

FAMILIES = {"classifier": "spaces.quantization.classifier", "lm": "spaces.quantization.lm"}
RESULTS_VERSION = 1  # bump when a measurement changes meaning: older results are then measured again
STOP_GRACE_SECONDS = 5.0  # after Stop, how long a worker may take to end before it is killed
STATUSES = ("measured", "cached", "failed", "unavailable", "stopped")
log = logging.getLogger("playground.quantization")


@dataclass
class Row:
    variant: str
    title: str
    status: str  # one of STATUSES
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # why it failed or is unavailable
    seconds: float = 0.0  # wall time of the measurement (its own process, imports included)


def family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {name!r}")
    return importlib.import_module(FAMILIES[name])


def variant_titles(family_name: str) -> dict[str, str]:
    return {v.name: v.title for v in family(family_name).VARIANTS}


def results_dir() -> Path:
    return read_settings().home / "quantization" / "results"


def source_fingerprint(source: str) -> str:
    """The model's files (shared/onnx_lm.py `fingerprint`: config contents, weight names, sizes and times); a hub
    id is its own fingerprint."""
    if not source or not Path(source).is_absolute() or not Path(source).is_dir():
        return source
    return fingerprint(source, "quantization-results")


@lru_cache(maxsize=1)
def machine_signature() -> str:
    """What a timing depends on besides the code: the CPU's vector units, its cores, the runtimes' versions."""
    from importlib.metadata import PackageNotFoundError, version

    relevant = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c")))
    versions = []
    for package in ("torch", "onnxruntime", "optimum", "optimum-onnx", "transformers", "torchao",
                    "onnxruntime-genai"):
        try:
            versions.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package}=-")
    import platform

    from shared.device import pick_device

    return "|".join([platform.machine(), str(os.cpu_count()), ",".join(relevant), *versions, pick_device()])


def comparison_key(family_name: str, params: dict[str, Any]) -> str:
    """One comparison (family, settings, model files): the folder its variants share (the reference's outputs)."""
    text = json.dumps([RESULTS_VERSION, family_name, params, source_fingerprint(str(params.get("source", "")))],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def result_path(family_name: str, variant: str, comparison: str) -> Path:
    """Where one variant's result of comparison `comparison` (a `comparison_key`) on this machine is kept."""
    text = json.dumps([comparison, variant, machine_signature()], sort_keys=True)
    return results_dir() / f"{family_name}-{variant}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


def cached_row(family_name: str, variant: str, comparison: str) -> Row | None:
    path = result_path(family_name, variant, comparison)
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return Row(variant, saved["title"], "cached", saved["figures"], saved.get("reason", ""), saved.get("seconds", 0.0))


def save_row(family_name: str, comparison: str, row: Row) -> None:
    """Keep a measured (or unavailable) row: written to a temporary file and renamed, never half a file."""
    path = result_path(family_name, row.variant, comparison)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump({"title": row.title, "figures": row.figures, "reason": row.reason, "seconds": row.seconds,
                   "status": row.status}, handle)
    os.replace(handle.name, path)


def forget_results(family_name: str | None = None) -> int:
    """Delete the kept results (of one family, or all); returns how many."""
    removed = 0
    for path in results_dir().glob(f"{family_name or ''}*.json"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def check_variants(family_name: str, variants: list[str]) -> list[str]:
    """The chosen variants in display order, the reference first (every quality figure is measured against it)."""
    module = family(family_name)
    known = [v.name for v in module.VARIANTS]
    unknown = [v for v in variants if v not in known]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; the {family_name} variants are {known}")
    if not variants:
        raise ValueError("Choose at least one variant to measure.")
    return [module.REFERENCE] + [v for v in known if v in variants and v != module.REFERENCE]


def measure_in_process(family_name: str, variant: str, params: dict[str, Any], work_dir: Path,
                       progress: Progress = no_progress, stop: threading.Event | None = None) -> Row:
    """Measure one variant in a worker process: its row, whatever happened (failed, unavailable, stopped)."""
    title = variant_titles(family_name)[variant]
    stop = stop or threading.Event()
    request = json.dumps({"module": FAMILIES[family_name], "variant": variant, "params": params,
                          "work_dir": str(work_dir)})
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen([sys.executable, "-m", "spaces.quantization.worker"], cwd=str(REPO_ROOT),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, bufsize=0)
        process.stdin.write(request.encode())
        process.stdin.close()
        result, stopped_at, pending = None, None, b""
        channel = process.stdout.fileno()
        while True:
            if stop.is_set() and stopped_at is None:
                stopped_at = time.perf_counter()
                process.terminate()  # the worker's computation ends here, whatever it was doing
            if stopped_at is not None and time.perf_counter() - stopped_at > STOP_GRACE_SECONDS:
                process.kill()
            # Wait for the worker's next bytes a fifth of a second at most, so Stop is seen at once.
            if not select.select([channel], [], [], 0.2)[0]:
                continue
            chunk = os.read(channel, 65536)
            if not chunk:  # the worker closed its end: it has ended
                break
            pending += chunk
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                line = raw.decode("utf-8", errors="replace")
                if line.startswith("PROGRESS "):
                    message = json.loads(line[len("PROGRESS "):])
                    progress(float(message["fraction"]), f"{title}: {message['text']}")
                elif line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT "):])
        process.stdout.close()
        process.wait()
        seconds = time.perf_counter() - started
        if stop.is_set():
            return Row(variant, title, "stopped", reason="stopped", seconds=seconds)
        if result is not None and result["status"] == "failed":
            errors.seek(0)
            log.warning("%s variant %s failed:\n%s", family_name, variant, errors.read()[-4000:])
        if result is None:
            errors.seek(0)
            tail = errors.read()[-600:].strip().splitlines()
            last = tail[-1] if tail else ""
            return Row(variant, title, "failed", seconds=seconds,
                       reason=f"the worker ended without a result (exit code {process.returncode}) {last}".strip())
    return Row(variant, title, result["status"], result.get("figures", {}), result.get("reason", ""), seconds)


def compare(family_name: str, variants: list[str], params: dict[str, Any], progress: Progress = no_progress,
            stop: threading.Event | None = None, use_cache: bool = True) -> Iterator[Row]:
    """Measure each chosen variant (the reference first), yielding its row as soon as it is known. A failed
    variant yields its reason and the others go on; Stop yields the stopped row and ends."""
    # 1. Check the inputs.
    module = family(family_name)
    params = module.default_params(**params)
    order = check_variants(family_name, list(variants))
    stop = stop or threading.Event()
    comparison = comparison_key(family_name, params)  # once: it reads the model's files
    work_dir = read_settings().home / "quantization" / "work" / f"{family_name}-{comparison}"
    work_dir.mkdir(parents=True, exist_ok=True)
    # 2. One variant at a time, each in its own process: the cache first, else a measurement.
    for index, variant in enumerate(order):
        if use_cache and (row := cached_row(family_name, variant, comparison)) is not None:
            yield row
            continue

        def scaled(fraction: float, text: str, index: int = index) -> None:
            progress((index + fraction) / len(order), f"[{index + 1}/{len(order)}] {text}")

        row = measure_in_process(family_name, variant, params, work_dir, scaled, stop)
        if row.status in ("measured", "unavailable"):
            save_row(family_name, comparison, row)
        yield row
        if row.status == "stopped":
            return
