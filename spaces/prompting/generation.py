"""Generation on the prompting page: streamed, timed, and really stoppable, on PyTorch or ONNX Runtime.

    for text, stats in stream_generation(chat, prompt.ids, SamplingSettings("greedy"), key=session):
        print(text, stats.describe())

The decoder runs as a job of shared/jobs.py named GENERATE_JOB, keyed by the visitor's session, so the page's
Stop button (`jobs.stop(session, GENERATE_JOB)`) ends it at its next token. PyTorch decodes with
transformers' `generate` (a TextIteratorStreamer, and a StoppingCriteria that reads the stop event); ONNX
Runtime with the page's own loop, one token per step, drawn by `sampling.sample_next`.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from shared import jobs
from spaces.prompting.models import BACKENDS, ChatModel
from spaces.prompting.sampling import SamplingSettings, sample_next

GENERATE_JOB = "prompting-generate"
# Least seconds between streamed updates on the ONNX backends: slower tokens show one by one, faster ones in
# small groups. The decoder never waits for the page, but each update costs the server (and a local browser)
# CPU time; on 2 cores, 20 updates/s took SmolLM2's rate in the app from ~55 to ~42 tokens/s, 10/s kept ~53.
STREAM_INTERVAL = float(os.environ.get("PLAYGROUND_PROMPTING_STREAM_INTERVAL", "0.1"))
STOPPED_NOTE = "Stopped by the Stop button."


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
        end = f" {STOPPED_NOTE}" if self.stopped else ""
        where = f" Ran on {BACKENDS[self.backend]}." if self.backend in BACKENDS else ""
        return (f"{self.new_tokens} new tokens after a {self.prompt_tokens}-token prompt: first token after "
                f"{self.seconds_to_first_token:.2f} s, then {rate}.{end}{where}")


class TokenClock:
    """Records when each new token of a run came; turns that, and whether the run's `stop` is set, into
    GenerationStats."""

    def __init__(self, stop: threading.Event, backend: str):
        self.stop = stop
        self.backend = backend
        self.started = time.perf_counter()
        self.token_times: list[float] = []

    def tick(self) -> None:
        self.token_times.append(time.perf_counter())

    def stats(self, prompt_tokens: int) -> GenerationStats:
        times = self.token_times
        stats = GenerationStats(prompt_tokens, len(times), stopped=self.stop.is_set(), backend=self.backend)
        if times:
            stats.seconds_to_first_token = times[0] - self.started
        if len(times) > 1 and times[-1] > times[0]:
            stats.decode_tokens_per_second = (len(times) - 1) / (times[-1] - times[0])
        return stats


class StopAndTime(TokenClock):
    """A transformers StoppingCriteria: ends `generate` once `stop` is set, and records when each token came."""

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.tick()
        return torch.full((input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_generation(chat: ChatModel, prompt_ids: Sequence[int], settings: SamplingSettings,
                      stop: threading.Event | None = None, key: str = "") -> Iterator[tuple[str, GenerationStats]]:
    """Yield (text so far, stats) as the model decodes. Setting `stop` (or `jobs.stop(key, GENERATE_JOB)`), or
    closing this generator, ends the decoder itself at its next token; its thread is always joined and its
    error re-raised here.

    1. Check the settings. 2. Start the decoder as a job. 3. Yield the growing text. 4. Join it (jobs.running).
    """
    # 1. Check inputs. One stop event serves the caller, the job (`jobs.stop`) and the decoder with its clock.
    settings = settings.checked()
    stop = stop if stop is not None else threading.Event()
    if chat.backend != "pytorch":
        yield from _stream_onnx(chat, prompt_ids, settings, stop, key)
        return
    import torch
    from transformers import StoppingCriteriaList, TextIteratorStreamer, set_seed

    set_seed(settings.seed)  # the same seed and settings give the same text
    input_ids = torch.tensor([list(prompt_ids)], device=chat.model.device)
    streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=0.2)
    watch = StopAndTime(stop, "pytorch")
    pad_id = chat.model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = chat.model.generation_config.eos_token_id
        pad_id = pad_id[0] if isinstance(pad_id, list) else pad_id

    def decode(stop: threading.Event) -> int:  # `watch` reads the same event
        """Run generate; returns the number of new tokens (the job's result)."""
        try:
            with torch.inference_mode():
                chat.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                                    stopping_criteria=StoppingCriteriaList([watch]), pad_token_id=pad_id,
                                    **settings.generate_kwargs())
        except BaseException:
            streamer.end()  # wake the loop below; the error reaches the caller through jobs.running
            raise
        return len(watch.token_times)

    # 2. Start generate as a job; 4. (on leaving the block) join it and re-raise its error.
    text = ""
    with jobs.running(decode, name=GENERATE_JOB, key=key, stop=stop) as job:
        # 3. Stream the text as it comes.
        while True:
            try:
                chunk = next(streamer)
            except StopIteration:
                break
            except queue.Empty:  # nothing new within the timeout
                if job.finished and streamer.text_queue.empty():
                    break
                continue
            text += chunk
            yield text, watch.stats(len(input_ids[0]))
    yield text, watch.stats(len(input_ids[0]))


def _stream_onnx(chat: ChatModel, prompt_ids: Sequence[int], settings: SamplingSettings, stop: threading.Event,
                 key: str) -> Iterator[tuple[str, GenerationStats]]:
    """stream_generation on ONNX Runtime. The job is the decoder (one token per step, so Stop ends it before
    the next step); this generator yields the text as tokens arrive, several at once when the page is
    slower than the model.

    1. Start the decoder: prefill, then pick a token (sampling.sample_next, one generator seeded per run)
       and step, until end-of-text, max new tokens or Stop.
    2. Yield the growing text. 3. Join the decoder (jobs.running); its error is re-raised here.
    """
    lm = chat.model
    eos = lm.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    rng = np.random.default_rng(settings.seed)
    clock = TokenClock(stop, chat.backend)
    arrived: queue.SimpleQueue[int | None] = queue.SimpleQueue()  # new token ids; None = the run is over

    def decode(stop: threading.Event) -> int:
        """Prefill, then one token per step; returns the number of new tokens (the job's result)."""
        try:
            history = list(prompt_ids)
            logits, state = lm.prefill(history)  # the prompt's KV cache and the first token's logits
            for made in range(1, settings.max_new_tokens + 1):
                if stop.is_set():
                    break
                token = sample_next(logits, settings, history, rng)
                clock.tick()
                if token in eos:  # end-of-text ends the run and is not shown, as with the streamer
                    break
                arrived.put(token)
                history.append(token)
                if made < settings.max_new_tokens:
                    logits = lm.step(state, token)  # only the new token goes in; the cache holds the rest
        finally:
            arrived.put(None)
        return len(clock.token_times)

    # 1. Start the decoder as a job; 3. (on leaving the block) join it and re-raise its error.
    new_ids: list[int] = []
    over, shown = False, 0.0
    with jobs.running(decode, name=GENERATE_JOB, key=key, stop=stop):
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
                    yield text, clock.stats(len(prompt_ids))
    yield chat.tokenizer.decode(new_ids, skip_special_tokens=True), clock.stats(len(prompt_ids))
