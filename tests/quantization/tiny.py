"""Tiny seeded sentence classifiers of real classes, written into a folder with MiniLM's tokenizer, for the
quantization tests: a BERT one every variant can build, and an ERNIE one that optimum cannot export to ONNX
(the variant that fails while the others run).

    folder = make_tiny_classifier(tmp_path / "tiny", architecture="bert")
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
LABELS = {0: "negative", 1: "positive"}


def make_tiny_classifier(folder: Path, architecture: str = "bert", seed: int = 0) -> Path:
    """A 2-layer, 64-wide classifier with labels negative/positive and MiniLM's WordPiece vocabulary."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, ErnieConfig, ErnieForSequenceClassification

    from shared.registry import resolve

    common = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=128, id2label=LABELS,
                  label2id={v: k for k, v in LABELS.items()})
    torch.manual_seed(seed)
    if architecture == "bert":
        model = BertForSequenceClassification(BertConfig(**common))
    elif architecture == "ernie":
        model = ErnieForSequenceClassification(ErnieConfig(**common))  # BERT's layout; optimum has no ONNX config
    else:
        raise ValueError(f"architecture must be 'bert' or 'ernie', got {architecture!r}")
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    encoder = Path(resolve("encoder").location)
    for name in TOKENIZER_FILES:
        if (encoder / name).exists():
            shutil.copy(encoder / name, folder / name)
    return folder
