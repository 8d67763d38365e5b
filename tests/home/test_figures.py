"""The home page's figures against planted truths: a model of known size must be reported at that size (in the
Loaded models table and the usage line), a load made slower by a known delay must show it (the table's "load s"
and the Load status line), and the environment table must show the budget and asset count it was given.

The cache here is a fresh one (shared.cache._cache swapped for the test), so what other tests loaded does not
count. Seen to fail: with `measure_bytes` counting a tied weight twice, or counting parameters but not buffers,
the MiB rows are wrong; with `load_seconds` taken before the loader runs, the delay does not show; with the usage
line reading the budget instead of the bytes held, its MiB figure is wrong.
"""

from __future__ import annotations

import time

import pytest
import torch

import shared.cache
from shared import assets
from shared.cache import LoadSpec, ModelCache
from shared.device import torch_dtype
from spaces.home import logic

MiB = 2**20
DELAY_S = 0.3  # a planted load time; only lower bounds are asserted on it


class KnownSize(torch.nn.Module):
    """3 MiB of float32 weights (768 x 1024), one of them tied (counted once), plus a 1 MiB buffer: 4 MiB."""

    def __init__(self):
        super().__init__()
        self.encode = torch.nn.Linear(1024, 768, bias=False)
        self.decode = torch.nn.Linear(768, 1024, bias=False)
        self.decode.weight = self.encode.weight  # tied, as input and output embeddings often are
        self.register_buffer("table", torch.zeros(256, 1024))


def planted_loader(delay: float = 0.0):
    def load(spec: LoadSpec, device: str, dtype: str):
        time.sleep(delay)
        return KnownSize().to(torch_dtype(dtype))

    return load


@pytest.fixture
def fresh_cache(monkeypatch):
    """The process-wide cache, replaced by an empty one with planted loader kinds (and a 2 GiB budget)."""
    cache = ModelCache(budget_bytes=2 * 2**30, loaders={"planted": planted_loader(),
                                                       "planted-slow": planted_loader(DELAY_S)})
    monkeypatch.setattr(shared.cache, "_cache", cache)
    return cache


def row_of(kind: str) -> dict:
    rows = [dict(zip(logic.LOADED_COLUMNS, row)) for row in logic.loaded_rows()]
    (row,) = [r for r in rows if r["kind"] == kind]
    return row


def test_a_model_of_known_size_is_reported_at_that_size(fresh_cache):
    fresh_cache.get(LoadSpec("planted", "known-4-mib", device="cpu", dtype="float32"))
    row = row_of("planted")
    assert row["MiB"] == 4.0 and row["dtype"] == "float32" and row["device"] == "cpu"
    assert logic.cache_usage() == "Holding 4 MiB of a 2.0 GiB budget in 1 model(s)."
    # The same model in bfloat16 holds half the bytes; the usage line adds both.
    fresh_cache.get(LoadSpec("planted-slow", "known-2-mib", device="cpu", dtype="bfloat16"))
    assert row_of("planted-slow")["MiB"] == 2.0 and row_of("planted-slow")["dtype"] == "bfloat16"
    assert logic.cache_usage() == "Holding 6 MiB of a 2.0 GiB budget in 2 model(s)."
    assert logic.evict("known-4-mib") == "Evicted: known-4-mib"
    assert logic.cache_usage() == "Holding 2 MiB of a 2.0 GiB budget in 1 model(s)."


def test_a_slower_load_shows_in_load_seconds(fresh_cache):
    fresh_cache.get(LoadSpec("planted", "quick", device="cpu"))
    fresh_cache.get(LoadSpec("planted-slow", "slow", device="cpu"))
    quick, slow = row_of("planted")["load s"], row_of("planted-slow")["load s"]
    assert slow >= DELAY_S and slow > quick  # the planted delay is inside the measured time


def test_the_load_status_line_times_the_load(fresh_cache):
    """The Load button's line: its seconds include the model's load (a planted delay), for a real role."""
    fresh_cache.register("encoder", planted_loader(DELAY_S))
    fresh_cache.register("tokenizer", planted_loader())
    message = logic.load_model("encoder", "")
    seconds = float(message.rsplit(" in ", 1)[1].removesuffix(" s."))
    assert message.startswith("local:all-minilm-l6-v2 (offline) is loaded for the encoder role")
    assert seconds >= DELAY_S - 0.05  # printed with one decimal
    assert row_of("encoder")["MiB"] == 4.0


def test_the_environment_shows_the_budget_and_assets_it_was_given(monkeypatch):
    monkeypatch.setenv("PLAYGROUND_MEMORY_BUDGET_GB", "2.5")
    built = {"sentiment", "photos"}
    monkeypatch.setattr(assets, "is_built", lambda name: name in built)
    rows = dict(logic.environment_rows())
    assert rows["model cache budget"].startswith("2.5 GiB")
    assert rows["offline assets"].startswith(f"2 of {len(assets.ASSETS)} built")
    assert rows["cpu threads"] == str(torch.get_num_threads())
