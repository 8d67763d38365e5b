"""The prompt builder: an instruction, labeled examples (shots) and a query, rendered with the model's chat
template (or as plain text for a base model) and fitted into its context.

    prompt = build_prompt(chat.tokenizer, "Classify...", examples, shots=2, query="...",
                          context_length=chat.context_length, max_new_tokens=64)
    prompt.text, prompt.ids, prompt.summary

Bad input raises ValueError with a message meant for the visitor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spaces.prompting.models import has_chat_template

EXAMPLE_COLUMNS = ["input", "output"]

PRESETS: dict[str, dict[str, Any]] = {
    "sentiment": {
        "instruction": "Classify the sentiment of the movie review as positive or negative. Answer with one word.",
        "examples": [
            ["A gorgeous, witty and moving film.", "positive"],
            ["Two hours of my life I will never get back.", "negative"],
            ["The cast is superb and the script sparkles.", "positive"],
            ["Dull, predictable and far too long.", "negative"],
            ["A small miracle of a movie.", "positive"],
            ["The jokes fall flat and the plot makes no sense.", "negative"],
        ],
        "query": "An uneven but often delightful comedy.",
    },
    "topic": {
        "instruction": "Give the topic of the headline: sports, business, science or politics. Answer with one word.",
        "examples": [
            ["Striker scores twice as United win the derby", "sports"],
            ["Shares fall after the bank reports a quarterly loss", "business"],
            ["Telescope spots water vapour on a distant planet", "science"],
            ["Parliament passes the new budget after a long debate", "politics"],
            ["Champion retires after twenty years on the tour", "sports"],
            ["Researchers map the genome of the honey bee", "science"],
        ],
        "query": "Carmaker to cut 2,000 jobs as sales slow",
    },
    "rewriting": {
        "instruction": "Rewrite the sentence in a polite, formal style.",
        "examples": [
            ["Give me the report now.", "Could you please send me the report at your earliest convenience?"],
            ["Your code is broken.", "I believe there may be an issue in the code that we should look at."],
            ["I can't come tomorrow.", "Unfortunately, I will not be able to attend tomorrow."],
            ["Stop calling me.", "I would appreciate it if we could communicate by email instead."],
        ],
        "query": "Fix this bug today.",
    },
    "question answering": {
        "instruction": "Answer the question with a short phrase.",
        "examples": [
            ["What is the capital of France?", "Paris"],
            ["How many legs does a spider have?", "Eight"],
            ["Who wrote Romeo and Juliet?", "William Shakespeare"],
            ["What gas do plants take in?", "Carbon dioxide"],
            ["What is the largest ocean?", "The Pacific Ocean"],
        ],
        "query": "What is the boiling point of water at sea level in Celsius?",
    },
}


@dataclass
class BuiltPrompt:
    text: str  # exactly what the tokenizer receives
    ids: list[int]  # exactly what the model receives
    shots: int  # examples actually included (after truncation)
    dropped: int  # oldest examples dropped to fit the context
    chat: bool  # True: the model's chat template was applied
    context_length: int
    budget: int  # tokens the prompt may use: the context length less the new tokens

    @property
    def summary(self) -> str:
        style = "chat template applied" if self.chat else "plain text (this model has no chat template)"
        return (f"{len(self.ids)} prompt tokens of a {self.context_length}-token context "
                f"({self.budget} left for the prompt after the new tokens); {self.shots} example(s); {style}.")


def clean_examples(examples: Sequence[Sequence[Any]] | None) -> list[tuple[str, str]]:
    """The labeled examples as (input, output) pairs: blank rows are skipped, half-filled rows are refused."""
    pairs = []
    for number, row in enumerate(examples or [], start=1):
        cells = ["" if c is None or (isinstance(c, float) and math.isnan(c)) else str(c).strip() for c in list(row)[:2]]
        cells += [""] * (2 - len(cells))
        if not any(cells):
            continue
        if not all(cells):
            raise ValueError(f"Example row {number} needs both an input and an output, got {cells}.")
        pairs.append((cells[0], cells[1]))
    return pairs


def prompt_messages(instruction: str, examples: Sequence[tuple[str, str]], query: str) -> list[dict[str, str]]:
    """The chat form: the instruction as the system turn, each example as a user/assistant pair, then the query."""
    messages = [{"role": "system", "content": instruction}] if instruction else []
    for given, answer in examples:
        messages += [{"role": "user", "content": given}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": query}]


def plain_prompt(instruction: str, examples: Sequence[tuple[str, str]], query: str) -> str:
    """The plain-text form for base models: 'Input: ... / Output: ...' blocks, ending where the answer starts."""
    blocks = [instruction] if instruction else []
    blocks += [f"Input: {given}\nOutput: {answer}" for given, answer in examples]
    blocks.append(f"Input: {query}\nOutput:")
    return "\n\n".join(blocks)


def render_prompt(tokenizer: Any, instruction: str, examples: Sequence[tuple[str, str]], query: str,
                  use_chat: bool) -> tuple[str, list[int]]:
    if use_chat:
        text = tokenizer.apply_chat_template(prompt_messages(instruction, examples, query), tokenize=False,
                                             add_generation_prompt=True)
        # The template writes its own special tokens; letting the tokenizer add a BOS too would double it.
        return text, tokenizer(text, add_special_tokens=False)["input_ids"]
    text = plain_prompt(instruction, examples, query)
    return text, tokenizer(text)["input_ids"]


def build_prompt(tokenizer: Any, instruction: str, examples: Sequence[Sequence[Any]] | None, shots: int, query: str,
                 context_length: int, max_new_tokens: int = 0, use_chat: bool | None = None) -> BuiltPrompt:
    """The exact prompt for `query` with the first `shots` examples, fitted into the context.

    1. Check the inputs. 2. Render with the chat template (or as plain text for a base model).
    3. While the prompt and `max_new_tokens` pass the context length, drop the oldest example.
    """
    # 1. Check inputs.
    instruction = (instruction or "").strip()
    query = (query or "").strip()
    if not query:
        raise ValueError("The query is empty: type the input you want the model to answer.")
    pool = clean_examples(examples)
    shots = int(shots)
    if not 0 <= shots <= len(pool):
        raise ValueError(f"The shot count must be between 0 and the {len(pool)} complete example(s), got {shots}.")
    if max_new_tokens < 0 or max_new_tokens >= context_length:
        raise ValueError(f"max new tokens must be between 0 and {context_length - 1} (the context length less one), "
                         f"got {max_new_tokens}.")
    use_chat = has_chat_template(tokenizer) if use_chat is None else use_chat
    if use_chat and not has_chat_template(tokenizer):
        raise ValueError("This model has no chat template; build a plain-text prompt instead.")
    budget = context_length - max_new_tokens
    # 2-3. Render, dropping the oldest examples until it fits.
    chosen = list(pool[:shots])
    dropped = 0
    while True:
        text, ids = render_prompt(tokenizer, instruction, chosen, query, use_chat)
        if len(ids) <= budget:
            return BuiltPrompt(text, list(ids), len(chosen), dropped, use_chat, context_length, budget)
        if not chosen:
            raise ValueError(f"The instruction and query alone take {len(ids)} tokens, more than the {budget} the "
                             f"{context_length}-token context leaves after {max_new_tokens} new tokens: shorten them.")
        chosen.pop(0)
        dropped += 1


def preset(name: str) -> dict[str, Any]:
    """A preset task (instruction, examples, query) by name, or ValueError naming the choices."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {name!r}.")
    return PRESETS[name]
