"""The quantization page's LM family (spaces/quantization/lm.py) on a tiny seeded LlamaForCausalLM of the real class
with SmolLM2's own tokenizer: every CPU variant builds (in child processes, into a temporary PLAYGROUND_HOME), is
measured, and stays close to fp32; the reference file is written and fp32 against itself is exactly 0; the
perplexity and KL formulas on hand-checkable cases; GPU variants are Unavailable on a CPU; Stop ends a generation
between two tokens.

Seen to fail when the code it guards was broken: the KL taken against float16-rounded reference weights without
the exact Σ p log p term (fp32 against itself was not 0), greedy steps fed the wrong token (agreement and
greedy output differed between runtimes), and a build stored under another name than the prompting page's."""

from __future__ import annotations

import shutil
import threading
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from spaces.quantization import lm
from spaces.quantization.common import Stopped, Unavailable

LABEL = "local:tiny-llama"
TINY = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=True,
            bos_token_id=1, eos_token_id=2, pad_token_id=2,
            initializer_range=0.1)  # peaked enough that int4 visibly differs from int8, and bf16 from fp32
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
GENAI = find_spec("onnxruntime_genai") is not None and find_spec("onnx_ir") is not None
CPU_VARIANTS = [v.name for v in lm.VARIANTS if v.needs != "gpu" and (GENAI or v.needs != "onnxruntime-genai")]
BUILT = [v for v in CPU_VARIANTS if v in lm.BUILT_IN_CHILD or v in lm.GENAI_PRECISIONS]
# (lowest top-1 agreement, highest mean KL in nats) on 31 positions of the tiny model; int4 is looser.
CLOSE = {"pytorch-bf16": (0.9, 1e-3), "onnx-fp32": (0.96, 1e-5), "optimum-ort": (0.96, 1e-5),
         "onnx-int8": (0.9, 3e-3), "genai-int8": (0.9, 3e-3), "onnx-int4": (0.3, 0.1), "genai-int4": (0.3, 0.1)}
FIGURES = ("disk MB", "memory MB", "build s", "load s", "p50 ms", "p95 ms", "decode tok/s", "prefill tok/s",
           "perplexity", "top-1 agreement", "mean KL", "greedy output", "notes")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A PLAYGROUND_HOME of its own (the builds land there), sharing the offline assets (the quality text)."""
    from shared.settings import read_settings

    assets = read_settings().assets_dir
    root = tmp_path_factory.mktemp("home")
    (root / "assets").symlink_to(assets, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PLAYGROUND_HOME", str(root))
        yield root


@pytest.fixture(scope="module")
def tiny(home, tmp_path_factory):
    """The tiny model's folder: seeded random weights, SmolLM2's tokenizer and chat template."""
    import torch
    import transformers

    from shared.registry import resolve

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).eval().save_pretrained(folder)
    real = Path(resolve("chat-lm").location)
    for name in TOKENIZER_FILES:
        shutil.copy(real / name, folder / name)
    return str(folder)


@pytest.fixture(scope="module")
def params(tiny):
    return lm.default_params(source=tiny, label=LABEL, text_tokens=32, new_tokens=4, repeats=1)


@pytest.fixture(scope="module")
def builds(tiny):
    return lm.build_many(BUILT, tiny, LABEL)


@pytest.fixture(scope="module")
def work_dir(home):
    return home / "quantization" / "work" / "lm-test"


@pytest.fixture(scope="module")
def results(builds, params, work_dir):
    """Every CPU variant measured, the reference first (it writes the reference file the others read)."""
    return {variant: lm.measure(variant, params, work_dir) for variant in CPU_VARIANTS}


def test_every_build_is_made_once_and_stored_where_the_prompting_page_looks(builds, results, params, home, tiny):
    assert set(builds) == set(BUILT)
    assert all(build.seconds > 0 and build.folder.is_dir() for build in builds.values())
    assert builds["onnx-int8"].folder.parent == home / "onnx"
    assert builds["onnx-int8"].folder.name.startswith("tiny-llama (ONNX int8)-int8-")  # shared/loaders.py's name
    assert all(results[v]["build s"] == 0.0 for v in BUILT)  # measure found them in the store
    again = lm.measure("onnx-int4", params, home / "quantization" / "work" / "lm-test")
    assert again["build s"] == 0.0 and again["top-1 agreement"] == results["onnx-int4"]["top-1 agreement"]
    assert lm.build_many(BUILT, tiny, LABEL) == {v: lm.Build(b.folder, 0.0) for v, b in builds.items()}


def test_the_reference_writes_its_file_and_scores_exactly_zero_against_itself(results, params, work_dir, tiny):
    reference = results[lm.REFERENCE]
    assert reference["top-1 agreement"] == 1.0 and reference["mean KL"] == 0.0
    assert reference["disk MB"] > 0 and reference["perplexity"] > 1
    tokenizer = lm.load_tokenizer(tiny)
    text = lm.quality_ids(tokenizer, params["text_tokens"])
    kept = lm.read_reference(work_dir / lm.REFERENCE_FILE, text)
    assert kept is not None and kept.logprobs.shape == (31, TINY["vocab_size"]) and kept.logprobs.dtype == np.float16
    assert kept.argmax.shape == (31,) and kept.self_term.shape == (31,)
    assert lm.read_reference(work_dir / lm.REFERENCE_FILE, text[::-1]) is None  # another text: not this file


@pytest.mark.parametrize("variant", [v for v in CPU_VARIANTS if v != lm.REFERENCE])
def test_each_cpu_variant_stays_close_to_fp32(results, variant):
    figures = results[variant]
    assert set(FIGURES) <= set(figures)
    lowest_agreement, highest_kl = CLOSE[variant]
    assert figures["top-1 agreement"] >= lowest_agreement
    assert figures["mean KL"] <= highest_kl
    if "int" in variant:  # quantized weights do change the distribution
        assert figures["mean KL"] > 0
    assert figures["disk MB"] > 0 and figures["p50 ms"] > 0 and figures["p95 ms"] >= figures["p50 ms"]
    assert figures["decode tok/s"] > 0 and figures["prefill tok/s"] > 0
    assert abs(np.log(figures["perplexity"] / results[lm.REFERENCE]["perplexity"])) < 0.5
    assert isinstance(figures["greedy output"], str) and isinstance(figures["notes"], str)


def test_int4_moves_further_from_fp32_than_int8(results):
    assert results["onnx-int4"]["mean KL"] > results["onnx-int8"]["mean KL"]
    if GENAI:
        assert results["genai-int4"]["mean KL"] > results["genai-int8"]["mean KL"]
    float32 = [v for v in ("onnx-fp32", "optimum-ort") if v in results]
    assert all(results[v]["greedy output"] == results[lm.REFERENCE]["greedy output"] for v in float32)


def test_perplexity_is_exp_mean_nll_on_a_hand_checked_case():
    # Row 0 gives the true next token (0) probability 1/2, row 1 gives its true next token (1) probability 1/4:
    # perplexity = exp((ln 2 + ln 4) / 2) = 2 ** 1.5.
    logprobs = np.log(np.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]))
    ids = [2, 0, 1]
    assert lm.perplexity(logprobs, ids) == pytest.approx(2**1.5)
    assert lm.score(logprobs + 3.0, ids).perplexity == pytest.approx(2**1.5)  # logits: any shift, same answer


def test_kl_is_zero_against_itself_and_right_on_a_hand_checked_case():
    p = lm.score(np.log(np.array([[0.5, 0.5], [0.5, 0.5]])), [0, 0, 1])
    q = lm.score(np.log(np.array([[0.9, 0.1], [0.5, 0.5]])), [0, 0, 1])
    reference = lm.Reference.of([0, 0, 1], p)
    assert np.array_equal(reference.kl(p.logprobs), [0.0, 0.0])
    expected = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)  # 0.5108 nats
    # The reference's probabilities weigh the terms as float16 (0.5 -> 0.49994): a relative error of ~2e-4.
    assert reference.kl(q.logprobs) == pytest.approx([expected, 0.0], rel=1e-3, abs=1e-12)
    assert lm.compare(reference, q) == pytest.approx({"top-1 agreement": 1.0, "mean KL": expected / 2}, rel=1e-3)


def test_gpu_variants_are_unavailable_on_a_cpu(params, work_dir):
    from shared.device import pick_device

    if pick_device() != "cpu":
        pytest.skip("a GPU is here: the bitsandbytes variants can run")
    for variant in ("gpu-bitsandbytes-int8", "gpu-bitsandbytes-nf4"):
        with pytest.raises(Unavailable, match="needs a GPU"):
            lm.measure(variant, params, work_dir)


def test_stop_ends_a_generation_between_two_tokens(tiny):
    loaded = lm.load_torch(tiny, lm.variant_named(lm.REFERENCE), "cpu")
    stop, seen = threading.Event(), []

    def on_token(token: int) -> None:
        seen.append(token)
        if len(seen) == 2:
            stop.set()

    with pytest.raises(Stopped):
        lm.generate(loaded.decoder, [1, 504, 2000, 77], 10, stop, on_token)
    assert len(seen) == 2
    tokens, steps = lm.generate(loaded.decoder, [1, 504, 2000, 77], 3)
    assert tokens[:2] == seen and len(steps) == 2  # the same greedy tokens; one timed step after each token


def test_stop_during_a_measurement_raises_stopped(builds, results, params, work_dir):
    stop = threading.Event()

    def progress(fraction: float, text: str) -> None:
        if text.startswith("timing decode"):
            stop.set()

    with pytest.raises(Stopped):
        lm.measure("onnx-int8", params, work_dir, progress, stop)


def test_stop_ends_a_build_and_leaves_nothing_half_written(builds, tiny, home):
    stop = threading.Event()
    stop.set()
    variants = ["onnx-int8", *[v for v in BUILT if v in lm.GENAI_PRECISIONS][:1]]  # our child, and genai's
    with pytest.raises(Stopped):
        lm.build_many(variants, tiny, "local:stopped", stop=stop)
    left = [p.name for folder in (home / "onnx", lm.builds_dir()) for p in folder.iterdir() if "stopped" in p.name]
    assert left == []


@pytest.mark.parametrize("overrides, message", [
    ({"text_tokens": 4}, "text_tokens must be between 8 and 2048"),
    ({"new_tokens": 2.5}, "new_tokens must be a whole number"),
    ({"repeats": "3"}, "repeats must be a whole number"),
    ({"prompt": "  "}, "prompt must be some text"),
    ({"temperature": 0.7}, "unknown LM setting"),
])
def test_bad_settings_are_refused_by_name(tiny, overrides, message):
    with pytest.raises(ValueError, match=message):
        lm.default_params(source=tiny, **overrides)


def test_settings_default_to_the_chat_model_and_stay_json(params):
    import json

    defaults = lm.default_params()
    assert defaults["label"] == "local:smollm2-135m-instruct" and Path(defaults["source"]).is_dir()
    assert defaults["text_tokens"] == 256 and defaults["new_tokens"] == 32
    assert json.loads(json.dumps(params)) == params
    assert lm.VARIANTS[0].name == lm.REFERENCE == "pytorch-fp32" and lm.QUALITY == ("top-1 agreement", "higher")
