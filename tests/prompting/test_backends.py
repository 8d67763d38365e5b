"""The prompting page's ONNX Runtime backends on the real SmolLM2-135M-Instruct, checked against PyTorch:
float32 gives the same logits, int8 weights nearly the same choices; the decoding loop stops, ends at
end-of-text, and falls back to PyTorch for architectures it cannot convert."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from shared import jobs
from shared.registry import resolve
from spaces.prompting import explorer, generation, models, sampling

STORY = ("Write a short story about a lighthouse keeper who finds a message in a bottle. The keeper had lived "
         "alone on the rock for eleven winters, counting ships and mending the lamp, and had long stopped "
         "expecting anything from the sea but weather. ")


@pytest.fixture(scope="module")
def chats():
    return {backend: models.load_chat_model(None, backend=backend) for backend in ("pytorch", "onnx-fp32", "onnx-int8")}


def chat_ids(chat, text: str) -> list[int]:
    return chat.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)


def teacher_forced_logits(chat, ids: list[int], start: int) -> np.ndarray:
    """The logits after each position from `start` on, through the backend's own decoding path."""
    if chat.backend == "pytorch":
        import torch

        with torch.inference_mode():
            return chat.model(torch.tensor([ids])).logits[0, start - 1:-1].double().numpy()
    logits, state = chat.model.prefill(ids[:start])
    rows = [logits]
    for token in ids[start:-1]:
        rows.append(chat.model.step(state, token))
    return np.stack(rows).astype(np.float64)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_auto_runs_onnx_int8_on_this_cpu_and_float32_onnx_matches_pytorch(chats):
    assert models.load_chat_model(None, backend="auto").backend == "onnx-int8"
    ids = chat_ids(chats["pytorch"], STORY)
    expected = explorer.next_token_logits(chats["pytorch"], ids)
    # float32 both ways; summation order differs between the kernels (int8 weights differ by ~1).
    np.testing.assert_allclose(explorer.next_token_logits(chats["onnx-fp32"], ids), expected, atol=1e-2)


def test_int8_weights_nearly_always_choose_what_float32_chooses(chats):
    """Teacher-forced over a real chat prompt and story: the int8 model's most likely next token agrees with
    the float32 PyTorch model's at >= 85% of positions (measured: ~94%), and the distributions stay close."""
    ids = chat_ids(chats["pytorch"], STORY * 3)
    reference = log_softmax(teacher_forced_logits(chats["pytorch"], ids, 20))
    ours = log_softmax(teacher_forced_logits(chats["onnx-int8"], ids, 20))
    agreement = np.mean(reference.argmax(-1) == ours.argmax(-1))
    kl = np.mean((np.exp(reference) * (reference - ours)).sum(-1))
    assert len(reference) > 150 and agreement >= 0.85 and kl < 0.05, (agreement, kl)


def test_the_onnx_loop_ends_at_end_of_text_and_at_max_new_tokens(chats):
    chat = chats["onnx-int8"]
    ids = chat_ids(chat, "What is the capital of France? Answer with one word.")
    *_, (text, stats) = generation.stream_generation(chat, ids, sampling.SamplingSettings("greedy", max_new_tokens=40))
    assert "Paris" in text and stats.new_tokens < 40 and not stats.stopped and stats.backend == "onnx-int8"
    story = chat_ids(chat, STORY)
    *_, (text, stats) = generation.stream_generation(chat, story, sampling.SamplingSettings("greedy", max_new_tokens=7))
    assert stats.new_tokens == 7 and text and stats.decode_tokens_per_second > 0


def test_a_stop_set_during_a_step_ends_the_onnx_loop_before_the_next_token(chats):
    """Stop set by the model itself during step N (deterministic, whatever the machine's speed): the loop
    checks the event before each token, so it makes at most N + 1 tokens and says it was stopped."""
    chat = chats["onnx-int8"]
    stop = threading.Event()
    stopping = models.ChatModel(chat.source, chat.tokenizer, HookedSteps(chat.model, stop_at(stop, STOP_STEP)),
                                "onnx-int8")
    settings = sampling.SamplingSettings("greedy", max_new_tokens=60)
    *_, (text, stats) = generation.stream_generation(stopping, chat_ids(chat, STORY), settings, stop, key="stop-test")
    assert stats.stopped and 0 < stats.new_tokens <= STOP_STEP + 1 and text, stats
    assert generation.STOPPED_NOTE in stats.describe()
    assert jobs.active(generation.GENERATE_JOB, key="stop-test") == 0


@pytest.mark.parametrize("backend", ["pytorch", "onnx-int8"])
def test_a_stop_set_before_the_run_ends_either_decoder_at_its_first_token(chats, backend):
    """PyTorch's `generate` reads the event in its StoppingCriteria after each token; the ONNX loop before each."""
    stop = threading.Event()
    stop.set()
    settings = sampling.SamplingSettings("greedy", max_new_tokens=60)
    chat = chats[backend]
    *_, (_, stats) = generation.stream_generation(chat, chat_ids(chat, STORY), settings, stop, key="early-stop")
    assert stats.stopped and stats.new_tokens <= 1, stats
    assert jobs.active(generation.GENERATE_JOB, key="early-stop") == 0


def test_closing_the_stream_stops_and_joins_the_onnx_decoder(chats):
    """What Gradio does when the visitor's event is cancelled: the stream is closed mid-run. The decoder here
    waits in its second step until the stop event is set (a slow model), so it is certainly still running
    when the stream is closed, and closing must set the event and join it."""
    chat = chats["onnx-int8"]
    stop = threading.Event()
    slow = models.ChatModel(chat.source, chat.tokenizer, HookedSteps(chat.model, wait_at(stop, 2)), "onnx-int8")
    stream = generation.stream_generation(slow, chat_ids(chat, STORY), sampling.SamplingSettings(max_new_tokens=50),
                                          stop, key="close-test")
    text, stats = next(stream)
    assert text and stats.new_tokens <= 2 and jobs.active(generation.GENERATE_JOB, key="close-test") == 1
    stream.close()
    assert stop.is_set() and jobs.active(generation.GENERATE_JOB, key="close-test") == 0


def test_a_model_the_onnx_builder_cannot_convert_falls_back_to_pytorch(tmp_path, monkeypatch):
    import transformers

    from shared import registry

    monkeypatch.setattr(registry, "_local_models", dict(registry._local_models))  # forgotten after the test

    folder = tmp_path / "tiny-gpt2"
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    label = registry.register_local("tiny-gpt2-for-backends", folder, "chat-lm")
    source = resolve("chat-lm", label)
    assert models.pick_backend("auto", source) == "pytorch"
    with pytest.raises(ValueError, match="'gpt2'.*Choose the PyTorch backend"):
        models.pick_backend("onnx-int8", source)
    with pytest.raises(ValueError, match="backend must be one of"):
        models.pick_backend("tensorrt", source)
    with pytest.raises(ValueError, match="Could not read the configuration"):
        models.onnx_refusal(str(tmp_path / "missing"))


STOP_STEP = 5
HANG_GUARD_S = 120  # a step that waits longer than this has hung: fail rather than block the suite


class HookedSteps:
    """The real ONNX model, except that `hook(n)` runs before its n-th decoding step: to fail, stop or wait
    at a chosen step, as running out of memory, pressing Stop or a slow machine would."""

    def __init__(self, lm, hook):
        self.lm, self.hook, self.steps = lm, hook, 0
        self.generation_config, self.config = lm.generation_config, lm.config

    def prefill(self, ids):
        return self.lm.prefill(ids)

    def step(self, state, token):
        self.steps += 1
        self.hook(self.steps)
        return self.lm.step(state, token)


def stop_at(stop: threading.Event, at: int):
    def hook(step: int) -> None:
        if step == at:
            stop.set()

    return hook


def wait_at(stop: threading.Event, at: int):
    def hook(step: int) -> None:
        if step == at and not stop.wait(HANG_GUARD_S):
            raise TimeoutError(f"step {at} waited {HANG_GUARD_S} s for the stop event")

    return hook


def fail_at(at: int):
    def hook(step: int) -> None:
        if step == at:
            raise MemoryError("no memory for the next step")

    return hook


def test_an_error_in_the_decoder_reaches_the_caller_and_the_thread_ends(chats):
    chat = chats["onnx-int8"]
    failing = models.ChatModel(chat.source, chat.tokenizer, HookedSteps(chat.model, fail_at(3)), "onnx-int8")
    stream = generation.stream_generation(failing, chat_ids(chat, STORY), sampling.SamplingSettings(max_new_tokens=50),
                                          key="error-test")
    with pytest.raises(MemoryError, match="no memory"):
        list(stream)
    assert jobs.active(generation.GENERATE_JOB, key="error-test") == 0
