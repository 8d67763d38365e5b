"""In-context learning, measured as a lab: what moves few-shot accuracy on a small model — the prompt format, the
label words, the demonstrations' labels, their draw and order — with the spread over several draws, the label
bias made visible, and contextual calibration (Zhao et al. 2021, "Calibrate Before Use") before and after.

    settings = IclSettings(n=100, shot_counts=[0, 1, 4, 8], seeds=3, formats=["chat turns", "one message"])
    run = measure_icl(None, "auto", settings, key=session)
    run.cells            # one per (format, seed, k): counts, confusion, predicted shares, label probabilities
    run.summary_rows()   # per (format, k, calibrated): mean accuracy over seeds, spread, pooled Wilson interval

The protocol (Zhao et al.'s): the N test sentences are one balanced draw; each seed draws its own balanced,
shuffled demonstrations from the other sentences, and the k-shot prompt of every test sentence shows the first
k of them. The answer is the label word the model finds more likely (`score_labels`), not parsed free text.

Every prompt of one (format, seed, k) shares everything up to the test sentence, so the shared part is run once
and each sentence costs only its own tokens (`PrefixScorer`). The predictions are those of running each whole
prompt (tests/prompting/test_icl.py; benchmarks/icl.py checks it on every prompt it times); the probabilities
differ in the third decimal at most, because int8 ONNX Runtime quantizes activations with one scale per call. The
evaluation runs as a job of shared/jobs.py named ICL_JOB, so the page's Stop ends it between two prompts and
keeps what was scored. Bad input raises ValueError naming the value and the rule it broke.
"""

from __future__ import annotations

import math
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared import jobs
from shared.jobs import Progress, no_progress
from spaces.prompting.models import BACKENDS, ChatModel, load_chat_model
from spaces.prompting.prompts import plain_prompt, render_prompt
from shared.checks import check_range
from spaces.prompting.sampling import SEED_LIMIT, softmax

ICL_JOB = "prompting-icl"
ICL_MAX_EXAMPLES = int(os.environ.get("PLAYGROUND_PROMPTING_ICL_MAX_N", "400"))  # most sentences per run
ICL_MAX_SHOTS = 16
ICL_MAX_SEEDS = 10
MOVIES = "movie sentences (Hutto & Gilbert 2014)"
# How the demonstrations reach the model. Measured on SmolLM2-135M (the figures), the format moves
# accuracy more than the number of examples does.
FORMATS = {
    "chat turns": "each demonstration a user turn and an assistant answer, in the chat template",
    "one message": "instruction, demonstrations and the sentence inline in one user message, in the chat template",
    "plain text": "no chat template: 'Input: ... Output: ...' blocks, a base model's prompt",
}
# The words the model answers with, index = label (0 negative, 1 positive), and an instruction that names them.
LABEL_SETS: dict[str, tuple[tuple[str, str], str]] = {
    "positive / negative": (("negative", "positive"), "Classify the sentiment of the movie review as positive or "
                                                      "negative. Answer with one word."),
    "great / terrible": (("terrible", "great"), "Is the movie review great or terrible? Answer with one word."),
    "good / bad": (("bad", "good"), "Is the movie review good or bad? Answer with one word."),
    "yes / no": (("no", "yes"), "Is the movie review positive? Answer yes or no."),
    "A / B": (("B", "A"), "Is the movie review (A) positive or (B) negative? Answer A or B."),
}
ICL_LABEL_WORDS = LABEL_SETS["positive / negative"][0]
ICL_INSTRUCTION = LABEL_SETS["positive / negative"][1]
# The demonstrations' labels: as given, swapped (Min et al. 2022: does the model read them?), or a coin flip.
DEMO_LABELS = {"gold": "the demonstrations' true labels", "flipped": "every demonstration's label swapped",
               "random": "each demonstration's label drawn at random"}
CONTENT_FREE = ("N/A", "", "[MASK]")  # Zhao et al.'s content-free inputs: what the prompt alone makes the model say


# ---- results -------------------------------------------------------------------------------------------------

def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion (95% with z=1.96): sound even at 0 or n successes."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denominator = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return (max(0.0, center - half), min(1.0, center + half))


@dataclass
class IclCell:
    """One (format, seed, k): the N test sentences scored with one prompt prefix."""

    format: str
    seed: int
    shots: int
    n: int = 0
    correct: int = 0
    calibrated_correct: int = 0
    confusion: list[list[int]] = field(default_factory=lambda: [[0, 0], [0, 0]])  # [true][predicted]
    calibrated_predicted: list[int] = field(default_factory=lambda: [0, 0])  # count per label, after calibration
    label_probability_sum: list[float] = field(default_factory=lambda: [0.0, 0.0])  # over the two label words
    calibrated_probability_sum: list[float] = field(default_factory=lambda: [0.0, 0.0])  # the same, calibrated
    word_probability_sum: list[float] = field(default_factory=lambda: [0.0, 0.0])  # over the whole vocabulary
    prior: list[float] = field(default_factory=lambda: [0.5, 0.5])  # the content-free inputs' mean, per label

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def calibrated_accuracy(self) -> float:
        return self.calibrated_correct / self.n if self.n else float("nan")

    @property
    def predicted(self) -> list[int]:
        return [self.confusion[0][label] + self.confusion[1][label] for label in (0, 1)]


@dataclass
class IclSettings:
    n: int = 40  # test sentences, half of each label
    shot_counts: list[int] = field(default_factory=lambda: [0, 1, 4])
    seeds: int = 3  # draws of demonstrations; seed s uses base_seed + s
    base_seed: int = 0  # also draws the test sentences
    formats: list[str] = field(default_factory=lambda: ["chat turns"])
    label_set: str = "positive / negative"
    demo_labels: str = "gold"


@dataclass
class IclData:
    """The sentences a run evaluates: (text, label) with label 0 or 1, the label words, and the instruction."""

    name: str
    rows: list[tuple[str, int]]
    label_words: tuple[str, str]
    instruction: str


@dataclass
class IclRun:
    """One measurement as the page shows it: what ran, on what, and the cells (partial when stopped)."""

    model_label: str
    backend: str  # the key of BACKENDS that ran
    settings: IclSettings
    data: str
    label_words: tuple[str, str]
    cells: list[IclCell]
    example_prompts: dict[str, str]  # format -> the exact text of one evaluated prompt (the largest k)
    stopped: bool
    prompts_per_second: float = float("nan")

    def setting_name(self, fmt: str, calibrated: bool) -> str:
        words = "/".join(reversed(self.label_words))
        demo = "" if self.settings.demo_labels == "gold" else f" · {self.settings.demo_labels} labels"
        return f"{fmt} · {words}{demo}" + (" · calibrated" if calibrated else "")

    def summary_rows(self, calibration: bool = True) -> list[dict[str, Any]]:
        """Per (format, k), and again calibrated when asked: mean accuracy over the seeds, their spread (lowest
        and highest seed), the pooled Wilson 95% interval, and the label bias (share predicted positive, mean
        probability of each label word)."""
        rows = []
        groups: dict[tuple[str, int], list[IclCell]] = {}
        for cell in self.cells:
            if cell.n:
                groups.setdefault((cell.format, cell.shots), []).append(cell)
        for calibrated in (False, True) if calibration else (False,):
            for (fmt, shots), cells in groups.items():
                accuracies = [c.calibrated_accuracy if calibrated else c.accuracy for c in cells]
                correct = sum(c.calibrated_correct if calibrated else c.correct for c in cells)
                n = sum(c.n for c in cells)
                low, high = wilson_interval(correct, n)
                positive = sum(c.calibrated_predicted[1] if calibrated else c.predicted[1] for c in cells)
                # A calibrated row's label probabilities are the calibrated ones (what its predictions come from);
                # the label words' share of the vocabulary is the model's own, the same before and after.
                probability = sum((c.calibrated_probability_sum if calibrated else c.label_probability_sum)[1]
                                  for c in cells)
                rows.append({
                    "setting": self.setting_name(fmt, calibrated), "format": fmt, "calibrated": calibrated,
                    "shots": shots, "seeds": len(cells), "N": n, "accuracy": float(np.mean(accuracies)),
                    "spread low": float(min(accuracies)), "spread high": float(max(accuracies)),
                    "CI low": low, "CI high": high, "predicted positive": positive / n,
                    f"P({self.label_words[1]})": probability / n,
                    "label words' share of the vocabulary": sum(sum(c.word_probability_sum) for c in cells) / n,
                })
        return rows

    def describe(self) -> str:
        rows = self.summary_rows(calibration=False)
        done = [f"{r['format']} {r['shots']}-shot {r['accuracy']:.0%} (seeds {r['spread low']:.0%}–"
                f"{r['spread high']:.0%})" for r in rows]
        speed = f" {self.prompts_per_second:.1f} prompts/s." if math.isfinite(self.prompts_per_second) else ""
        return ("Stopped early; partial results. " if self.stopped else "") + (
            f"{self.model_label} on {BACKENDS[self.backend]}, {self.data}, N={self.settings.n} balanced, "
            f"{self.settings.seeds} seed(s) from {self.settings.base_seed}: " + "; ".join(done)
            + f". Chance is 50%.{speed}")


# ---- checking the settings -----------------------------------------------------------------------------------

def check_sentence_count(n: Any, most: int = ICL_MAX_EXAMPLES) -> int:
    """N as an int, or ValueError: a whole, even number (half of each label) from 2 to `most`."""
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


def check_settings(n: Any, shot_counts: str | Sequence[int], seed: Any, seeds: Any = 1,
                   formats: Sequence[str] | str = ("chat turns",), label_set: str = "positive / negative",
                   demo_labels: str = "gold") -> IclSettings:
    """The lab's settings checked, each refusal naming the value and the rule."""
    n = check_sentence_count(n)
    shots = parse_shot_list(shot_counts) if isinstance(shot_counts, str) else check_shot_counts(shot_counts)
    check_range("seed", seed, 0, SEED_LIMIT, whole=True)
    check_range("seeds", seeds, 1, ICL_MAX_SEEDS, whole=True)
    formats = [formats] if isinstance(formats, str) else list(formats or [])
    if not formats:
        raise ValueError(f"Choose at least one prompt format: {list(FORMATS)}.")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"prompt format must be one of {list(FORMATS)}, got {unknown}.")
    if label_set not in LABEL_SETS:
        raise ValueError(f"label words must be one of {list(LABEL_SETS)}, got {label_set!r}.")
    if demo_labels not in DEMO_LABELS:
        raise ValueError(f"demonstration labels must be one of {list(DEMO_LABELS)}, got {demo_labels!r}.")
    return IclSettings(n, shots, int(seeds), int(seed), list(dict.fromkeys(formats)), label_set, demo_labels)


def check_icl_inputs(n: Any, shot_counts: str | Sequence[int], seed: Any) -> tuple[int, list[int], int]:
    """(N, shot counts, seed) checked, as check_settings does."""
    settings = check_settings(n, shot_counts, seed)
    return settings.n, settings.shot_counts, settings.base_seed


# ---- the data ------------------------------------------------------------------------------------------------

def movie_data(label_set: str = "positive / negative") -> IclData:
    from shared.assets import read_sentiment

    words, instruction = LABEL_SETS[label_set]
    rows = [(str(r["text"]), int(r["label"])) for r in read_sentiment("movies")]
    return IclData(MOVIES, rows, words, instruction)


def uploaded_data(path: str) -> IclData:
    """A CSV of text and label with exactly two labels (any words): the labels are the answer words, in the
    CSV's sorted order, and the instruction names them."""
    from pathlib import Path

    from shared.labeled_csv import read_labeled_csv

    rows, names = read_labeled_csv(path, min_rows=4, purpose="to evaluate and to draw demonstrations from")
    if len(names) != 2:
        raise ValueError(f"The CSV has {len(names)} labels ({', '.join(names[:6])}); the lab compares two label "
                         "words, so it needs exactly two.")
    if any(not name.replace("-", "").replace("_", "").isalnum() for name in names):
        raise ValueError(f"The labels {list(names)} must be single words (letters, digits, '-' or '_'): the "
                         "model answers with one.")
    instruction = f"Classify the text as {names[0]} or {names[1]}. Answer with one word."
    return IclData(f"{Path(path).name} ({len(rows)} rows)", rows, (names[0], names[1]), instruction)


def draw_tests(rows: Sequence[tuple[str, int]], n: int, seed: int) -> tuple[list[tuple[str, int]], list]:
    """`n` test rows, half of each label, shuffled with `seed`; and the rest, from which demonstrations come."""
    n = check_sentence_count(n, most=len(rows))
    rng = random.Random(seed)
    by_label = {label: [r for r in rows if r[1] == label] for label in (0, 1)}
    for label in by_label:
        rng.shuffle(by_label[label])
    half = n // 2
    short = [label for label in (0, 1) if len(by_label[label]) < half + 1]
    if short:
        raise ValueError(f"N={n} needs {half} test sentences of each label and some left for demonstrations; the "
                         f"data has {len(by_label[0])} and {len(by_label[1])}.")
    tests = by_label[0][:half] + by_label[1][:half]
    rng.shuffle(tests)
    return tests, by_label[0][half:] + by_label[1][half:]


def draw_demos(pool: Sequence[tuple[str, int]], k: int, seed: int) -> list[tuple[str, int]]:
    """`k` demonstrations from `pool`, balanced between the labels (the odd one's label by coin) and shuffled:
    one draw per seed, shared by every test sentence of that seed."""
    rng = random.Random(f"demos-{seed}")
    by_label = {label: [r for r in pool if r[1] == label] for label in (0, 1)}
    first = rng.choice((0, 1))
    counts = {first: (k + 1) // 2, 1 - first: k // 2}
    if any(len(by_label[label]) < counts[label] for label in (0, 1)):
        raise ValueError(f"{k} demonstrations need {counts[0]} and {counts[1]} of each label; the data leaves "
                         f"{len(by_label[0])} and {len(by_label[1])}.")
    demos = [d for label in (0, 1) for d in rng.sample(by_label[label], counts[label])]
    rng.shuffle(demos)
    return demos


def demo_words(demos: Sequence[tuple[str, int]], words: tuple[str, str], mode: str, seed: int
               ) -> list[tuple[str, str]]:
    """The demonstrations as (text, answer word): the true label's word, the other one, or a random one."""
    rng = random.Random(f"labels-{seed}")
    if mode == "gold":
        return [(text, words[label]) for text, label in demos]
    if mode == "flipped":
        return [(text, words[1 - label]) for text, label in demos]
    return [(text, words[rng.randrange(2)]) for text, _ in demos]


# ---- prompts -------------------------------------------------------------------------------------------------

def format_prompt(tokenizer: Any, fmt: str, instruction: str, demos: Sequence[tuple[str, str]], query: str
                  ) -> tuple[str, list[int]]:
    """The exact prompt text and ids for one test sentence in one format."""
    if fmt == "chat turns":
        return render_prompt(tokenizer, instruction, demos, query, use_chat=True)
    if fmt == "one message":
        content = plain_prompt(instruction, demos, query)
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        return text, tokenizer(text, add_special_tokens=False)["input_ids"]
    if fmt == "plain text":
        return render_prompt(tokenizer, instruction, demos, query, use_chat=False)
    raise ValueError(f"prompt format must be one of {list(FORMATS)}, got {fmt!r}.")


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


def calibrate(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Contextual calibration (Zhao et al. 2021, §5): divide out what the prompt alone makes the model say —
    W = diag(prior)⁻¹, b = 0 — and renormalise. A prompt whose content-free answer is 50/50 is left unchanged."""
    adjusted = np.asarray(probs, dtype=np.float64) / np.maximum(np.asarray(prior, dtype=np.float64), 1e-12)
    return adjusted / adjusted.sum()


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading ids all sequences share, kept at least one short of the shortest (the last token's
    logits are what each prompt is run for)."""
    shortest = min(len(s) for s in sequences)
    length = 0
    while length < shortest - 1 and all(s[length] == sequences[0][length] for s in sequences):
        length += 1
    return length


class PrefixScorer:
    """Next-token logits for many prompts that share a prefix: the prefix runs once (its KV cache kept), each
    prompt only its own tokens. `reuse=False` runs every prompt whole (the plain path, as the page ran before)."""

    def __init__(self, chat: ChatModel, reuse: bool = True):
        self.chat, self.reuse = chat, reuse
        self.onnx = chat.backend != "pytorch"
        self.prefix: list[int] = []
        self.state: Any = None

    def set_prefix(self, ids: Sequence[int]) -> None:
        ids = list(ids)
        if not self.reuse or ids == self.prefix:
            self.prefix = ids
            return
        if self.onnx:
            if self.state is not None and self.prefix and ids[:len(self.prefix)] == self.prefix \
                    and len(ids) > len(self.prefix):  # the k-shot prefix grows from the (k-1)-shot one
                _, self.state = self.chat.model.extend(self.state, ids[len(self.prefix):])
            else:
                self.state = self.chat.model.prefill(ids)[1] if ids else None
        else:
            self.state = self._torch_cache(ids) if ids else None
        self.prefix = ids

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """The logits after `ids`, which start with the current prefix."""
        ids = list(ids)
        if not self.reuse or not self.prefix:
            return self._whole(ids)
        if ids[:len(self.prefix)] != self.prefix or len(ids) <= len(self.prefix):
            raise ValueError("the prompt does not extend the shared prefix")
        rest = ids[len(self.prefix):]
        if self.onnx:
            return self.chat.model.extend(self.state, rest)[0].astype(np.float64)
        return self._torch_continue(rest)

    def _whole(self, ids: list[int]) -> np.ndarray:
        from spaces.prompting.explorer import next_token_logits

        return next_token_logits(self.chat, ids)

    def _torch_cache(self, ids: list[int]) -> Any:
        import torch

        with torch.inference_mode():
            out = self.chat.model(torch.tensor([ids], device=self.chat.model.device), use_cache=True)
        return out.past_key_values

    def _torch_continue(self, rest: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.chat.model(torch.tensor([rest], device=self.chat.model.device), past_key_values=self.state,
                                  use_cache=True)
            self.state.crop(len(self.prefix))  # the cache grew by `rest`: back to the shared prefix
        return out.logits[0, -1].float().cpu().numpy().astype(np.float64)


# ---- the evaluation ------------------------------------------------------------------------------------------

def evaluate_icl(chat: ChatModel, data: IclData, settings: IclSettings, progress: Progress = no_progress,
                 stop: threading.Event | None = None, reuse: bool = True, predictions: list | None = None
                 ) -> tuple[list[IclCell], dict[str, str], bool]:
    """Every (format, seed, k) cell of the settings on `data`. Returns (cells, example prompts, stopped);
    `predictions`, when given, receives (format, seed, k, sentence, predicted, calibrated) for every sentence.

    1. Draw the test sentences (once) and each seed's demonstrations. 2. For each cell, build every prompt,
    run their shared prefix once, then score each test sentence and the content-free inputs.
    """
    # 1. The draws.
    tests, pool = draw_tests(data.rows, settings.n, settings.base_seed)
    seeds = [settings.base_seed + s for s in range(settings.seeds)]
    k_max = max(settings.shot_counts)
    demos = {seed: demo_words(draw_demos(pool, k_max, seed), data.label_words, settings.demo_labels, seed)
             for seed in seeds}
    scorer = PrefixScorer(chat, reuse=reuse)
    cells: list[IclCell] = []
    examples: dict[str, str] = {}
    total = len(settings.formats) * len(seeds) * len(settings.shot_counts) * (len(tests) + len(CONTENT_FREE))
    done = 0
    # 2. Score, cell by cell.
    for fmt in settings.formats:
        chat_answer = fmt != "plain text"
        if chat_answer and not chat.has_chat_template:
            raise ValueError(f"{chat.source.label if chat.source else 'This model'} has no chat template: choose "
                             "the 'plain text' format for it.")
        label_ids = label_token_ids(chat.tokenizer, data.label_words, chat_answer)
        for seed in seeds:
            for k in settings.shot_counts:
                cell = IclCell(fmt, seed, k)
                cells.append(cell)
                shown = demos[seed][:k]
                prompts = [format_prompt(chat.tokenizer, fmt, data.instruction, shown, text)[1]
                           for text, _ in tests]
                free = [format_prompt(chat.tokenizer, fmt, data.instruction, shown, text)[1]
                        for text in CONTENT_FREE]
                if k == k_max and seed == seeds[0]:
                    examples[fmt] = format_prompt(chat.tokenizer, fmt, data.instruction, shown, tests[0][0])[0]
                scorer.set_prefix(prompts[0][:common_prefix_length(prompts + free)])
                # 2a. What the prompt alone makes the model answer: the content-free inputs' mean.
                priors = []
                for ids in free:
                    if stop is not None and stop.is_set():
                        return cells, examples, True
                    priors.append(score_labels(scorer.logits(ids), label_ids)[1])
                    done += 1
                cell.prior = [float(p) for p in np.mean(priors, axis=0)]
                # 2b. Each test sentence, before and after calibration.
                for index, (ids, (_, truth)) in enumerate(zip(prompts, tests)):
                    if stop is not None and stop.is_set():
                        return cells, examples, True
                    logits = scorer.logits(ids)
                    predicted, probs = score_labels(logits, label_ids)
                    calibrated_probs = calibrate(probs, np.asarray(cell.prior))
                    calibrated = int(np.argmax(calibrated_probs))
                    vocabulary = softmax(logits)[label_ids]
                    if predictions is not None:
                        predictions.append((fmt, seed, k, index, predicted, calibrated))
                    cell.n += 1
                    cell.correct += int(predicted == truth)
                    cell.calibrated_correct += int(calibrated == truth)
                    cell.confusion[truth][predicted] += 1
                    cell.calibrated_predicted[calibrated] += 1
                    for label in (0, 1):
                        cell.label_probability_sum[label] += float(probs[label])
                        cell.calibrated_probability_sum[label] += float(calibrated_probs[label])
                        cell.word_probability_sum[label] += float(vocabulary[label])
                    done += 1
                    progress(done / total, f"{fmt}, seed {seed}, {k}-shot: {cell.n}/{len(tests)}")
    return cells, examples, False


def measure_icl(model: str | None, backend: str, settings: IclSettings, data_file: str | None = None,
                progress: Progress = no_progress, key: str = "") -> IclRun:
    """What the page's Measure button runs: evaluate_icl on the movie sentences (or an uploaded CSV), as a
    stoppable job.

    1. Read the data. 2. Load the model. 3. Evaluate as a job keyed by `key`.
    """
    import time

    # 1. The data, checked before any model loads.
    data = uploaded_data(data_file) if data_file else movie_data(settings.label_set)
    draw_tests(data.rows, settings.n, settings.base_seed)  # refuses an N the data cannot balance, now
    # 2. The model (the first ONNX Runtime run converts it, once).
    progress(0.0, "loading the model")
    chat = load_chat_model(model, backend=backend)

    # 3. Evaluate in a job: Stop sets its event, and the prompts scored so far are kept.
    def evaluate(stop: threading.Event) -> tuple[list[IclCell], dict[str, str], bool]:
        return evaluate_icl(chat, data, settings, progress, stop)

    started = time.perf_counter()
    cells, examples, stopped = jobs.run(evaluate, name=ICL_JOB, key=key)
    scored = sum(c.n + (len(CONTENT_FREE) if c.n else 0) for c in cells)
    speed = scored / max(time.perf_counter() - started, 1e-9)
    return IclRun(chat.source.label, chat.backend, settings, data.name, data.label_words, cells, examples, stopped,
                  speed)
