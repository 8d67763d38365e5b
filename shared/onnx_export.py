"""The one ONNX export path for transformers models: optimum's exporter, its graph optimiser and quantizer, each
result stored once on disk, and ONNX Runtime sessions kept per folder.

    from shared import onnx_export
    folder = onnx_export.export("path/to/classifier", "text-classification")        # model.onnx + tokenizer
    fast = onnx_export.optimize("path/to/classifier", "text-classification")         # fused graph (level 2)
    dyn = onnx_export.quantize_dynamic("path/to/classifier", "text-classification")  # int8 weights, int8 math
    cal = onnx_export.quantize_static("path/to/classifier", "text-classification", sentences)  # calibrated
    session = onnx_export.session(dyn)          # an onnxruntime.InferenceSession, one per folder and process
    onnx_export.build_seconds(dyn)              # seconds this process spent building it (0.0: it was stored)

Every build is a folder holding `model.onnx`, the model's config and tokenizer files (so optimum's
`ORTModelForSequenceClassification.from_pretrained(folder)` loads it too) and INFO_FILE, written last. It goes
under `store` (default `read_settings().onnx_dir`) as `<name>-<kind>-<key>`, the key a fingerprint of the source
folder's files (shared/onnx_lm.py's `fingerprint`) plus the task and every setting of the build (for static
quantization, a hash of the calibration sentences). A build is written into a temporary folder and renamed into
place, so a crash never leaves half a build and a second call never rebuilds.

Quantization reads the plain export, not the optimised graph: ONNX Runtime's quantizer cannot type the fused
operators (Attention, SkipLayerNormalization) the optimiser writes. ONNX Runtime applies its own CPU fusions to
the quantized graph when a session loads it. Int8 settings follow the CPU (`AutoQuantizationConfig.avx512_vnni`
when it has VNNI, else `.avx2`); the instruction set is part of the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.settings import read_settings

EXPORT_VERSION = 1  # bump when a build's recipe changes: stored builds with another version are rebuilt
MODEL_FILE = "model.onnx"
INFO_FILE = "playground-onnx.json"  # written last: a folder without it is not a finished build
OPTIMIZATION_LEVELS = (1, 2, 99)  # optimum's: 1 basic, 2 extended (transformer fusions), 99 all (layout changes)
CALIBRATION_METHODS = ("minmax", "percentiles")
INSTRUCTION_SETS = ("avx2", "avx512_vnni")
DEFAULT_MAX_LENGTH = 128  # tokens per calibration sentence

_build_lock = threading.Lock()  # one build at a time in this process (another process may race: see _stored)
_built: dict[Path, float] = {}  # folder -> seconds this process spent building it (and the export under it)
_sessions: dict[tuple, Any] = {}
_sessions_lock = threading.Lock()


# --------------------------------------------------------------------------------------------------------
# Keys and the store
# --------------------------------------------------------------------------------------------------------


def build_key(source: str | os.PathLike, settings: dict[str, Any]) -> str:
    """A key for a build of `source` with `settings` (JSON-able): its files' fingerprint, the settings, the
    recipe's version. A hub id is keyed by its name."""
    from shared.onnx_lm import fingerprint

    described = json.dumps({"export_version": EXPORT_VERSION, **settings}, sort_keys=True)
    return fingerprint(source, described)


def texts_hash(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "replace") + b"\0")
    return digest.hexdigest()[:16]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _target(source: str | os.PathLike, kind: str, settings: dict[str, Any], store: str | os.PathLike | None,
            name: str | None) -> tuple[Path, str]:
    key = build_key(source, {"kind": kind, **settings})
    root = Path(store) if store is not None else read_settings().onnx_dir
    label = _safe_name(name or Path(str(source)).name)
    return root / f"{label}-{kind}-{key}", key


def _is_complete(folder: Path, key: str) -> bool:
    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    return info.get("key") == key and (folder / MODEL_FILE).is_file()


def _stored(target: Path, key: str, info: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """`target` if it holds the build `key`; else `write(scratch)` into a temporary folder beside it, then the
    INFO_FILE, then one rename. A folder at `target` from another key is replaced."""
    with _build_lock:
        if _is_complete(target, key):
            return _found(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        started = time.perf_counter()
        try:
            write(scratch)
            if not (scratch / MODEL_FILE).is_file():
                raise RuntimeError(f"building {target.name} wrote no {MODEL_FILE}")
            seconds = time.perf_counter() - started
            record = {**info, "key": key, "export_version": EXPORT_VERSION, "build_seconds": round(seconds, 3),
                      "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            (scratch / INFO_FILE).write_text(json.dumps(record, indent=1))
            if _is_complete(target, key):  # another process finished the same build first
                shutil.rmtree(scratch)
                return _found(target)
            if target.exists():  # an older build in the same place (an explicit target): move it aside first
                old = target.parent / f".old-{target.name}-{os.getpid()}"
                target.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            scratch.rename(target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        _built[target.resolve()] = seconds
        return target


def _found(folder: Path) -> Path:
    """`folder` came from the store this time: building it took no time."""
    _built.pop(folder.resolve(), None)
    return folder


def build_seconds(folder: str | os.PathLike) -> float:
    """Seconds the last call that returned `folder` spent building it (including the export it was derived
    from, when that was built too); 0.0 when it came from the store."""
    return _built.get(Path(folder).resolve(), 0.0)


def model_bytes(folder: str | os.PathLike) -> int:
    """Bytes of the ONNX graph and its external weights (not the tokenizer files)."""
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.iterdir()
               if p.is_file() and (p.suffix == ".onnx" or p.name.endswith((".onnx_data", ".onnx.data"))))


# --------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------


def check_exportable(source: str | os.PathLike, task: str) -> None:
    """Raise ValueError naming the reason when optimum cannot export `source` for `task`."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs with TasksManager)
    from optimum.exporters.tasks import TasksManager
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(source))  # never trust_remote_code
    model_type = str(getattr(config, "model_type", "") or "").replace("_", "-")
    task = TasksManager.map_from_synonym(task)
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, exporter="onnx",
                                                                library_name="transformers")
    except KeyError:
        raise ValueError(f"optimum cannot export {model_type!r} models to ONNX (no ONNX config for that "
                         f"architecture); {Path(str(source)).name} cannot run in ONNX Runtime") from None
    if task not in tasks:
        raise ValueError(f"optimum exports {model_type!r} models to ONNX for {', '.join(sorted(tasks))}, "
                         f"not {task!r}")


def export(source: str | os.PathLike, task: str = "text-classification", store: str | os.PathLike | None = None,
           name: str | None = None, target: str | os.PathLike | None = None) -> Path:
    """The folder of `source` exported to ONNX for `task` by optimum (validated against PyTorch), built once.

    `target` puts the build in that exact folder (the fine-tuning page exports into its run's folder); else it
    goes under `store` as `<name>-export-<key>`.
    """
    # 1. Check that optimum knows the architecture and the task.
    check_exportable(source, task)
    settings = {"task": task}
    folder, key = _target(source, "export", settings, store, name)
    if target is not None:
        folder = Path(target)

    # 2. Export into a temporary folder; optimum compares the graph's outputs with PyTorch's.
    def write(scratch: Path) -> None:
        from optimum.exporters.onnx import main_export

        try:
            main_export(str(source), output=scratch, task=task, do_validation=True, library_name="transformers")
        except Exception as error:
            raise RuntimeError(f"optimum could not export {Path(str(source)).name} to ONNX for {task}: "
                               f"{type(error).__name__}: {error}") from error

    return _stored(folder, key, {"source": str(source), "kind": "export", **settings}, write)


def optimize(source: str | os.PathLike, task: str = "text-classification", level: int = 2,
             store: str | os.PathLike | None = None, name: str | None = None) -> Path:
    """The export of `source`, its graph optimised by optimum's ORTOptimizer for the CPU (fp32, no fp16):
    level 2 fuses attention, GELU and the layer norms with their residual adds."""
    if level not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization level must be one of {OPTIMIZATION_LEVELS}, got {level!r}")
    settings = {"task": task, "level": level}
    folder, key = _target(source, f"O{level}", settings, store, name)
    if _is_complete(folder, key):
        return _found(folder)
    base = export(source, task, store, name)

    def write(scratch: Path) -> None:
        from optimum.onnxruntime import ORTOptimizer
        from optimum.onnxruntime.configuration import OptimizationConfig

        config = OptimizationConfig(optimization_level=level, optimize_for_gpu=False, fp16=False)
        ORTOptimizer.from_pretrained(base, file_names=[MODEL_FILE]).optimize(config, save_dir=scratch,
                                                                             file_suffix=None)

    return _derived(folder, key, base, {"source": str(source), "kind": f"O{level}", **settings}, write)


def _derived(folder: Path, key: str, base: Path, info: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """A build made from the export `base`: stored like any other; its build time includes the export's."""
    built = _stored(folder, key, {**info, "from": base.name}, write)
    if built.resolve() in _built:
        _built[built.resolve()] += build_seconds(base)
    return built


# --------------------------------------------------------------------------------------------------------
# Int8 quantization
# --------------------------------------------------------------------------------------------------------


def instruction_set() -> str:
    """The int8 kernels' target on this CPU: "avx512_vnni" when it has VNNI, else "avx2"."""
    from shared.device import cpu_flags

    return "avx512_vnni" if "avx512_vnni" in cpu_flags() else "avx2"


def _quantization_config(is_static: bool, per_channel: bool, instructions: str):
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    if instructions not in INSTRUCTION_SETS:
        raise ValueError(f"instructions must be one of {INSTRUCTION_SETS}, got {instructions!r}")
    make = AutoQuantizationConfig.avx512_vnni if instructions == "avx512_vnni" else AutoQuantizationConfig.avx2
    return make(is_static=is_static, per_channel=per_channel)


def quantize_dynamic(source: str | os.PathLike, task: str = "text-classification", per_channel: bool = True,
                     instructions: str | None = None, store: str | os.PathLike | None = None,
                     name: str | None = None) -> Path:
    """The export of `source` with int8 weights (per output channel by default: closer to fp32 on AVX2) and
    activations quantized at run time from each input's own range: no calibration needed."""
    instructions = instructions or instruction_set()
    settings = {"task": task, "per_channel": per_channel, "instructions": instructions}
    kind = f"int8-dynamic-{instructions}"
    folder, key = _target(source, kind, settings, store, name)
    if _is_complete(folder, key):
        return _found(folder)
    base = export(source, task, store, name)

    def write(scratch: Path) -> None:
        from optimum.onnxruntime import ORTQuantizer

        config = _quantization_config(False, per_channel, instructions)
        ORTQuantizer.from_pretrained(base, file_name=MODEL_FILE).quantize(config, save_dir=scratch, file_suffix=None)

    return _derived(folder, key, base, {"source": str(source), "kind": kind, **settings}, write)


class CalibrationRows(list):
    """Tokenised calibration sentences in the shape optimum's calibration reads from a `datasets.Dataset`
    (iterating rows of model inputs; `info`, `split` and `num_rows` for its record), without needing that
    package."""

    class Info:
        builder_name = "playground-calibration"
        config_name = "sentences"

    info = Info()
    split = "calibration"

    @property
    def num_rows(self) -> int:
        return len(self)


def quantize_static(source: str | os.PathLike, task: str, texts: Sequence[str], method: str = "minmax",
                    per_channel: bool = False, max_length: int = DEFAULT_MAX_LENGTH, instructions: str | None = None,
                    store: str | os.PathLike | None = None, name: str | None = None,
                    progress: Callable[[float, str], None] | None = None) -> Path:
    """The export of `source` with int8 weights and activations whose ranges were measured beforehand on
    `texts` (calibration): no range is computed at run time, so every MatMul and Add runs in int8.

    `method` "minmax" keeps each activation's full observed range; "percentiles" clips the extreme 0.001 %
    (it fails on graphs whose attention mask holds the float minimum, as optimum's BERT export does)."""
    # 1. Check the inputs.
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    texts = [str(t) for t in texts if str(t).strip()]
    if not texts:
        raise ValueError("static quantization needs at least one calibration sentence")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens, got {max_length}")
    instructions = instructions or instruction_set()
    settings = {"task": task, "method": method, "per_channel": per_channel, "max_length": max_length,
                "instructions": instructions, "calibration": texts_hash(texts), "calibration_size": len(texts)}
    kind = f"int8-static-{method}-{instructions}"
    folder, key = _target(source, kind, settings, store, name)
    if _is_complete(folder, key):
        return _found(folder)
    base = export(source, task, store, name)

    def write(scratch: Path) -> None:
        import onnx
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoCalibrationConfig
        from transformers import AutoTokenizer

        # 2. Tokenise the sentences one by one (calibration runs batch 1, so no padding), keeping the inputs
        # the graph takes.
        if progress:
            progress(0.0, f"calibrating on {len(texts)} sentences")
        inputs = {i.name for i in onnx.load(str(base / MODEL_FILE), load_external_data=False).graph.input}
        tokenizer = AutoTokenizer.from_pretrained(base)
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        rows = CalibrationRows({k: encoded[k][i] for k in encoded if k in inputs} for i in range(len(texts)))
        # 3. Record each activation's range over the sentences, then quantize with those ranges.
        config = _quantization_config(True, per_channel, instructions)
        calibration = (AutoCalibrationConfig.minmax(rows) if method == "minmax"
                       else AutoCalibrationConfig.percentiles(rows, percentile=99.999))
        quantizer = ORTQuantizer.from_pretrained(base, file_name=MODEL_FILE)
        augmented = scratch / "augmented.onnx"  # the graph with every activation as an output; removed below
        try:
            ranges = quantizer.fit(dataset=rows, calibration_config=calibration, onnx_augmented_model_name=augmented,
                                   operators_to_quantize=config.operators_to_quantize)
        except Exception as error:
            raise RuntimeError(f"calibration ({method}) of {base.name} failed: {type(error).__name__}: "
                               f"{error}") from error
        finally:
            for leftover in scratch.glob("augmented*"):
                leftover.unlink()
        quantizer.quantize(config, save_dir=scratch, file_suffix=None, calibration_tensors_range=ranges)

    return _derived(folder, key, base, {"source": str(source), "kind": kind, **settings}, write)


# --------------------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------------------


def session(folder: str | os.PathLike, file_name: str = MODEL_FILE, threads: int | None = None,
            providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An onnxruntime.InferenceSession of `folder/file_name` with every graph optimisation on, one per file
    (and its modification time), thread count and providers in this process. `threads` None: ONNX Runtime's
    default (one per physical core)."""
    import onnxruntime as ort

    path = (Path(folder) / file_name).resolve()
    if not path.is_file():
        raise ValueError(f"no ONNX graph at {path}")
    key = (str(path), path.stat().st_mtime_ns, threads, tuple(providers))
    with _sessions_lock:
        cached = _sessions.get(key)
        if cached is not None:
            return cached
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        created = ort.InferenceSession(str(path), options, providers=list(providers))
        _sessions[key] = created
        return created


def forget_sessions() -> None:
    """Drop the cached sessions (their memory goes once nothing else holds them)."""
    with _sessions_lock:
        _sessions.clear()
