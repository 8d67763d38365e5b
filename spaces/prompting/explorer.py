"""The next-token explorer: the model's distribution for the token after a prompt, what each sampling filter
keeps of it, and a walk that appends one token at a time.

    logits = next_token_logits(chat, prompt.ids + walk)
    exploration = explore(chat.tokenizer, logits, temperature=0.8, top_k=50, top_p=0.95)
    walk.append(walk_step(logits, settings, prompt.ids + walk, step=len(walk)))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spaces.prompting.models import ChatModel
from spaces.prompting.sampling import STAGES, SamplingSettings, filter_distribution, sample_next

EXPLORER_TOP = 12  # tokens shown in the next-token explorer


def next_token_logits(chat: ChatModel, ids: Sequence[int]) -> np.ndarray:
    """The model's logits for the token after `ids` (float64 numpy, one per vocabulary entry)."""
    if chat.backend != "pytorch":
        logits, _ = chat.model.prefill(list(ids))
        return logits.astype(np.float64)
    import torch

    with torch.inference_mode():
        input_ids = torch.tensor([list(ids)], device=chat.model.device)
        logits = chat.model(input_ids).logits[0, -1]
    return logits.float().cpu().numpy().astype(np.float64)


def show_token(tokenizer: Any, token_id: int) -> str:
    """A token as a learner can read it: spaces as '␣', newlines as '↵'."""
    text = tokenizer.decode([int(token_id)])
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or f"<{token_id}>"


@dataclass
class Exploration:
    rows: list[list[Any]]  # per shown token: rank, token, id, then each stage's probability (0 = cut)
    tokens: list[str]  # the shown tokens, unique, most likely first
    survivors: dict[str, int]  # stage -> how many vocabulary tokens survive it
    stages: dict[str, np.ndarray] = field(repr=False)

    def long_table(self) -> list[dict[str, Any]]:
        """One row per (stage, token): what the bar charts plot."""
        return [{"stage": stage, "token": token, "probability": float(row[3 + s])}
                for s, stage in enumerate(STAGES) for token, row in zip(self.tokens, self.rows)]


def explore(tokenizer: Any, logits: np.ndarray, temperature: float, top_k: int, top_p: float,
            top: int = EXPLORER_TOP) -> Exploration:
    """The `top` most likely next tokens and their probability at each stage, and how many tokens survive."""
    stages = filter_distribution(logits, temperature, top_k, top_p)
    order = np.argsort(-stages[STAGES[0]], kind="stable")[:top]
    rows, tokens, seen = [], [], set()
    for rank, token_id in enumerate(order, start=1):
        shown = show_token(tokenizer, token_id)
        if shown in seen:  # two ids can decode alike; the chart needs distinct names
            shown = f"{shown}#{token_id}"
        seen.add(shown)
        tokens.append(shown)
        rows.append([rank, shown, int(token_id), *[round(float(stages[s][token_id]), 4) for s in STAGES]])
    survivors = {s: int(np.count_nonzero(p > 0)) for s, p in stages.items()}
    return Exploration(rows, tokens, survivors, stages)


def walk_step(logits: np.ndarray, settings: SamplingSettings, history: Sequence[int], step: int) -> int:
    """The token the explorer's Step appends: the one sampler, with a generator seeded by the seed and the
    step number, so the same settings replay the same walk whichever step the visitor starts from."""
    return sample_next(logits, settings, history, np.random.default_rng([settings.seed, step]))
