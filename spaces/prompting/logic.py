"""Logic of the prompting page (no Gradio): build prompts, generate with a real stop, explore the next token,
and measure in-context learning.

    from spaces.prompting import logic
    chat = logic.load_chat_model(None)                       # the chat-lm role's model, through the cache
    prompt = logic.build_prompt(chat.tokenizer, "Classify...", examples, shots=2, query="...",
                                context_length=chat.context_length)
    for text, stats in logic.stream_generation(chat, prompt.ids, logic.SamplingSettings("greedy")): ...

torch and transformers are imported inside the functions that need them: importing this module (and
building the page) must stay cheap. Bad input raises ValueError with a message meant for the visitor.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.cache import LoadSpec, get_cache
from shared.registry import ModelSource, resolve

# Tunables, overridable by environment variables (read once, at import).
MAX_NEW_TOKENS_LIMIT = int(os.environ.get("PLAYGROUND_PROMPTING_MAX_NEW_TOKENS", "512"))
ICL_MAX_EXAMPLES = int(os.environ.get("PLAYGROUND_PROMPTING_ICL_MAX_N", "400"))
ICL_MAX_SHOTS = 16
# Least seconds between streamed updates on the ONNX backends: slower tokens show one by one, faster ones in
# small groups. The decoder never waits for the page, but each update costs the server (and a local browser)
# CPU time; on 2 cores, 20 updates/s took SmolLM2's rate in the app from ~55 to ~42 tokens/s, 10/s kept ~53.
STREAM_INTERVAL = float(os.environ.get("PLAYGROUND_PROMPTING_STREAM_INTERVAL", "0.1"))
EXPLORER_TOP = 12  # tokens shown in the next-token explorer
SEED_LIMIT = 2**31 - 1
MODES = ("greedy", "sampling")
EXAMPLE_COLUMNS = ["input", "output"]
STAGES = ("model (T=1)", "temperature", "top-k", "top-p")
BACKENDS = {  # key -> what the page calls it
    "auto": "Auto: ONNX Runtime with int8 weights on a CPU, PyTorch on a GPU",
    "onnx-int8": "ONNX Runtime, int8 weights",
    "onnx-fp32": "ONNX Runtime, float32",
    "pytorch": "PyTorch (transformers generate)",
}

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

ICL_INSTRUCTION = "Classify the sentiment of the movie review as positive or negative. Answer with one word."
ICL_LABEL_WORDS = ("negative", "positive")  # index = the data set's label (0 negative, 1 positive)


# --------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------


@dataclass
class ChatModel:
    source: ModelSource
    tokenizer: Any
    model: Any  # a transformers model, or a shared.onnx_lm.OnnxCausalLM for the ONNX Runtime backends
    backend: str = "pytorch"  # a key of BACKENDS other than "auto"

    @property
    def has_chat_template(self) -> bool:
        return has_chat_template(self.tokenizer)

    @property
    def context_length(self) -> int:
        return context_length(self.model, self.tokenizer)


def pick_backend(backend: str, source: ModelSource) -> str:
    """The backend that runs: "auto" is ONNX Runtime with int8 weights on a CPU (where transformers' eager
    decoding is bound by per-operator overhead) when the model's architecture converts, else PyTorch."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "pytorch":
        return backend
    from shared.device import pick_device

    reason = onnx_refusal(source.location)
    if backend == "auto":
        return "onnx-int8" if reason is None and pick_device() == "cpu" else "pytorch"
    if reason:
        raise ValueError(f"{source.label}: {reason}. Choose the PyTorch backend for it.")
    return backend


@functools.lru_cache(maxsize=32)
def onnx_refusal(location: str) -> str | None:
    """Why the ONNX builder cannot convert the model at `location` (None: it can). Reads only its config."""
    from transformers import AutoConfig

    from shared.cache import short_reason
    from shared.onnx_lm import supports

    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=False)
    except Exception as error:  # not a model, no network, a gated repo: say so rather than fail later
        raise ValueError(f"Could not read the configuration of {location}: {short_reason(error)}") from error
    return supports(config)


def load_chat_model(choice: str | None, dtype: str = "auto", backend: str = "pytorch") -> ChatModel:
    """The chat-lm role's model (the default, or a hub id / local: label) on `backend`, loaded once through
    the cache. The ONNX backends convert the model on first use and keep the build (shared/onnx_lm.py)."""
    source = resolve("chat-lm", choice)
    backend = pick_backend(backend, source)
    cache = get_cache()
    tokenizer = cache.get(LoadSpec("tokenizer", source.location, label=source.label))
    if backend == "pytorch":
        model = cache.get(LoadSpec("causal-lm", source.location, dtype=dtype, label=source.label))
    else:
        weights = backend.removeprefix("onnx-")
        model = cache.get(LoadSpec("onnx-causal-lm", source.location, dtype="float32", device="cpu",
                                   options=(("weights", weights),), label=f"{source.label} (ONNX {weights})"))
    return ChatModel(source, tokenizer, model, backend)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def context_length(model: Any, tokenizer: Any = None) -> int:
    """The longest sequence the model takes: its position embeddings, else the tokenizer's limit, else 2048."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else 2048


# --------------------------------------------------------------------------------------------------------
# The prompt builder
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Sampling settings and the filters they apply
# --------------------------------------------------------------------------------------------------------


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
        rules = [
            ("temperature", self.temperature, 0.01, 5.0),
            ("top-k", self.top_k, 0, 1000),
            ("top-p", self.top_p, 0.01, 1.0),
            ("max new tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS_LIMIT),
            ("repetition penalty", self.repetition_penalty, 1.0, 3.0),
            ("seed", self.seed, 0, SEED_LIMIT),
        ]
        for name, value, low, high in rules:
            if value is None or (isinstance(value, float) and math.isnan(value)) or not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}.")
        if any(int(value) != value for value in (self.top_k, self.max_new_tokens, self.seed)):
            raise ValueError("top-k, max new tokens and seed must be whole numbers.")
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


# --------------------------------------------------------------------------------------------------------
# Generation: streamed, timed, and really stoppable
# --------------------------------------------------------------------------------------------------------


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds_to_first_token: float | None = None
    decode_tokens_per_second: float | None = None
    stopped: bool = False  # ended by the Stop button
    backend: str = ""  # a key of BACKENDS

    def describe(self) -> str:
        if self.seconds_to_first_token is None:
            return f"{self.prompt_tokens} prompt tokens; no new token yet."
        rate = (f"{self.decode_tokens_per_second:.1f} tokens/s while decoding" if self.decode_tokens_per_second
                else "one token")
        end = " Stopped by the Stop button." if self.stopped else ""
        where = f" Ran on {BACKENDS[self.backend]}." if self.backend in BACKENDS else ""
        return (f"{self.new_tokens} new tokens after a {self.prompt_tokens}-token prompt: first token after "
                f"{self.seconds_to_first_token:.2f} s, then {rate}.{end}{where}")


class _TokenClock:
    """Records when each new token came; turns that into GenerationStats."""

    def __init__(self, started: float, backend: str):
        self.started = started
        self.backend = backend
        self.token_times: list[float] = []

    def tick(self) -> None:
        self.token_times.append(time.perf_counter())

    def stats(self, prompt_tokens: int, stopped: bool) -> GenerationStats:
        times = self.token_times
        stats = GenerationStats(prompt_tokens, len(times), stopped=stopped, backend=self.backend)
        if times:
            stats.seconds_to_first_token = times[0] - self.started
        if len(times) > 1 and times[-1] > times[0]:
            stats.decode_tokens_per_second = (len(times) - 1) / (times[-1] - times[0])
        return stats


class _StopAndTime(_TokenClock):
    """A transformers StoppingCriteria: ends `generate` once `stop` is set, and records when each token came."""

    def __init__(self, stop: threading.Event, started: float):
        super().__init__(started, "pytorch")
        self.stop = stop

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.tick()
        return torch.full((input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool, device=input_ids.device)


_active_lock = threading.Lock()
_active_generations = 0
_stop_events: dict[str, threading.Event] = {}


def active_generations() -> int:
    """How many `generate` worker threads are running now (tests check that Stop really ends them)."""
    with _active_lock:
        return _active_generations


def _count_generation(delta: int) -> None:
    global _active_generations
    with _active_lock:
        _active_generations += delta


def stop_signal(key: str) -> threading.Event:
    """A fresh stop event for one visitor's run (key: their session), replacing the last one."""
    event = threading.Event()
    with _active_lock:
        _stop_events[key] = event
    return event


def release_stop(key: str, event: threading.Event) -> None:
    """Forget `key`'s stop event once its run is over (unless a newer run replaced it)."""
    with _active_lock:
        if _stop_events.get(key) is event:
            del _stop_events[key]


def request_stop(key: str) -> bool:
    """Set the stop event of `key`'s current run; False when it has none."""
    with _active_lock:
        event = _stop_events.get(key)
    if event is None:
        return False
    event.set()
    return True


@contextlib.contextmanager
def _decoding_in(work: Callable[[], None], stop: threading.Event, name: str) -> Iterator[threading.Thread]:
    """Run `work` (a decoder) in its own thread, counted by active_generations, while the block streams what
    it makes. Leaving the block early (Stop, or the page closing the stream) sets `stop` so the decoder ends
    at its next token; the thread is always joined, and its error is re-raised here when the block ends."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # re-raised in the caller's thread below
            failure.append(error)
        finally:
            _count_generation(-1)

    _count_generation(+1)
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield thread
    except BaseException:
        stop.set()
        raise
    finally:
        thread.join()
    if failure:
        raise failure[0]


def stream_generation(chat: ChatModel, prompt_ids: Sequence[int], settings: SamplingSettings,
                      stop: threading.Event | None = None) -> Iterator[tuple[str, GenerationStats]]:
    """Yield (text so far, stats) as `generate` streams. Setting `stop`, or closing this generator, ends
    `generate` itself at the next token; the worker thread is always joined and its error re-raised.

    1. Seed. 2. Start `generate` in a thread, streaming into a TextIteratorStreamer.
    3. Yield the growing text. 4. Join the thread; re-raise its error.
    """
    settings = settings.checked()
    stop = stop or threading.Event()
    if chat.backend != "pytorch":
        yield from _stream_onnx(chat, prompt_ids, settings, stop)
        return
    import torch
    from transformers import StoppingCriteriaList, TextIteratorStreamer, set_seed

    # 1. Seed: the same seed and settings give the same text.
    set_seed(settings.seed)
    input_ids = torch.tensor([list(prompt_ids)], device=chat.model.device)
    streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=0.2)
    watch = _StopAndTime(stop, time.perf_counter())
    pad_id = chat.model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = chat.model.generation_config.eos_token_id
        pad_id = pad_id[0] if isinstance(pad_id, list) else pad_id

    def work() -> None:
        try:
            with torch.inference_mode():
                chat.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                                    stopping_criteria=StoppingCriteriaList([watch]), pad_token_id=pad_id,
                                    **settings.generate_kwargs())
        except BaseException:
            streamer.end()  # wake the loop below; the error reaches the caller through _decoding_in
            raise

    # 2. Start generate in its own thread; 4. (on leaving the block) join it and re-raise its error.
    text = ""
    with _decoding_in(work, stop, "prompting-generate") as thread:
        # 3. Stream the text as it comes.
        while True:
            try:
                chunk = next(streamer)
            except StopIteration:
                break
            except queue.Empty:  # nothing new within the timeout
                if not thread.is_alive() and streamer.text_queue.empty():
                    break
                continue
            text += chunk
            yield text, watch.stats(len(input_ids[0]), stop.is_set())
    yield text, watch.stats(len(input_ids[0]), stop.is_set())


def _stream_onnx(chat: ChatModel, prompt_ids: Sequence[int], settings: SamplingSettings,
                 stop: threading.Event) -> Iterator[tuple[str, GenerationStats]]:
    """stream_generation on ONNX Runtime. A worker thread is the decoder (one token per step, so Stop ends it
    before the next step); this generator yields the text as tokens arrive, several at once when the page is
    slower than the model. Closing it stops and joins the worker; the worker's error is re-raised here.

    1. Start the worker: prefill, then pick a token (greedy or a seeded draw) and step, until the end.
    2. Yield the growing text. 3. Join the worker; re-raise its error.
    """
    lm = chat.model
    eos = lm.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    rng = np.random.default_rng(settings.seed)
    clock = _TokenClock(time.perf_counter(), chat.backend)
    arrived: queue.SimpleQueue[int | None] = queue.SimpleQueue()  # new token ids; None = the run is over

    def work() -> None:
        try:
            history = list(prompt_ids)
            logits, state = lm.prefill(history)  # the prompt's KV cache and the first token's logits
            for made in range(1, settings.max_new_tokens + 1):
                if stop.is_set():
                    break
                token = pick_token(logits, settings, history, rng)
                clock.tick()
                if token in eos:  # end-of-text ends the run and is not shown, as with the streamer
                    break
                arrived.put(token)
                history.append(token)
                if made < settings.max_new_tokens:
                    logits = lm.step(state, token)  # only the new token goes in; the cache holds the rest
        finally:
            arrived.put(None)

    # 1. Start the decoder in its own thread; 3. (on leaving the block) join it and re-raise its error.
    new_ids: list[int] = []
    over, shown = False, 0.0
    with _decoding_in(work, stop, "prompting-onnx-decode"):
        # 2. Yield the text as tokens arrive.
        while not over:
            batch = [arrived.get()]
            time.sleep(max(0.0, shown + STREAM_INTERVAL - time.perf_counter()))  # let a few tokens gather
            while not arrived.empty():
                batch.append(arrived.get())
            if None in batch:
                over, batch = True, batch[:batch.index(None)]
            if batch:
                new_ids += batch
                text = chat.tokenizer.decode(new_ids, skip_special_tokens=True)
                if not text.endswith("\ufffd"):  # hold back half a multi-byte character
                    shown = time.perf_counter()
                    yield text, clock.stats(len(prompt_ids), stop.is_set())
    yield chat.tokenizer.decode(new_ids, skip_special_tokens=True), clock.stats(len(prompt_ids), stop.is_set())


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


def pick_token(logits: np.ndarray, settings: SamplingSettings, history: Sequence[int],
               rng: np.random.Generator) -> int:
    """One decoding step on the ONNX backends: repetition penalty, then the argmax (greedy) or a draw from
    the filtered distribution with `rng` (seeded once per run, so a seed replays the run)."""
    scores = apply_repetition_penalty(logits, history, settings.repetition_penalty)
    if settings.mode == "greedy":
        return int(np.argmax(scores))
    ids, probs = sampling_candidates(scores, settings.temperature, settings.top_k, settings.top_p)
    index = int(np.searchsorted(np.cumsum(probs), rng.random(), side="right"))
    return int(ids[min(index, ids.size - 1)])


# --------------------------------------------------------------------------------------------------------
# Next-token explorer
# --------------------------------------------------------------------------------------------------------


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


def choose_next_token(logits: np.ndarray, settings: SamplingSettings, step: int) -> int:
    """One step of decoding: the most likely token (greedy), or a draw from the filtered distribution,
    seeded by the seed and the step number so a walk can be replayed."""
    if settings.mode == "greedy":
        return int(np.argmax(logits))
    probs = filter_distribution(logits, settings.temperature, settings.top_k, settings.top_p)[STAGES[-1]]
    rng = np.random.default_rng([settings.seed, step])
    return int(rng.choice(probs.size, p=probs))


# --------------------------------------------------------------------------------------------------------
# In-context learning, measured
# --------------------------------------------------------------------------------------------------------


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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion (95% with z=1.96): sound even at 0 or n successes."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denominator = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return (max(0.0, center - half), min(1.0, center + half))


def balanced_split(rows: Sequence[dict], n: int, demos_per_example: int, seed: int
                   ) -> list[tuple[dict, list[dict]]]:
    """`n` test rows, half of each label (shuffled with `seed`), each with its own `demos_per_example`
    demonstrations drawn from the other rows, balanced between labels and in a seeded random order."""
    if n < 2 or n % 2:
        raise ValueError(f"N must be an even number of at least 2 (half positive, half negative), got {n}.")
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


def parse_shot_list(text: str) -> list[int]:
    """'0, 1, 4' -> [0, 1, 4]: distinct shot counts in 0..ICL_MAX_SHOTS, ascending."""
    try:
        values = sorted({int(part) for part in str(text).replace(";", ",").split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"Shot counts are whole numbers separated by commas, like '0, 1, 4'; got {text!r}.") from None
    if not values:
        raise ValueError("Give at least one shot count, like '0, 1, 4'.")
    if values[0] < 0 or values[-1] > ICL_MAX_SHOTS:
        raise ValueError(f"Shot counts must be between 0 and {ICL_MAX_SHOTS}, got {values}.")
    return values


def evaluate_icl(chat: ChatModel, rows: Sequence[dict], n: int, shot_counts: Sequence[int], seed: int,
                 progress: Callable[[float, str], None] | None = None,
                 stop: threading.Event | None = None) -> tuple[list[IclResult], bool]:
    """Accuracy of the model on `n` balanced movie sentences with k demonstrations, for each k.

    Returns (results, stopped). Each example's k-shot prompt uses the first k of its own demonstrations,
    so the runs differ only in how many examples the prompt shows.
    """
    # 1. Check inputs and draw the examples.
    if not 2 <= n <= ICL_MAX_EXAMPLES:
        raise ValueError(f"N must be between 2 and {ICL_MAX_EXAMPLES}, got {n}.")
    shot_counts = sorted(set(int(k) for k in shot_counts))
    if not shot_counts or shot_counts[0] < 0 or shot_counts[-1] > ICL_MAX_SHOTS:
        raise ValueError(f"Shot counts must be between 0 and {ICL_MAX_SHOTS}, got {list(shot_counts)}.")
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
            if progress is not None:
                progress(done / total, f"{k}-shot: {result.n}/{len(plan)}")
    return results, False


# --------------------------------------------------------------------------------------------------------
# Recipes: code that reproduces a run
# --------------------------------------------------------------------------------------------------------

HUB_ID_OF_ASSET = {"local:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def python_recipe(model_label: str, prompt: BuiltPrompt, settings: SamplingSettings, backend: str = "pytorch") -> str:
    """A transformers snippet that reproduces a generation: the same prompt text, settings and seed."""
    model_id = HUB_ID_OF_ASSET.get(model_label, model_label)
    kwargs = settings.generate_kwargs()
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    note = f"  # the page ran {model_label}, built from this model" if model_id != model_label else ""
    header = ""
    if backend != "pytorch":
        header = (f"# The page ran this on {BACKENDS[backend]} (shared/onnx_lm.py in Transformer Playground), with "
                  "its own seeded sampler.\n# transformers below runs the same prompt and settings in PyTorch: "
                  "the text can differ after a few tokens.\n")
    return header + f'''import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

model_id = {model_id!r}{note}
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32).eval()

# The exact prompt the page sent ({"chat template applied" if prompt.chat else "plain text"}).
prompt = {prompt.text!r}
inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens={not prompt.chat})
set_seed({settings.seed})
output = model.generate(**inputs, {args})
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
'''


def client_recipe(url: str, model_label: str, backend: str, instruction: str, examples: Sequence[tuple[str, str]],
                  shots: int, query: str, settings: SamplingSettings) -> str:
    """A gradio_client call of this page's generate endpoint with the same inputs."""
    table = {"headers": EXAMPLE_COLUMNS, "data": [list(e) for e in examples]}
    return f'''from gradio_client import Client

client = Client({url!r})
prompt, prompt_info, text, stats, seed, python_recipe, client_recipe = client.predict(
    {model_label!r},  # model
    {backend!r},  # runs on: {", ".join(BACKENDS)}
    {instruction!r},  # instruction
    {table!r},  # labeled examples
    {shots},  # shots
    {query!r},  # query
    {settings.mode!r}, {settings.temperature}, {settings.top_k}, {settings.top_p},  # mode, temperature, top-k, top-p
    {settings.max_new_tokens}, {settings.repetition_penalty}, {settings.seed},  # max new tokens, rep. penalty, seed
    api_name="/prompting_generate",
)
print(text)
'''


def icl_client_recipe(url: str, model_label: str, backend: str, n: int, shot_counts: Sequence[int], seed: int) -> str:
    """A gradio_client call of this page's in-context learning endpoint with the same settings."""
    shots = ", ".join(str(k) for k in shot_counts)
    return f'''from gradio_client import Client

client = Client({url!r})
plot, accuracy, confusion, status, recipe = client.predict(
    {model_label!r}, {backend!r}, {n}, {shots!r}, {seed},  # model, runs on, N, shot counts, seed
    api_name="/prompting_icl",
)
print(status)
'''
