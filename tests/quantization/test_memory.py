"""The memory calculator against hand-computed cases, and the parameter counts of the offline models read from
their configurations alone (no weights loaded)."""

from __future__ import annotations

import pytest

from spaces.quantization import memory

GIB = 2**30


@pytest.mark.parametrize("text, count", [("7B", 7_000_000_000), ("135M", 135_000_000), ("1.3e9", 1_300_000_000),
                                         ("22700000", 22_700_000), (" 0.5 b ", 500_000_000), ("2k", 2000)])
def test_parameter_counts_are_read_with_their_suffix(text, count):
    assert memory.parse_parameter_count(text) == count


@pytest.mark.parametrize("text, message", [("seven", "like '7B'"), ("7 billion", "like '7B'"), ("0", "between 1"),
                                           ("20T", "between 1 and 1e\\+13")])
def test_bad_parameter_counts_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        memory.parse_parameter_count(text)


def test_a_7b_model_in_bf16_is_13_gib_of_weights():
    table = {row["format"]: row["GiB"] for row in memory.weights_table(memory.model_size("7B"))}
    assert round(table["bf16"], 1) == 13.0 and table["fp32"] == pytest.approx(2 * table["bf16"])
    assert table["int8"] == pytest.approx(7e9 / GIB) and table["int4"] == pytest.approx(3.5e9 / GIB)


def test_adam_training_is_16_bytes_a_parameter_plus_activations():
    size = memory.ModelSize("toy", 1_000_000, layers=2, hidden=64, heads=4, largest_layer=50_000)
    plan = memory.training_memory(size, "mixed", batch=2, sequence=128)
    assert plan.model_states == 16 * 1_000_000
    assert list(plan.parts.values()) == [2e6, 2e6, 12e6]
    assert plan.activations == 2 * 128 * 2 * 64 * (34 + 5 * 4 * 128 / 64)  # layers · s·b·h·(34 + 5as/h)
    assert memory.training_memory(size, "fp32").model_states == 16 * 1_000_000
    assert memory.training_memory(memory.ModelSize("bare", 10), "mixed").activations is None  # no architecture


def test_ddp_replicates_and_fsdp_shards():
    size = memory.ModelSize("toy", 1_000_000, layers=2, hidden=64, heads=4, largest_layer=50_000)
    plan = memory.training_memory(size, "mixed", batch=1, sequence=64)
    ddp, shard, offload = memory.per_gpu(plan, gpus=8)
    assert ddp["GPU GiB"] * GIB == pytest.approx(16e6 + plan.activations)
    assert shard["GPU GiB"] * GIB == pytest.approx(16e6 / 8 + 50_000 * 2 + plan.activations)
    assert offload["GPU GiB"] * GIB == pytest.approx(50_000 * 2 + plan.activations)
    assert offload["host GiB"] * GIB == pytest.approx(16e6 / 8)
    with pytest.raises(ValueError, match="GPUs must be a whole number"):
        memory.per_gpu(plan, gpus=0)


@pytest.mark.parametrize("label, role, parameters, layers", [
    ("local:smollm2-135m-instruct", "chat-lm", 134_515_008, 30),  # SmolLM2-135M: tied embeddings counted once
    ("local:all-minilm-l6-v2", "encoder", 22_713_216, 6),  # all-MiniLM-L6-v2 with its pooler
])
def test_the_offline_models_are_counted_from_their_configurations(label, role, parameters, layers):
    size = memory.model_size(label, role=role)
    assert (size.parameters, size.layers) == (parameters, layers)
    assert 0 < size.largest_layer < parameters / layers * 1.01


def test_a_model_that_cannot_be_had_offline_says_so():
    with pytest.raises(ValueError, match="not reachable|disabled"):
        memory.model_size("meta-llama/Llama-2-7b-hf")
