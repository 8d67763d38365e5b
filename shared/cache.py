"""The one model cache every page asks for loaded models, tokenizers, pipelines and ONNX sessions.

    model = get_cache().get(LoadSpec("causal-lm", source.location, label=source.label))

- Each spec is loaded once: a second request for a spec that is loading waits for the first load
  rather than starting its own, so two visitors cannot load the same model twice.
- Models are kept in least-recently-used order; when the bytes held would pass the memory budget
  (PLAYGROUND_MEMORY_BUDGET_GB), the least recently used are evicted first.
- Device and dtype are chosen at run time (shared/device.py) unless the spec names them.
- Loaders are plain functions registered per *kind* with `register_loader`: shared/loaders.py registers the
  standard kinds when imported (`import shared.loaders`); a page may register its own. This module imports
  no loader: the cache is the mechanism, the loaders plug into it.
- A load that fails raises ModelLoadError, whose message is meant for the visitor; the cache stays usable.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.device import pick_device, pick_dtype
from shared.settings import read_settings

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx_data", ".gguf")


class ModelLoadError(RuntimeError):
    """A model could not be loaded or kept; the message says why, in words for the visitor."""


@dataclass(frozen=True)
class LoadSpec:
    kind: str  # a registered loader kind: "causal-lm", "tokenizer", "encoder", ...
    source: str  # a hub id or an allow-listed folder (from shared.registry.resolve), never raw visitor text
    dtype: str = "auto"  # "auto" = chosen for the device (shared/device.py)
    device: str | None = None  # None = chosen at run time
    options: tuple[tuple[str, Any], ...] = ()  # extra loader options, hashable, part of the key
    label: str = field(default="", compare=False)  # what the UI shows; defaults to source

    @property
    def name(self) -> str:
        return self.label or self.source


Loader = Callable[[LoadSpec, str, str], Any]  # (spec, device, dtype) -> loaded object


@dataclass
class CacheEntry:
    spec: LoadSpec
    value: Any
    device: str
    dtype: str
    nbytes: int
    load_seconds: float
    last_used: float


def measure_bytes(value: Any) -> int:
    """Bytes of tensors held by a loaded object: a torch module, a pipeline's modules, or what `nbytes` says."""
    if hasattr(value, "nbytes") and isinstance(value.nbytes, int):
        return value.nbytes
    if "torch" not in sys.modules:
        return 0
    import torch

    modules = []
    if isinstance(value, torch.nn.Module):
        modules = [value]
    elif hasattr(value, "components"):  # a diffusers pipeline
        modules = [c for c in value.components.values() if isinstance(c, torch.nn.Module)]
    seen, total = set(), 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            key = tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else id(tensor)
            if key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total


def estimate_bytes(spec: LoadSpec) -> int:
    """Bytes of weight files in a local folder (0 when unknown, e.g. a hub id): a guess to evict before loading."""
    folder = Path(spec.source)
    if not folder.is_absolute() or not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES)


def hub_repo_id(spec: LoadSpec) -> str | None:
    """The hub id `spec` loads from, or None for a local folder."""
    return None if Path(spec.source).is_absolute() or Path(spec.source).exists() else spec.source


def short_reason(error: BaseException, repo_id: str | None = None) -> str:
    """One line on why a load failed: a hub failure in words (shared/hub.py), else the error's first line."""
    from shared.hub import hub_error_message

    return hub_error_message(error, repo_id) or first_line(error)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


class ModelCache:
    def __init__(self, budget_bytes: int | None = None, loaders: dict[str, Loader] | None = None,
                 measure: Callable[[Any], int] = measure_bytes):
        self.budget_bytes = budget_bytes if budget_bytes is not None else read_settings().memory_budget_bytes
        self.loaders: dict[str, Loader] = dict(loaders or {})
        self.measure = measure
        self._entries: OrderedDict[LoadSpec, CacheEntry] = OrderedDict()  # least recently used first
        self._loading: dict[LoadSpec, Future] = {}
        self._lock = threading.Lock()

    def register(self, kind: str, loader: Loader) -> None:
        self.loaders[kind] = loader

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def get(self, spec: LoadSpec) -> Any:
        """The loaded object for `spec`, loading it (once) if needed."""
        if spec.kind not in self.loaders:
            raise ModelLoadError(f"Unknown model kind {spec.kind!r}; known: {', '.join(sorted(self.loaders))}")
        with self._lock:
            entry = self._entries.get(spec)
            if entry is not None:
                self._entries.move_to_end(spec)
                entry.last_used = time.time()
                return entry.value
            future = self._loading.get(spec)
            owner = future is None
            if owner:
                future = self._loading[spec] = Future()
        if not owner:
            return future.result()  # the first requester's load; its error is raised here too
        try:
            value = self._load(spec)
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(value)
            return value
        finally:
            with self._lock:
                self._loading.pop(spec, None)

    def _load(self, spec: LoadSpec) -> Any:
        # 1. Pick where and how to load.
        device = spec.device or pick_device()
        try:
            dtype = pick_dtype(device, spec.dtype)
        except ValueError as error:
            raise ModelLoadError(str(error)) from None
        # 2. Make room for what the weight files say the model needs.
        estimate = estimate_bytes(spec)
        if estimate > self.budget_bytes:
            raise ModelLoadError(self._too_big(spec, estimate))
        self._evict_until(self.budget_bytes - estimate)
        # 3. Load, outside the lock: other models stay usable meanwhile.
        started = time.perf_counter()
        try:
            value = self.loaders[spec.kind](spec, device, dtype)
        except ModelLoadError:
            raise
        except Exception as error:
            # A hub failure is said in words of its own, naming the repository; nothing half-downloaded is kept in
            # the cache (huggingface_hub leaves it as *.incomplete, resumed by the next load).
            from shared.hub import hub_error_message

            message = hub_error_message(error, hub_repo_id(spec))
            raise ModelLoadError(message or f"Could not load {spec.name} ({spec.kind}): {first_line(error)}"
                                 ) from error
        seconds = time.perf_counter() - started
        if isinstance(getattr(value, "dtype", None), str):  # a model that says what it holds (an int8 ONNX build)
            dtype = value.dtype
        # 4. Keep it, then evict the least recently used others until the budget holds.
        nbytes = self.measure(value)
        if nbytes > self.budget_bytes:
            del value
            self._release_memory()
            raise ModelLoadError(self._too_big(spec, nbytes))
        with self._lock:
            self._entries[spec] = CacheEntry(spec, value, device, dtype, nbytes, seconds, time.time())
        self._evict_until(self.budget_bytes, keep=spec)
        return value

    def _too_big(self, spec: LoadSpec, nbytes: int) -> str:
        return (f"{spec.name} needs {nbytes / 2**30:.2f} GiB, more than the model cache's budget of "
                f"{self.budget_bytes / 2**30:.2f} GiB (set PLAYGROUND_MEMORY_BUDGET_GB to raise it).")

    def _evict_until(self, limit: int, keep: LoadSpec | None = None) -> list[str]:
        evicted = []
        with self._lock:
            while sum(e.nbytes for e in self._entries.values()) > limit:
                victim = next((s for s in self._entries if s != keep), None)
                if victim is None:
                    break
                evicted.append(self._entries.pop(victim).spec.name)
        if evicted:
            self._release_memory()
        return evicted

    def evict(self, name: str | None = None) -> list[str]:
        """Drop the entries shown as `name` (all entries when None); returns the names dropped."""
        return self._drop(lambda spec: name is None or spec.name == name)

    def forget_source(self, source: str) -> list[str]:
        """Drop every entry loaded from `source` (its files were replaced); returns the names dropped.
        Whoever holds a dropped model keeps a working copy; the next `get` loads the new files."""
        return self._drop(lambda spec: spec.source == source)

    def _drop(self, chosen: Callable[[LoadSpec], bool]) -> list[str]:
        with self._lock:
            victims = [spec for spec in self._entries if chosen(spec)]
            for spec in victims:
                del self._entries[spec]
        if victims:
            self._release_memory()
        return [spec.name for spec in victims]

    def contains(self, spec: LoadSpec) -> bool:
        with self._lock:
            return spec in self._entries

    def entries(self) -> list[dict[str, Any]]:
        """What is loaded, most recently used first: for the home page's panel."""
        with self._lock:
            snapshot = list(self._entries.values())
        return [
            {"model": e.spec.name, "kind": e.spec.kind, "dtype": e.dtype if e.nbytes else "-", "device": e.device,
             "MiB": round(e.nbytes / 2**20, 1), "load s": round(e.load_seconds, 2),
             "last used": time.strftime("%H:%M:%S", time.localtime(e.last_used))}
            for e in reversed(snapshot)
        ]

    @staticmethod
    def _release_memory() -> None:
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


_loaders: dict[str, Loader] = {}  # kind -> loader, for the process-wide cache
_cache: ModelCache | None = None
_cache_lock = threading.Lock()


def register_loader(kind: str, loader: Loader) -> None:
    """Make `kind` loadable by the process-wide cache (now, or when it is first made)."""
    with _cache_lock:
        _loaders[kind] = loader
        if _cache is not None:
            _cache.register(kind, loader)


def loader_kinds() -> set[str]:
    """The kinds a LoadSpec may name now: a role whose kind is missing cannot be loaded yet."""
    with _cache_lock:
        return set(_loaders)


def get_cache() -> ModelCache:
    """The process-wide cache, with every loader registered so far."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = ModelCache(loaders=_loaders)
        return _cache
