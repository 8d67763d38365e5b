"""Fine-tuning logic (no Gradio): data, validation of uploads, the four training methods, parameter counts.

The training loop itself lives in train.py, so the page and `accelerate launch -m spaces.finetune.train`
run the same code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from shared.assets import VADER_FILES, read_sentiment
from shared.labeled_csv import read_labeled_csv

METHODS = ("full", "freeze", "head", "lora")
METHOD_TITLES = {
    "full": "Full fine-tuning: every weight trains",
    "freeze": "Freeze the embeddings and the bottom N layers",
    "head": "Head only: the encoder is frozen, only the classifier trains",
    "lora": "LoRA (peft): low-rank adapters on the chosen modules, plus the classifier",
}
MOVIE_LABELS = ("negative", "positive")
EXTRA_DOMAINS = tuple(d for d in VADER_FILES if d != "movies")  # tweets, amazon, nyt: out-of-domain test sets
SPLIT_SEED = 2014  # the fixed split of the movie sentences; a run's own seed only subsamples and shuffles
TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class Dataset:
    train: list[tuple[str, int]]
    validation: list[tuple[str, int]]
    test: dict[str, list[tuple[str, int]]]  # domain -> examples; the first is the in-domain test set
    label_names: tuple[str, ...]
    description: str


def movie_splits() -> tuple[list, list, list]:
    """The fixed train / validation / test split of the 10,605 movie sentences (seeded, the same for every run)."""
    rows = [(r["text"], r["label"]) for r in read_sentiment("movies")]
    random.Random(SPLIT_SEED).shuffle(rows)
    n_test, n_val = int(len(rows) * TEST_FRACTION), int(len(rows) * VALIDATION_FRACTION)
    return rows[n_test + n_val:], rows[n_test:n_test + n_val], rows[:n_test]


def subsample(rows: list, size: int, seed: int) -> list:
    """`size` rows drawn with `seed` (all of them when size is 0 or larger than the list)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows if size <= 0 else rows[:size]


def check_sizes(train_size: int, validation_size: int, test_size: int) -> None:
    for name, value in (("train size", train_size), ("validation size", validation_size), ("test size", test_size)):
        if value < 0 or value != int(value):
            raise ValueError(f"{name} must be a whole number >= 0 (0 = all), got {value}")
    if 0 < train_size < 8:
        raise ValueError(f"train size must be at least 8 examples (or 0 for all), got {train_size}")


def movie_dataset(train_size: int, validation_size: int, test_size: int, seed: int,
                  other_domain_size: int = 300) -> Dataset:
    """Movie sentences for training, plus the other domains of the same package as extra test sets.

    `test_size` 0 keeps the whole fixed movie test split (1,060 sentences), so runs compare on the same
    sentences; `other_domain_size` subsamples the tweets, Amazon and NYT sets (0 = all of each).
    """
    check_sizes(train_size, validation_size, test_size)
    check_sizes(0, 0, other_domain_size)
    train, validation, test = movie_splits()
    tests = {"movies": subsample(test, test_size, seed) if test_size else test}
    for domain in EXTRA_DOMAINS:
        rows = [(r["text"], r["label"]) for r in read_sentiment(domain)]
        tests[domain] = subsample(rows, other_domain_size, seed)
    return Dataset(subsample(train, train_size, seed), subsample(validation, validation_size, seed), tests,
                   MOVIE_LABELS, "movie-review sentences (Hutto & Gilbert, 2014)")


def csv_dataset(path: str | Path, train_size: int, validation_size: int, test_size: int, seed: int) -> Dataset:
    """An uploaded CSV, split 80/10/10 with `seed`."""
    check_sizes(train_size, validation_size, test_size)
    rows, label_names = read_labeled_csv(path)
    rows = subsample(rows, 0, seed)
    n_test = max(1, len(rows) // 10)
    test, validation, train = rows[:n_test], rows[n_test:2 * n_test], rows[2 * n_test:]
    return Dataset(subsample(train, train_size, seed), subsample(validation, validation_size, seed),
                   {"upload": subsample(test, test_size, seed)}, label_names, f"uploaded CSV ({len(rows)} rows)")


def hub_dataset(name: str, train_size: int, validation_size: int, test_size: int, seed: int) -> Dataset:
    """A hub data set with `text`/`sentence` and `label` columns (e.g. rotten_tomatoes, stanfordnlp/sst2)."""
    from shared.hub import check_hub_id, hub_reachable

    check_sizes(train_size, validation_size, test_size)
    name = check_hub_id(name)
    if not hub_reachable():
        raise ValueError(f"The hub data set {name!r} needs the Hugging Face Hub, which is not available here; "
                         "use the movie sentences or upload a CSV.")
    import datasets

    splits = datasets.load_dataset(name)
    text_column = next((c for c in ("text", "sentence") if c in splits["train"].column_names), None)
    if text_column is None or "label" not in splits["train"].column_names:
        raise ValueError(f"{name!r} has no text/sentence and label columns: {splits['train'].column_names}")

    def rows(split: str) -> list[tuple[str, int]]:
        return list(zip(splits[split][text_column], splits[split]["label"]))

    train = rows("train")
    validation = rows("validation") if "validation" in splits else train[: len(train) // 10]
    test = rows("test") if "test" in splits and min(splits["test"]["label"]) >= 0 else validation
    label_names = tuple(splits["train"].features["label"].names)
    return Dataset(subsample(train, train_size, seed), subsample(validation, validation_size, seed),
                   {name: subsample(test, test_size, seed)}, label_names, f"hub data set {name}")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; shared tensors are counted once."""
    seen, trainable, total = set(), 0, 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def encoder_parts(model):
    """(embeddings, transformer layers) of a BERT-family classifier (BERT, DistilBERT, RoBERTa, MiniLM...)."""
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None:
        layers = getattr(getattr(base, "transformer", None), "layer", None)  # DistilBERT
    if layers is None or not hasattr(base, "embeddings"):
        raise ValueError(f"{type(model).__name__} is not a BERT-family encoder this page knows how to freeze")
    return base.embeddings, list(layers)


def lora_target_choices(model) -> list[str]:
    """Names of the linear layers inside the transformer layers that LoRA can wrap (query, key, value, dense...)."""
    import torch

    _, layers = encoder_parts(model)
    names = {name.split(".")[-1] for name, module in layers[0].named_modules() if isinstance(module, torch.nn.Linear)}
    return sorted(names)


def apply_method(model, method: str, freeze_layers: int = 0, lora_r: int = 8, lora_alpha: int = 16,
                 lora_dropout: float = 0.1, lora_targets: tuple[str, ...] = ("query", "value")):
    """Set which weights train; returns the model to train (a PeftModel for LoRA)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    embeddings, layers = encoder_parts(model)
    if method == "full":
        model.requires_grad_(True)
        return model
    if method == "freeze":
        if not 0 <= freeze_layers <= len(layers):
            raise ValueError(f"layers to freeze must be between 0 and {len(layers)}, got {freeze_layers}")
        model.requires_grad_(True)
        embeddings.requires_grad_(False)
        for layer in layers[:freeze_layers]:
            layer.requires_grad_(False)
        return model
    if method == "head":
        model.requires_grad_(False)
        model.base_model.requires_grad_(False)
        for name, module in model.named_children():
            if module is not model.base_model:
                module.requires_grad_(True)  # classifier (and pre_classifier for DistilBERT)
        pooler = getattr(model.base_model, "pooler", None)
        if pooler is not None:
            pooler.requires_grad_(True)  # BERT's pooler feeds the classifier: it is part of the head
        return model
    # LoRA
    from peft import LoraConfig, get_peft_model

    if lora_r < 1 or lora_alpha <= 0 or not 0 <= lora_dropout < 1:
        raise ValueError(f"LoRA needs rank >= 1, alpha > 0 and 0 <= dropout < 1; got r={lora_r}, "
                         f"alpha={lora_alpha}, dropout={lora_dropout}")
    allowed = lora_target_choices(model)
    unknown = [t for t in lora_targets if t not in allowed]
    if not lora_targets or unknown:
        raise ValueError(f"LoRA target modules must be some of {allowed}; got {list(lora_targets)}")
    config = LoraConfig(task_type="SEQ_CLS", r=int(lora_r), lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        target_modules=list(lora_targets))
    return get_peft_model(model, config)



def preview_parameters(location: str, num_labels: int, method: str, freeze_layers: int, lora_r: int,
                       lora_alpha: int, lora_dropout: float, lora_targets: tuple[str, ...]) -> tuple[int, int]:
    """(trainable, total) for a method before training, on the meta device: no weights are loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(location, num_labels=num_labels, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
        model = apply_method(model, method, freeze_layers, lora_r, lora_alpha, lora_dropout, lora_targets)
    return count_parameters(model)
