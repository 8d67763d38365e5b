"""The frozen test wordings (shared/fashion_test_set.py) stay out of training and tuning, and the figures on them are
reported apart from the others.

    .venv/bin/python -m pytest tests/retrieval/test_wordings.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from shared import fashion_captions as captions
from shared import fashion_test_set
from spaces.retrieval import train


def plain(text: str) -> str:
    text = text.lower().strip().rstrip(".")
    for article in ("a ", "an ", "the "):
        text = text.removeprefix(article)
    return text


def test_the_test_set_has_six_or_more_wordings_per_class_and_none_is_a_development_wording():
    development = {plain(text) for texts in captions.PARAPHRASES.values() for text in texts}
    assert list(fashion_test_set.WORDINGS) == list(captions.CLASS_NAMES)
    assert len(fashion_test_set.captions()) >= 60
    for name, wordings in fashion_test_set.WORDINGS.items():
        assert len(wordings) >= 6, name
        assert not {plain(w) for w in wordings} & development, name


def test_no_training_caption_and_no_development_wording_contains_a_test_wording():
    """Seen to fail with one test wording added to a class's WORDINGS (its captions then contain it)."""
    training = [text.lower() for text, _ in captions.training_captions()]
    development = [text.lower() for text, _ in captions.paraphrase_captions()]
    leaks = [w for w, _ in fashion_test_set.captions()
             if any(plain(w) in text for text in training + development)]
    assert not leaks, f"{len(leaks)} test wording(s) occur in training captions or development wordings"


def test_the_caption_writer_never_reads_the_test_set():
    """shared/fashion_captions.py (the captions both trainings use) imports nothing that reads the test set."""
    source = Path(captions.__file__).read_text()
    imported = {node.module or "" for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not any("test_set" in name or "test_wordings" in name for name in imported)
    assert "fashion_test_wordings" not in source


def test_content_word_overlap_counts_the_test_words_training_saw():
    words = set().union(*(fashion_test_set.content_words(w) for w, _ in fashion_test_set.captions()))
    assert fashion_test_set.content_word_overlap([]) == 0.0
    assert fashion_test_set.content_word_overlap([" ".join(sorted(words))]) == 1.0
    half = sorted(words)[: len(words) // 2]
    assert fashion_test_set.content_word_overlap([" ".join(half)]) == pytest.approx(len(half) / len(words))
    assert 0 < train.test_word_overlap([t for t, _ in captions.training_captions()]) < 1


def test_the_three_figure_sets_are_measured_apart():
    """A planted text encoder that knows the training captions and the development wordings but maps every test
    wording to noise: the templates and paraphrases read perfect, the unseen figures fall to about chance. Seen
    to fail with the unseen figures computed from the paraphrases."""
    rng = np.random.default_rng(0)
    classes = np.eye(10, 16, dtype=np.float32)
    known = {text: label for text, label in captions.training_captions() + captions.paraphrase_captions()}

    def embed(texts):
        return np.stack([classes[known[t]] if t in known else rng.normal(size=16).astype(np.float32) for t in texts])

    labels = np.repeat(np.arange(10), 30)
    images = classes[labels]
    results = train.evaluate(embed, images, labels)
    assert results["zero_shot_templates"] == 1.0 and results["zero_shot_paraphrases"] == 1.0
    assert results["paraphrases_text_to_image@1"] == 1.0
    assert results["zero_shot_unseen"] < 0.5 and results["unseen_text_to_image@1"] < 0.5
    assert results["zero_shot_single_unseen"] < 0.5 and results["zero_shot_single_paraphrase"] == 1.0
