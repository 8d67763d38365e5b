"""In-context learning, measured: the model's accuracy on N labeled movie sentences (half positive, half
negative) with k demonstrations in the prompt, for each k, with Wilson 95% intervals.

    run = measure_icl(None, "auto", n=40, shot_counts="0, 1, 4", seed=0, key=session)
    run.results[0].accuracy, run.results[0].interval, run.describe()

The answer is the label word the model finds more likely (`score_labels`), not parsed free text. The
evaluation runs as a job of shared/jobs.py named ICL_JOB, so the page's Stop (`jobs.stop(session, ICL_JOB)`)
ends it between two sentences; the results so far are kept. Bad input raises ValueError naming the value
and the rule it broke.
"""

from __future__ import annotations

import math
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared import jobs
from shared.jobs import Progress, no_progress
from spaces.prompting.explorer import next_token_logits
from spaces.prompting.models import BACKENDS, ChatModel, load_chat_model
from spaces.prompting.prompts import build_prompt
from spaces.prompting.sampling import SEED_LIMIT, check_range, softmax

ICL_JOB = "prompting-icl"
ICL_MAX_EXAMPLES = int(os.environ.get("PLAYGROUND_PROMPTING_ICL_MAX_N", "400"))  # most sentences per run
ICL_MAX_SHOTS = 16
ICL_INSTRUCTION = "Classify the sentiment of the movie review as positive or negative. Answer with one word."
ICL_LABEL_WORDS = ("negative", "positive")  # index = the data set's label (0 negative, 1 positive)


@dataclass
class IclResult:
    shots: int
    n: int
    correct: int
    confusion: list[list[int]]  # confusion[true][predicted], labels 0 negative, 1 positive

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)


@dataclass
class IclRun:
    """One measurement as the page shows it: what ran, on what, and the results (partial when stopped)."""

    model_label: str
    backend: str  # the key of BACKENDS that ran
    n: int
    shot_counts: list[int]
    seed: int
    results: list[IclResult]
    stopped: bool

    def describe(self) -> str:
        done = [f"{r.shots}-shot {r.accuracy:.0%} [{r.interval[0]:.0%}, {r.interval[1]:.0%}]"
                for r in self.results if r.n]
        return ("Stopped early; partial results. " if self.stopped else "") + (
            f"{self.model_label} on {BACKENDS[self.backend]}, N={self.n} balanced sentences, seed {self.seed}: "
            + "; ".join(done) + ". Chance is 50%.")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion (95% with z=1.96): sound even at 0 or n successes."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denominator = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return (max(0.0, center - half), min(1.0, center + half))


def check_sentence_count(n: Any, most: int = ICL_MAX_EXAMPLES) -> int:
    """N as an int, or ValueError: a whole, even number (half positive, half negative) from 2 to `most`."""
    check_range("N", n, 2, most, whole=True)
    if int(n) % 2:
        raise ValueError(f"N must be an even number (half positive, half negative sentences), got {n}.")
    return int(n)


def check_shot_counts(shot_counts: Sequence[Any]) -> list[int]:
    """Distinct whole shot counts in 0..ICL_MAX_SHOTS, ascending, or ValueError naming the bad ones."""
    values = sorted(set(shot_counts))
    if not values:
        raise ValueError("Give at least one shot count, like '0, 1, 4'.")
    if any(int(k) != k for k in values) or values[0] < 0 or values[-1] > ICL_MAX_SHOTS:
        raise ValueError(f"Shot counts must be whole numbers between 0 and {ICL_MAX_SHOTS}, got {values}.")
    return [int(k) for k in values]


def parse_shot_list(text: str) -> list[int]:
    """'0, 1, 4' -> [0, 1, 4]: distinct shot counts in 0..ICL_MAX_SHOTS, ascending."""
    try:
        values = [int(part) for part in str(text).replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"Shot counts are whole numbers separated by commas, like '0, 1, 4'; got {text!r}.") from None
    return check_shot_counts(values)


def check_icl_inputs(n: Any, shot_counts: str | Sequence[int], seed: Any) -> tuple[int, list[int], int]:
    """(N, shot counts, seed) checked: N per check_sentence_count, the shot counts as text ('0, 1, 4') or a
    list per check_shot_counts, the seed a whole number from 0 to SEED_LIMIT."""
    n = check_sentence_count(n)
    shots = parse_shot_list(shot_counts) if isinstance(shot_counts, str) else check_shot_counts(shot_counts)
    check_range("seed", seed, 0, SEED_LIMIT, whole=True)
    return n, shots, int(seed)


def balanced_split(rows: Sequence[dict], n: int, demos_per_example: int, seed: int
                   ) -> list[tuple[dict, list[dict]]]:
    """`n` test rows, half of each label (shuffled with `seed`), each with its own `demos_per_example`
    demonstrations drawn from the other rows, balanced between labels and in a seeded random order."""
    n = check_sentence_count(n, most=len(rows))
    rng = random.Random(seed)
    by_label = {label: [r for r in rows if int(r["label"]) == label] for label in (0, 1)}
    for label in by_label:
        rng.shuffle(by_label[label])
    half = n // 2
    if min(len(v) for v in by_label.values()) < half + demos_per_example:
        raise ValueError(f"N={n} is more than the data set can balance.")
    tests = by_label[0][:half] + by_label[1][:half]
    pools = {label: by_label[label][half:] for label in (0, 1)}
    rng.shuffle(tests)
    plan = []
    for row in tests:
        first = rng.choice((0, 1))  # which label gets the extra demonstration when k is odd
        counts = {first: (demos_per_example + 1) // 2, 1 - first: demos_per_example // 2}
        demos = [d for label in (0, 1) for d in rng.sample(pools[label], counts[label])]
        rng.shuffle(demos)
        plan.append((row, demos))
    return plan


def label_token_ids(tokenizer: Any, words: Sequence[str], chat: bool) -> list[int]:
    """The first token of each label word as it would follow the prompt (after 'Output:' it has a space)."""
    ids = []
    for word in words:
        pieces = tokenizer(word if chat else " " + word, add_special_tokens=False)["input_ids"]
        if not pieces:
            raise ValueError(f"The label word {word!r} encodes to no token.")
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"The label words {list(words)} start with the same token; they cannot be told apart.")
    return ids


def score_labels(logits: np.ndarray, label_ids: Sequence[int]) -> tuple[int, np.ndarray]:
    """The predicted label (index into `label_ids`) and each label's probability renormalised over the labels:
    the model's own preference between the label words, with no free text to parse."""
    chosen = np.asarray(logits, dtype=np.float64)[list(label_ids)]
    probs = softmax(chosen)
    return int(np.argmax(probs)), probs


def evaluate_icl(chat: ChatModel, rows: Sequence[dict], n: int, shot_counts: str | Sequence[int], seed: int,
                 progress: Progress = no_progress, stop: threading.Event | None = None
                 ) -> tuple[list[IclResult], bool]:
    """Accuracy of the model on `n` balanced movie sentences with k demonstrations, for each k.

    Returns (results, stopped). Each example's k-shot prompt uses the first k of its own demonstrations,
    so the runs differ only in how many examples the prompt shows.
    """
    # 1. Check inputs and draw the examples.
    n, shot_counts, seed = check_icl_inputs(n, shot_counts, seed)
    plan = balanced_split(rows, n, max(shot_counts), seed)
    use_chat = chat.has_chat_template
    label_ids = label_token_ids(chat.tokenizer, ICL_LABEL_WORDS, use_chat)
    # 2. Score every example at every k, comparing the label words' probabilities.
    results, total, done = [], len(plan) * len(shot_counts), 0
    for k in shot_counts:
        result = IclResult(k, 0, 0, [[0, 0], [0, 0]])
        results.append(result)
        for row, demos in plan:
            if stop is not None and stop.is_set():
                return results, True
            examples = [(d["text"], ICL_LABEL_WORDS[int(d["label"])]) for d in demos[:k]]
            prompt = build_prompt(chat.tokenizer, ICL_INSTRUCTION, examples, k, row["text"], chat.context_length,
                                  max_new_tokens=1, use_chat=use_chat)
            predicted, _ = score_labels(next_token_logits(chat, prompt.ids), label_ids)
            truth = int(row["label"])
            result.n += 1
            result.correct += int(predicted == truth)
            result.confusion[truth][predicted] += 1
            done += 1
            progress(done / total, f"{k}-shot: {result.n}/{len(plan)}")
    return results, False


def measure_icl(model: str | None, backend: str, n: Any, shot_counts: str | Sequence[int], seed: Any,
                progress: Progress = no_progress, key: str = "") -> IclRun:
    """What the page's Measure button runs: evaluate_icl on the movie sentences, as a stoppable job.

    1. Check the inputs. 2. Load the model and the sentences. 3. Evaluate as a job keyed by `key`.
    """
    # 1. Check inputs before loading anything.
    n, shots, seed = check_icl_inputs(n, shot_counts, seed)
    # 2. Load the model (the first ONNX Runtime run converts it, once) and the labeled sentences.
    from shared.assets import read_sentiment

    progress(0.0, "loading the model")
    chat = load_chat_model(model, backend=backend)
    rows = read_sentiment("movies")

    # 3. Evaluate in a job: Stop sets its event, and the sentences scored so far are kept.
    def evaluate(stop: threading.Event) -> tuple[list[IclResult], bool]:
        return evaluate_icl(chat, rows, n, shots, seed, progress, stop)

    results, stopped = jobs.run(evaluate, name=ICL_JOB, key=key)
    return IclRun(chat.source.label, chat.backend, n, shots, seed, results, stopped)
