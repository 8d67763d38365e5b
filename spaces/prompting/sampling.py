"""How a next token is picked, in plain numpy: the decoding settings, the filters sampling applies
(temperature, top-k, top-p, in transformers' order), the repetition penalty, and the one sampler.

    settings = SamplingSettings("sampling", temperature=0.8, top_k=50, top_p=0.95, seed=3).checked()
    token = sample_next(logits, settings, history, np.random.default_rng(settings.seed))
    filter_distribution(logits, 0.8, 50, 0.95)   # every stage's probabilities, for the explorer

The ONNX decoding loop and the explorer's Step both draw with `sample_next`; the explorer shows
`filter_distribution`, whose last stage is exactly what `sample_next` draws from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.checks import check_range

# Overridable by an environment variable (read once, at import): the longest run the page allows.
MAX_NEW_TOKENS_LIMIT = int(os.environ.get("PLAYGROUND_PROMPTING_MAX_NEW_TOKENS", "512"))
SEED_LIMIT = 2**31 - 1
MODES = ("greedy", "sampling")
STAGES = ("model (T=1)", "temperature", "top-k", "top-p")


@dataclass(frozen=True)
class SamplingSettings:
    mode: str = "greedy"  # "greedy" takes the most likely token; "sampling" draws from the filtered distribution
    temperature: float = 1.0  # divides the logits: below 1 sharpens, above 1 flattens
    top_k: int = 0  # keep the k most likely tokens; 0 = no cut
    top_p: float = 1.0  # keep the smallest set whose probability reaches p; 1 = no cut
    max_new_tokens: int = 64
    repetition_penalty: float = 1.0  # 1 = none; above 1 lowers tokens already in the text
    seed: int = 0

    def checked(self) -> SamplingSettings:
        """These settings, or ValueError naming the first value out of range."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        check_range("temperature", self.temperature, 0.01, 5.0)
        check_range("top-k", self.top_k, 0, 1000, whole=True)
        check_range("top-p", self.top_p, 0.01, 1.0)
        check_range("max new tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS_LIMIT, whole=True)
        check_range("repetition penalty", self.repetition_penalty, 1.0, 3.0)
        check_range("seed", self.seed, 0, SEED_LIMIT, whole=True)
        return SamplingSettings(self.mode, float(self.temperature), int(self.top_k), float(self.top_p),
                                int(self.max_new_tokens), float(self.repetition_penalty), int(self.seed))

    def generate_kwargs(self) -> dict[str, Any]:
        """What `model.generate` receives for these settings."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.mode == "greedy":
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        else:
            kwargs.update(do_sample=True, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs


def softmax(logits: np.ndarray) -> np.ndarray:
    finite = np.isfinite(logits)
    shifted = np.where(finite, logits - np.max(logits[finite]), -np.inf)
    weights = np.exp(shifted)
    return weights / weights.sum()


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """True where a token survives top-k (as transformers does: ties with the k-th logit survive too)."""
    if k <= 0 or k >= logits.size:
        return np.isfinite(logits)
    kth = np.sort(logits)[-k]
    return logits >= kth


def top_p_mask(probs: np.ndarray, p: float) -> np.ndarray:
    """True where a token survives top-p: the most likely tokens whose cumulative probability first reaches p
    (transformers' rule: drop the least likely tokens whose cumulative probability stays within 1 - p)."""
    if p >= 1.0:
        return probs > 0
    order = np.argsort(probs, kind="stable")  # least likely first
    cumulative = np.cumsum(probs[order])
    drop = cumulative <= 1.0 - p
    drop[-1] = False  # the most likely token always survives
    keep = np.ones_like(probs, dtype=bool)
    keep[order[drop]] = False
    return keep & (probs > 0)


def filter_distribution(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> dict[str, np.ndarray]:
    """The next-token probabilities at each stage of sampling, in transformers' order:
    the model's own (T=1), after temperature, after top-k, after top-p. Cut tokens get probability 0 and the
    survivors are renormalised, which is what sampling draws from."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature <= 0:
        raise ValueError(f"temperature must be above 0, got {temperature}")
    stages = {STAGES[0]: softmax(logits)}
    scaled = logits / temperature
    stages[STAGES[1]] = softmax(scaled)
    scaled = np.where(top_k_mask(scaled, top_k), scaled, -np.inf)
    stages[STAGES[2]] = softmax(scaled)
    scaled = np.where(top_p_mask(stages[STAGES[2]], top_p), scaled, -np.inf)
    stages[STAGES[3]] = softmax(scaled)
    return stages


def apply_repetition_penalty(logits: np.ndarray, history: Sequence[int], penalty: float) -> np.ndarray:
    """A copy of `logits` with every token already in the text made less likely, as transformers does it:
    a positive logit is divided by the penalty, a negative one multiplied."""
    scores = np.array(logits, dtype=np.float64)  # a copy: the caller's logits stay as they were
    if penalty != 1.0 and len(history):
        seen = np.unique(np.asarray(history, dtype=np.int64))
        values = scores[seen]
        scores[seen] = np.where(values < 0, values * penalty, values / penalty)
    return scores


def sampling_candidates(logits: np.ndarray, temperature: float, top_k: int, top_p: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The tokens sampling draws from and their probabilities: the survivors of filter_distribution's last
    stage, found without sorting the whole vocabulary when top-k cuts first."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if 0 < top_k < scaled.size:
        kth = np.partition(scaled, scaled.size - top_k)[scaled.size - top_k]
        ids = np.flatnonzero(scaled >= kth)  # ties with the k-th survive, as in top_k_mask
    else:
        ids = np.flatnonzero(np.isfinite(scaled))
    keep = top_p_mask(softmax(scaled[ids]), top_p)
    ids = ids[keep]
    return ids, softmax(scaled[ids])


def sample_next(logits: np.ndarray, settings: SamplingSettings, history: Sequence[int],
                rng: np.random.Generator | None) -> int:
    """One decoding step: the repetition penalty on the tokens in `history`, then the most likely token
    (greedy; `rng` is not used) or a draw with `rng` from filter_distribution's last stage. Seed `rng`
    once per run (or per step, as the explorer does) and the same seed replays the same tokens."""
    if settings.mode != "greedy" and rng is None:
        raise ValueError("sampling draws with a random generator: pass rng=np.random.default_rng(seed)")
    scores = apply_repetition_penalty(logits, history, settings.repetition_penalty)
    if settings.mode == "greedy":
        return int(np.argmax(scores))
    ids, probs = sampling_candidates(scores, settings.temperature, settings.top_k, settings.top_p)
    index = int(np.searchsorted(np.cumsum(probs), rng.random(), side="right"))
    return int(ids[min(index, ids.size - 1)])  # min: the cumulative sum can end a rounding error below 1
