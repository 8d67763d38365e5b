"""Fine-tuning logic on the real MiniLM: what each method trains, LoRA placement, data splits, CSV checks."""

from __future__ import annotations

import pytest

from shared import labeled_csv
from shared.assets import ensure
from spaces.finetune import logic
from spaces.finetune.train import TrainConfig, command_line, create_model, parse_args

MINILM_LAYERS = 6


@pytest.fixture(scope="module")
def location() -> str:
    return str(ensure("all-minilm-l6-v2"))


@pytest.fixture
def model(location):
    return create_model(location, num_labels=2, seed=0)


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_trains_everything(model):
    trainable, total = logic.count_parameters(logic.apply_method(model, "full"))
    assert trainable == total == numel(model)


@pytest.mark.parametrize("frozen", [0, 3, MINILM_LAYERS])
def test_freeze_counts_and_no_gradient_reaches_frozen_layers(model, frozen):
    import torch

    model = logic.apply_method(model, "freeze", freeze_layers=frozen)
    embeddings, layers = logic.encoder_parts(model)
    expected_frozen = numel(embeddings) + sum(numel(layer) for layer in layers[:frozen])
    trainable, total = logic.count_parameters(model)
    assert total - trainable == expected_frozen
    inputs = {"input_ids": torch.tensor([[101, 2307, 3185, 102]]), "labels": torch.tensor([1])}
    model(**inputs).loss.backward()
    assert all(p.grad is None for p in embeddings.parameters())
    assert all(p.grad is None for layer in layers[:frozen] for p in layer.parameters())
    assert all(p.grad is not None for layer in layers[frozen:] for p in layer.parameters())
    assert model.classifier.weight.grad is not None


def test_head_only_trains_pooler_and_classifier(model):
    model = logic.apply_method(model, "head")
    trainable, _ = logic.count_parameters(model)
    assert trainable == numel(model.classifier) + numel(model.bert.pooler)


def test_lora_wraps_exactly_the_named_modules(model):
    model = logic.apply_method(model, "lora", lora_r=4, lora_alpha=8, lora_targets=("query", "value"))
    wrapped = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if "lora_A" in name}
    assert len(wrapped) == 2 * MINILM_LAYERS
    assert all(name.endswith(("attention.self.query", "attention.self.value")) for name in wrapped)
    trainable, total = logic.count_parameters(model)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == 2 * MINILM_LAYERS * 4 * (384 + 384)  # A: r x 384 and B: 384 x r per wrapped layer
    assert trainable == lora + 384 * 2 + 2  # plus the classifier, which peft keeps trainable for SEQ_CLS
    assert trainable / total < 0.01


def test_preview_on_meta_matches_real_counts(location, model):
    for method in logic.METHODS:
        real = logic.count_parameters(logic.apply_method(create_model(location, 2, 0), method, 3, 8, 16, 0.1,
                                                         ("query", "value")))
        assert logic.preview_parameters(location, 2, method, 3, 8, 16, 0.1, ("query", "value")) == real


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "lora", "lora_targets": ("nonexistent",)}, "target modules must be some of"),
    ({"method": "lora", "lora_r": 0}, "rank >= 1"),
    ({"method": "freeze", "freeze_layers": 7}, "between 0 and 6"),
    ({"method": "prune"}, "method must be one of"),
])
def test_bad_method_settings_are_refused(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        logic.apply_method(model, **kwargs)


def test_movie_split_is_fixed_and_disjoint():
    train, validation, test = logic.movie_splits()
    assert (len(train), len(validation), len(test)) == (8485, 1060, 1060)
    assert not {t for t, _ in test} & {t for t, _ in train}
    assert logic.movie_splits()[2] == test
    data = logic.movie_dataset(100, 50, 0, seed=3, other_domain_size=40)
    assert (len(data.train), len(data.validation)) == (100, 50)
    assert data.test["movies"] == test  # the whole fixed test split by default
    assert set(data.test) == {"movies", "tweets", "amazon", "nyt"}
    assert all(len(data.test[d]) == 40 for d in ("tweets", "amazon", "nyt"))
    assert len(logic.movie_dataset(100, 50, 30, seed=3).test["movies"]) == 30
    again, other_seed = logic.movie_dataset(100, 50, 0, seed=3), logic.movie_dataset(100, 50, 0, seed=4)
    assert again.train == data.train != other_seed.train


def write(tmp_path, text: str | bytes, name="data.csv"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_csv_with_word_labels(tmp_path):
    rows = "\n".join(f"sentence number {i},{'good' if i % 2 else 'bad'}" for i in range(30))
    examples, labels = logic.read_labeled_csv(write(tmp_path, "Text,Label\n" + rows))
    assert labels == ("bad", "good") and len(examples) == 30 and examples[1] == ("sentence number 1", 1)


@pytest.mark.parametrize("content, message", [
    ("sentence,label\nhello,1\n", "missing: text"),
    ("text,category\nhello,1\n", "missing: label"),
    ("text,label\n" + "hi,1\n" * 10 + ",0\nthere,\n", "2 row\\(s\\) have an empty text or label \\(lines 12, 13\\)"),
    ("text,label\n" + "same,1\n" * 30, "same label"),
    ("text,label\n" + "a,1\nb,0\n" * 5, "at least 20"),
    (b"text,label\n\xff\xfe,1\n", "not UTF-8"),
])
def test_bad_csv_is_refused_with_the_reason(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        logic.read_labeled_csv(write(tmp_path, content))


def test_csv_too_large(tmp_path, monkeypatch):
    monkeypatch.setattr(labeled_csv, "MAX_UPLOAD_BYTES", 100)
    with pytest.raises(ValueError, match="the limit is"):
        logic.read_labeled_csv(write(tmp_path, "text,label\n" + "x" * 200 + ",1\n"))


def test_script_flags_round_trip():
    config = TrainConfig(method="lora", lora_r=4, lora_targets=("query", "value"), max_steps=50, bf16=True,
                         output_dir="runs/x")
    command = command_line(config, processes=2)
    assert command.startswith("accelerate launch --multi_gpu --num_processes 2 -m spaces.finetune.train")
    assert parse_args(command.split("spaces.finetune.train")[1].split()) == config


def test_hub_data_offline_is_refused():
    with pytest.raises(ValueError, match="needs the Hugging Face Hub"):
        logic.hub_dataset("rotten_tomatoes", 10, 10, 10, 0)
