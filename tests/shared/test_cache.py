"""The model cache: one load per spec under concurrency, LRU eviction under a budget, clear errors."""

from __future__ import annotations

import threading
import time

import pytest

import shared.loaders  # noqa: F401  (the standard kinds, for the real-model test)
from shared.cache import LoadSpec, ModelCache, ModelLoadError, get_cache


class Weights:
    """A stand-in loaded object whose size the cache reads from `nbytes`."""

    def __init__(self, name: str, nbytes: int):
        self.name, self.nbytes = name, nbytes


def fake_cache(budget: int, sizes: dict[str, int], calls: list[str], delay: float = 0.0) -> ModelCache:
    def load(spec: LoadSpec, device: str, dtype: str) -> Weights:
        calls.append(spec.source)
        time.sleep(delay)
        if spec.source == "broken":
            raise OSError("no such model\nmore lines the visitor need not see")
        return Weights(spec.source, sizes[spec.source])

    return ModelCache(budget_bytes=budget, loaders={"fake": load})


def spec(name: str) -> LoadSpec:
    return LoadSpec("fake", name, device="cpu")


def run_at_once(request, count: int) -> None:
    """Call `request` from `count` threads released together by a barrier."""
    barrier = threading.Barrier(count)

    def released():
        barrier.wait()
        request()

    threads = [threading.Thread(target=released) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_requests_load_once():
    calls: list[str] = []
    cache = fake_cache(1000, {"a": 10}, calls, delay=0.3)
    results = []
    run_at_once(lambda: results.append(cache.get(spec("a"))), 8)
    assert calls == ["a"]
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_failed_load_reaches_every_waiter_and_is_retried():
    calls: list[str] = []
    cache = fake_cache(1000, {}, calls, delay=0.2)
    errors = []

    def request():
        try:
            cache.get(spec("broken"))
        except ModelLoadError as error:
            errors.append(str(error))

    run_at_once(request, 4)
    assert calls == ["broken"]
    assert len(errors) == 4
    assert errors[0] == "Could not load broken (fake): OSError: no such model"
    with pytest.raises(ModelLoadError):
        cache.get(spec("broken"))
    assert calls == ["broken", "broken"]  # a failure is not cached
    assert cache.entries() == []


def test_least_recently_used_is_evicted_first():
    calls: list[str] = []
    cache = fake_cache(250, {"a": 100, "b": 100, "c": 100, "d": 100}, calls)
    cache.get(spec("a"))
    cache.get(spec("b"))
    cache.get(spec("a"))  # a is now more recent than b
    cache.get(spec("c"))
    assert [e["model"] for e in cache.entries()] == ["c", "a"]
    cache.get(spec("d"))
    assert [e["model"] for e in cache.entries()] == ["d", "c"]
    assert cache.total_bytes == 200
    cache.get(spec("c"))
    assert calls == ["a", "b", "c", "d"]  # c was still cached


def test_model_larger_than_budget_is_refused():
    cache = fake_cache(100, {"huge": 500, "a": 50}, [])
    cache.get(spec("a"))
    with pytest.raises(ModelLoadError, match="needs .* more than the model cache's budget"):
        cache.get(spec("huge"))
    assert [e["model"] for e in cache.entries()] == ["a"]


def test_weight_files_are_counted_before_loading(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 300)
    calls: list[str] = []
    cache = fake_cache(400, {"a": 200, str(tmp_path): 300}, calls)
    cache.get(spec("a"))
    cache.get(spec(str(tmp_path)))
    assert [e["model"] for e in cache.entries()] == [str(tmp_path)]
    too_big = fake_cache(200, {str(tmp_path): 300}, calls)
    calls.clear()
    with pytest.raises(ModelLoadError):
        too_big.get(spec(str(tmp_path)))
    assert calls == []  # refused without loading


def test_evict_by_name_and_all():
    cache = fake_cache(1000, {"a": 1, "b": 1}, [])
    cache.get(spec("a"))
    cache.get(spec("b"))
    assert cache.evict("a") == ["a"]
    assert cache.evict("nothing") == []
    assert cache.evict() == ["b"]
    assert cache.entries() == []


def test_unknown_kind_and_bad_dtype_are_clear():
    cache = fake_cache(1000, {"a": 1}, [])
    with pytest.raises(ModelLoadError, match="Unknown model kind 'nope'"):
        cache.get(LoadSpec("nope", "a"))
    with pytest.raises(ModelLoadError, match="dtype must be one of"):
        cache.get(LoadSpec("fake", "a", dtype="int3", device="cpu"))


def test_real_encoder_loads_once_and_reports_its_size():
    from shared.registry import resolve

    source = resolve("encoder")
    assert source.origin == "offline"
    cache = get_cache()
    model = cache.get(LoadSpec("encoder", source.location, label=source.label))
    assert cache.get(LoadSpec("encoder", source.location, label=source.label)) is model
    row = next(e for e in cache.entries() if e["model"] == source.label and e["kind"] == "encoder")
    tensor_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert row["dtype"] == "float32" and row["device"] == "cpu"
    assert row["MiB"] == round(tensor_bytes / 2**20, 1)
    assert 20e6 < sum(p.numel() for p in model.parameters()) < 25e6  # MiniLM-L6: 22.7M parameters
    cache.evict(source.label)
