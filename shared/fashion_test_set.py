"""The frozen test wordings of the Fashion-MNIST classes: how the small CLIP (retrieval page) and the tiny Stable
Diffusion (diffusion page) are judged on words nobody trained or tuned them on.

    from shared import fashion_test_set
    fashion_test_set.WORDINGS["Sneaker"]        # ten everyday wordings of one class
    fashion_test_set.captions()                 # [(wording, class index), ...] in class order
    fashion_test_set.content_word_overlap(["a photo of a sneaker.", ...])   # share of test words seen in training

The wordings live in fashion_test_wordings.json, written once before any tuning, in a commit of their own, by
someone who wrote no training caption (issue 22). The caption writer (shared/fashion_captions.py) never imports
this module; training and checkpoint choice use only the development paraphrases there. A test
(tests/retrieval/test_wordings.py) checks that no training caption and no development wording contains a test
wording.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from shared.fashion_captions import CLASS_NAMES

PATH = Path(__file__).with_name("fashion_test_wordings.json")
# Words that carry no meaning of their own when counting which test words training captions share.
STOP_WORDS = frozenset("a an the of for with and or to in on at by from your you that is it its as one some".split())


def _load() -> dict[str, tuple[str, ...]]:
    saved = json.loads(PATH.read_text(encoding="utf-8"))
    wordings = {name: tuple(saved[name]) for name in CLASS_NAMES}
    if set(saved) - set(CLASS_NAMES) - {"_about"}:
        raise ValueError(f"{PATH.name} names classes Fashion-MNIST does not have: {set(saved) - set(CLASS_NAMES)}")
    return wordings


WORDINGS: dict[str, tuple[str, ...]] = _load()


def captions() -> list[tuple[str, int]]:
    """(wording, label) for every class, in class order."""
    return [(text, label) for label, name in enumerate(CLASS_NAMES) for text in WORDINGS[name]]


def content_words(text: str) -> set[str]:
    return {word for word in re.findall(r"[a-z][a-z'-]*", text.lower()) if word not in STOP_WORDS}


def content_word_overlap(training_texts: list[str]) -> float:
    """The share of the test wordings' distinct content words that occur in some training text: how much of the
    test's vocabulary training saw, word by word (a test wording itself is never a training text)."""
    seen = set().union(*(content_words(text) for text in training_texts)) if training_texts else set()
    words = set().union(*(content_words(text) for text, _ in captions()))
    return len(words & seen) / len(words) if words else 0.0
