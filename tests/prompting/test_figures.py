"""The prompting page's measured figures show planted effects (issue 22): a decoder made slower by a known delay
per token, or before its first token, shows it in tokens/s and time to first token on both backends; a model
with a planted label bias shows it in the in-context-learning lab's label bias, and contextual calibration
removes it; a scorer slowed by a known delay per prompt shows it in prompts/s.

No assertion reads the clock except against a planted delay: a sleep of d seconds takes at least d, so "at
least d" and "at most 1/d tokens/s" hold on any machine; "the fast run is faster" is asked with a margin of
3x or more where the planted ratio is 10x.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

from spaces.prompting import generation, icl, models, sampling


class Words:
    """A stand-in tokenizer: token i decodes to 'w ' (the streamer prints up to the last space)."""

    def decode(self, ids, **kwargs) -> str:
        return "w " * len(list(ids))


class SlowDecoder:
    """The ONNX backend's interface (prefill, step) with planted delays and no end-of-text."""

    def __init__(self, before_first: float, per_token: float, vocab: int = 8):
        self.before_first, self.per_token, self.vocab = before_first, per_token, vocab
        self.generation_config = SimpleNamespace(eos_token_id=None)

    def _logits(self, n: int) -> np.ndarray:
        logits = np.zeros(self.vocab, dtype=np.float32)
        logits[n % self.vocab] = 5.0
        return logits

    def prefill(self, ids):
        time.sleep(self.before_first)
        return self._logits(len(ids)), {"n": len(ids)}

    def step(self, state, token):
        time.sleep(self.per_token)
        state["n"] += 1
        return self._logits(state["n"])


def onnx_stats(before_first: float, per_token: float, tokens: int = 6) -> generation.GenerationStats:
    chat = models.ChatModel(None, Words(), SlowDecoder(before_first, per_token), "onnx-int8")
    settings = sampling.SamplingSettings("greedy", max_new_tokens=tokens)
    *_, (_, stats) = generation.stream_generation(chat, [1, 2, 3], settings, key="figures-onnx")
    return stats


def test_onnx_tokens_per_second_and_time_to_first_token_show_planted_delays():
    """Seen to fail: with the rate taken over the whole run ((n - 1) / (last token - start), the prefill counted
    as decoding) the slow-prefill run reads 11 tokens/s against the fast run's 97 and the "prefill does not move
    the rate" check fails; with the clock started after the prefill, that run's first token reads 0.0001 s."""
    fast = onnx_stats(before_first=0.0, per_token=0.01)
    slow_steps = onnx_stats(before_first=0.0, per_token=0.1)
    slow_prefill = onnx_stats(before_first=0.4, per_token=0.01)
    for stats in (fast, slow_steps, slow_prefill):
        assert stats.new_tokens == 6 and stats.prompt_tokens == 3 and not stats.stopped
    # 0.1 s per token: at most 10 tokens/s; the fast run (0.01 s) at least 3x faster (10x planted).
    assert slow_steps.decode_tokens_per_second <= 10.0
    assert fast.decode_tokens_per_second > 3 * slow_steps.decode_tokens_per_second
    # 0.4 s before the first token: the first token comes after 0.4 s, and decoding speed is not moved by it.
    assert slow_prefill.seconds_to_first_token >= 0.4
    assert slow_prefill.seconds_to_first_token - fast.seconds_to_first_token >= 0.3
    assert slow_prefill.decode_tokens_per_second > fast.decode_tokens_per_second / 3
    assert "6 new tokens after a 3-token prompt" in slow_prefill.describe()


@pytest.fixture(scope="module")
def tiny_gpt2():
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.generation_config.eos_token_id = None  # no end-of-text: every run makes max_new_tokens
    model.generation_config.pad_token_id = 0
    return model


def torch_stats(model, delay: float, tokens: int = 6) -> generation.GenerationStats:
    """PyTorch's generate on a tiny GPT-2 whose every forward pass (the prompt's and each token's) sleeps
    `delay` first."""
    handle = model.register_forward_pre_hook(lambda module, args: time.sleep(delay))
    try:
        chat = models.ChatModel(None, Words(), model, "pytorch")
        settings = sampling.SamplingSettings("greedy", max_new_tokens=tokens)
        *_, (_, stats) = generation.stream_generation(chat, [1, 2, 3, 4], settings, key="figures-torch")
    finally:
        handle.remove()
    return stats


def test_pytorch_tokens_per_second_and_time_to_first_token_show_a_planted_delay(tiny_gpt2):
    """Seen to fail: with the rate counting n tokens over the n - 1 gaps between them (n / (last - first)), the
    slow run reads 11.7 tokens/s, above the 1/0.1 = 10 a 0.1 s delay per token allows."""
    fast = torch_stats(tiny_gpt2, 0.0)
    slow = torch_stats(tiny_gpt2, 0.1)
    assert fast.new_tokens == slow.new_tokens == 6 and slow.prompt_tokens == 4 and slow.backend == "pytorch"
    assert slow.seconds_to_first_token >= 0.1  # the prompt's forward pass sleeps before the first token
    assert slow.decode_tokens_per_second <= 10.0
    assert fast.decode_tokens_per_second > 3 * slow.decode_tokens_per_second


# ---- the in-context-learning lab: a planted label bias ------------------------------------------------------

BIAS = 3.0  # the planted preference for the positive word, in logits


class BiasedScorer:
    """The ONNX backend's interface for the lab's PrefixScorer (prefill, extend), on a planted model: it reads
    the last user turn; 'good' there adds 1 to the positive word's logit, 'bad' takes 1 away, and the positive
    word gets BIAS more whatever the text. Every other token gets -30, so the two label words hold ~all the
    probability. The content-free inputs carry no word: they show the bias alone."""

    def __init__(self, tokenizer, delay: float = 0.0):
        self.tokenizer, self.delay = tokenizer, delay
        self.negative, self.positive = icl.label_token_ids(tokenizer, icl.ICL_LABEL_WORDS, chat=True)

    def _logits(self, ids) -> np.ndarray:
        time.sleep(self.delay)
        last = self.tokenizer.decode(ids).rsplit("<|im_start|>user", 1)[-1]
        signal = 1.0 if " good" in last else -1.0 if " bad" in last else 0.0
        logits = np.full(len(self.tokenizer), -30.0, dtype=np.float32)
        logits[self.negative] = 0.0
        logits[self.positive] = BIAS + signal
        return logits

    def prefill(self, ids):
        return self._logits(ids), list(ids)

    def extend(self, state, ids):
        return self._logits([*state, *ids]), [*state, *ids]


@pytest.fixture(scope="module")
def tokenizer():
    from shared.cache import LoadSpec, get_cache
    from shared.registry import resolve

    source = resolve("chat-lm")
    return get_cache().get(LoadSpec("tokenizer", source.location, label=source.label))


def toy_data(n: int = 40) -> icl.IclData:
    rows = [(f"film number {i} was {'good' if i % 2 else 'bad'}", i % 2) for i in range(n)]
    return icl.IclData("toy", rows, icl.ICL_LABEL_WORDS, icl.ICL_INSTRUCTION)


def biased_run(tokenizer, delay: float = 0.0) -> icl.IclRun:
    chat = models.ChatModel(None, tokenizer, BiasedScorer(tokenizer, delay), "onnx-int8")
    settings = icl.check_settings(10, "0, 2", 0, 2, ["chat turns"])
    cells, examples, stopped = icl.evaluate_icl(chat, toy_data(), settings)
    assert not stopped
    return icl.IclRun("planted", "onnx-int8", settings, "toy", icl.ICL_LABEL_WORDS, cells, examples, stopped)


def sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def test_a_planted_label_bias_shows_and_calibration_removes_it(tokenizer):
    """The model always answers 'positive' (BIAS beats the ±1 signal): 100% predicted positive, 50% accuracy,
    the content-free prior P(positive) = sigmoid(BIAS); calibrated, every sentence is right and half are
    predicted positive. Seen to fail: before issue 22 the calibrated row showed the uncalibrated mean
    P(positive word) (sigmoid(4) and sigmoid(2) averaged, 0.94) instead of the calibrated 0.5."""
    from spaces.prompting import ui

    run = biased_run(tokenizer)
    rows = {(row["shots"], row["calibrated"]): row for row in run.summary_rows()}
    for shots in (0, 2):
        raw, calibrated = rows[(shots, False)], rows[(shots, True)]
        assert raw["predicted positive"] == 1.0 and raw["accuracy"] == 0.5 and raw["N"] == 20
        assert raw["P(positive)"] == pytest.approx((sigmoid(BIAS + 1) + sigmoid(BIAS - 1)) / 2, abs=1e-6)
        assert raw["label words' share of the vocabulary"] == pytest.approx(1.0, abs=1e-6)
        assert calibrated["accuracy"] == 1.0 and calibrated["predicted positive"] == 0.5
        assert calibrated["P(positive)"] == pytest.approx((sigmoid(1) + sigmoid(-1)) / 2, abs=1e-6)
    for cell in run.cells:
        assert cell.prior[1] == pytest.approx(sigmoid(BIAS), abs=1e-6)
    bias = {(row[1], row[0].endswith("calibrated")): row for row in ui.bias_rows(run, run.summary_rows())}
    assert bias[(0, False)][2:] == [1.0, round((sigmoid(4) + sigmoid(2)) / 2, 3), 1.0, round(sigmoid(BIAS), 3)]
    assert bias[(0, True)][2:] == [0.5, 0.5, "", ""]


def icl_speed(chat, monkeypatch) -> icl.IclRun:
    monkeypatch.setattr(icl, "load_chat_model", lambda *args, **kwargs: chat)
    monkeypatch.setattr(icl, "movie_data", lambda label_set="positive / negative": toy_data())
    return icl.measure_icl(None, "auto", icl.check_settings(6, "0", 0, 1, ["chat turns"]), key="figures-icl")


def test_prompts_per_second_shows_a_planted_delay_per_prompt(tokenizer, monkeypatch):
    """Each scored prompt (6 sentences and 3 content-free inputs) sleeps 0.05 s: at most 20 prompts/s, and the
    same scorer without the delay at least 3x faster. Seen to fail with the speed replaced by a constant."""
    label = SimpleNamespace(label="planted")
    slow = icl_speed(models.ChatModel(label, tokenizer, BiasedScorer(tokenizer, 0.05), "onnx-int8"), monkeypatch)
    fast = icl_speed(models.ChatModel(label, tokenizer, BiasedScorer(tokenizer, 0.0), "onnx-int8"), monkeypatch)
    assert sum(c.n + len(icl.CONTENT_FREE) for c in slow.cells) == 6 + 3
    assert 0 < slow.prompts_per_second <= 20.0
    assert fast.prompts_per_second > 3 * slow.prompts_per_second
    assert f"{slow.prompts_per_second:.1f} prompts/s" in slow.describe()


# ---- the prompt's token count: a text of known tokens ---------------------------------------------------------

def test_the_prompt_summary_counts_a_planted_number_of_tokens(tokenizer):
    """" hello" is one SmolLM2 token: ten more of them in the query make the prompt exactly ten tokens longer, and
    the summary must say so, with the budget the new tokens leave. Seen to fail with the summary counting the
    prompt's characters, or its words."""
    from spaces.prompting import prompts

    assert tokenizer(" hello" * 10, add_special_tokens=False)["input_ids"] == [33662] * 10
    examples = [["a good film", "positive"]]
    short = prompts.build_prompt(tokenizer, "Classify.", examples, 1, "hello", 8192, max_new_tokens=64)
    longer = prompts.build_prompt(tokenizer, "Classify.", examples, 1, "hello" + " hello" * 10, 8192,
                                  max_new_tokens=64)
    assert len(longer.ids) == len(short.ids) + 10
    assert longer.summary.startswith(f"{len(short.ids) + 10} prompt tokens of a 8192-token context (8128 left for "
                                     "the prompt after the new tokens); 1 example(s)")
