"""The prompting page's ONNX Runtime backends on the real SmolLM2-135M-Instruct, checked against PyTorch:
float32 gives the same logits, int8 weights nearly the same choices; the decoding loop stops, ends at
end-of-text, and falls back to PyTorch for architectures it cannot convert."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from spaces.prompting import logic

STORY = ("Write a short story about a lighthouse keeper who finds a message in a bottle. The keeper had lived "
         "alone on the rock for eleven winters, counting ships and mending the lamp, and had long stopped "
         "expecting anything from the sea but weather. ")


@pytest.fixture(scope="module")
def models():
    return {backend: logic.load_chat_model(None, backend=backend) for backend in ("pytorch", "onnx-fp32", "onnx-int8")}


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


def test_auto_runs_onnx_int8_on_this_cpu_and_float32_onnx_matches_pytorch(models):
    assert logic.load_chat_model(None, backend="auto").backend == "onnx-int8"
    ids = chat_ids(models["pytorch"], STORY)
    expected = logic.next_token_logits(models["pytorch"], ids)
    # float32 both ways; summation order differs between the kernels (int8 weights differ by ~1).
    np.testing.assert_allclose(logic.next_token_logits(models["onnx-fp32"], ids), expected, atol=1e-2)


def test_int8_weights_nearly_always_choose_what_float32_chooses(models):
    """Teacher-forced over a real chat prompt and story: the int8 model's most likely next token agrees with
    the float32 PyTorch model's at >= 85% of positions (measured: ~94%), and the distributions stay close."""
    ids = chat_ids(models["pytorch"], STORY * 3)
    reference = log_softmax(teacher_forced_logits(models["pytorch"], ids, 20))
    ours = log_softmax(teacher_forced_logits(models["onnx-int8"], ids, 20))
    agreement = np.mean(reference.argmax(-1) == ours.argmax(-1))
    kl = np.mean((np.exp(reference) * (reference - ours)).sum(-1))
    assert len(reference) > 150 and agreement >= 0.85 and kl < 0.05, (agreement, kl)


def test_the_onnx_loop_ends_at_end_of_text_and_at_max_new_tokens(models):
    chat = models["onnx-int8"]
    ids = chat_ids(chat, "What is the capital of France? Answer with one word.")
    *_, (text, stats) = logic.stream_generation(chat, ids, logic.SamplingSettings("greedy", max_new_tokens=40))
    assert "Paris" in text and stats.new_tokens < 40 and not stats.stopped and stats.backend == "onnx-int8"
    story = chat_ids(chat, STORY)
    *_, (text, stats) = logic.stream_generation(chat, story, logic.SamplingSettings("greedy", max_new_tokens=7))
    assert stats.new_tokens == 7 and text and stats.decode_tokens_per_second > 0


def test_stop_and_closing_the_stream_end_the_onnx_loop(models):
    chat = models["onnx-int8"]
    story = chat_ids(chat, STORY)
    stop = threading.Event()
    settings = logic.SamplingSettings("sampling", max_new_tokens=400, seed=3)
    seen = 0
    for text, stats in logic.stream_generation(chat, story, settings, stop):
        seen += 1
        if seen == 3:
            stop.set()
    assert stats.stopped and stats.new_tokens < 100 and logic.active_generations() == 0
    stream = logic.stream_generation(chat, story, settings)
    next(stream)
    assert logic.active_generations() == 1
    stream.close()  # what Gradio does when the visitor's event is cancelled
    assert logic.active_generations() == 0


def test_a_model_the_onnx_builder_cannot_convert_falls_back_to_pytorch(tmp_path, monkeypatch):
    import transformers

    from shared import registry

    monkeypatch.setattr(registry, "_local_models", dict(registry._local_models))  # forgotten after the test

    folder = tmp_path / "tiny-gpt2"
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    label = registry.register_local("tiny-gpt2-for-backends", folder, "chat-lm")
    source = logic.resolve("chat-lm", label)
    assert logic.pick_backend("auto", source) == "pytorch"
    with pytest.raises(ValueError, match="'gpt2'.*Choose the PyTorch backend"):
        logic.pick_backend("onnx-int8", source)
    with pytest.raises(ValueError, match="backend must be one of"):
        logic.pick_backend("tensorrt", source)
    with pytest.raises(ValueError, match="Could not read the configuration"):
        logic.onnx_refusal(str(tmp_path / "missing"))


class FailingSteps:
    """The real ONNX model, except that its third step fails: as running out of memory halfway would."""

    def __init__(self, lm):
        self.lm, self.steps = lm, 0
        self.generation_config, self.config = lm.generation_config, lm.config

    def prefill(self, ids):
        return self.lm.prefill(ids)

    def step(self, state, token):
        self.steps += 1
        if self.steps == 3:
            raise MemoryError("no memory for the next step")
        return self.lm.step(state, token)


def test_an_error_in_the_decoder_reaches_the_caller_and_the_thread_ends(models):
    chat = models["onnx-int8"]
    failing = logic.ChatModel(chat.source, chat.tokenizer, FailingSteps(chat.model), "onnx-int8")
    stream = logic.stream_generation(failing, chat_ids(chat, STORY), logic.SamplingSettings(max_new_tokens=50))
    with pytest.raises(MemoryError, match="no memory"):
        list(stream)
    assert logic.active_generations() == 0
