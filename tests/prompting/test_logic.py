"""The prompting page's logic without a server: the prompt builder, the sampling filters and the one sampler,
label scoring and the in-context learning evaluation's checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from spaces.prompting import explorer, icl, prompts, sampling

EXAMPLES = [["good film", "positive"], ["bad film", "negative"], ["great cast", "positive"], ["dull plot", "negative"]]
PROBS = np.array([0.5, 0.3, 0.15, 0.05])


@pytest.fixture(scope="module")
def tokenizer():
    from shared.cache import LoadSpec, get_cache
    from shared.registry import resolve

    source = resolve("chat-lm")
    return get_cache().get(LoadSpec("tokenizer", source.location, label=source.label))


@pytest.fixture(scope="module")
def plain_tokenizer(tokenizer):
    """The same tokenizer with its chat template removed: what a base model looks like."""
    base = copy.deepcopy(tokenizer)
    base.chat_template = None
    return base


# ---- prompt builder ----


@pytest.mark.parametrize("shots", [0, 1, 4])
def test_prompt_holds_the_first_k_examples_in_the_chat_template(tokenizer, shots):
    prompt = prompts.build_prompt(tokenizer, "Classify.", EXAMPLES, shots, "fine acting", context_length=2048)
    assert prompt.chat and prompt.shots == shots and prompt.dropped == 0
    assert prompt.text.count("<|im_start|>assistant") == shots + 1
    assert prompt.text.startswith("<|im_start|>system\nClassify.<|im_end|>")
    assert prompt.text.endswith("<|im_start|>user\nfine acting<|im_end|>\n<|im_start|>assistant\n")
    for given, answer in EXAMPLES[:shots]:
        assert f"user\n{given}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>" in prompt.text
    assert prompt.ids == tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
    assert f"{len(prompt.ids)} prompt tokens of a 2048-token context" in prompt.summary


def test_a_base_model_gets_a_plain_text_prompt(plain_tokenizer):
    prompt = prompts.build_prompt(plain_tokenizer, "Classify.", EXAMPLES, 2, "fine acting", context_length=2048)
    assert not prompt.chat and "no chat template" in prompt.summary
    assert prompt.text == ("Classify.\n\nInput: good film\nOutput: positive\n\nInput: bad film\nOutput: negative"
                           "\n\nInput: fine acting\nOutput:")
    with pytest.raises(ValueError, match="no chat template"):
        prompts.build_prompt(plain_tokenizer, "Classify.", EXAMPLES, 2, "x", context_length=2048, use_chat=True)


def test_a_long_prompt_drops_the_oldest_examples_first(tokenizer):
    full = prompts.build_prompt(tokenizer, "Classify.", EXAMPLES, 4, "fine acting", context_length=2048)
    fitted = prompts.build_prompt(tokenizer, "Classify.", EXAMPLES, 4, "fine acting",
                                context_length=len(full.ids) + 10 - 8, max_new_tokens=10)
    assert fitted.dropped >= 1 and fitted.shots == 4 - fitted.dropped
    assert len(fitted.ids) <= fitted.budget
    assert "good film" not in fitted.text and "dull plot" in fitted.text  # the oldest went first


@pytest.mark.parametrize("shots, query, examples, message", [
    (0, "   ", EXAMPLES, "query is empty"),
    (5, "q", EXAMPLES, "between 0 and the 4 complete"),
    (-1, "q", EXAMPLES, "between 0 and the 4 complete"),
    (1, "q", [["only an input", ""]], "needs both an input and an output"),
    (0, "word " * 300, [], "alone take"),
])
def test_bad_prompt_input_is_refused_with_a_message(tokenizer, shots, query, examples, message):
    with pytest.raises(ValueError, match=message):
        prompts.build_prompt(tokenizer, "Classify.", examples, shots, query, context_length=128, max_new_tokens=16)


def test_blank_example_rows_are_skipped():
    rows = [["a", "b"], ["", ""], [None, float("nan")], [" c ", " d "]]
    assert prompts.clean_examples(rows) == [("a", "b"), ("c", "d")]


# ---- sampling filters ----


def test_temperature_one_changes_nothing_and_others_sharpen_or_flatten():
    logits = np.log(PROBS)
    stages = sampling.filter_distribution(logits, 1.0, 0, 1.0)
    for stage in sampling.STAGES:
        np.testing.assert_allclose(stages[stage], PROBS)
    cold = sampling.filter_distribution(logits, 0.25, 0, 1.0)["temperature"]
    hot = sampling.filter_distribution(logits, 4.0, 0, 1.0)["temperature"]
    assert cold[0] > 0.85 and hot[0] < PROBS[0] and hot[3] > PROBS[3]
    np.testing.assert_allclose(cold, PROBS**4 / (PROBS**4).sum())  # p^(1/T), renormalised


@pytest.mark.parametrize("top_k, kept", [(1, [0]), (2, [0, 1]), (3, [0, 1, 2]), (0, [0, 1, 2, 3]), (10, [0, 1, 2, 3])])
def test_top_k_keeps_the_k_most_likely_and_renormalises(top_k, kept):
    probs = sampling.filter_distribution(np.log(PROBS), 1.0, top_k, 1.0)["top-k"]
    assert list(np.flatnonzero(probs)) == kept
    np.testing.assert_allclose(probs[kept], PROBS[kept] / PROBS[kept].sum())


@pytest.mark.parametrize("top_p, kept", [(0.4, [0]), (0.5, [0]), (0.7, [0, 1]), (0.75, [0, 1]), (0.9, [0, 1, 2]),
                                         (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    probs = sampling.filter_distribution(np.log(PROBS), 1.0, 0, top_p)["top-p"]
    assert list(np.flatnonzero(probs)) == kept
    assert probs.sum() == pytest.approx(1.0)


def test_top_p_applies_after_top_k_and_temperature():
    stages = sampling.filter_distribution(np.log(PROBS), 1.0, 3, 0.6)
    # After top-k the three survivors are 0.526, 0.316, 0.158: top-p 0.6 then keeps the first two.
    assert list(np.flatnonzero(stages["top-k"])) == [0, 1, 2]
    assert list(np.flatnonzero(stages["top-p"])) == [0, 1]


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 20, 0.9), (1.3, 0, 0.5), (1.0, 5, 1.0)])
def test_filters_match_what_transformers_samples_from(temperature, top_k, top_p):
    import torch
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                         TopKLogitsWarper, TopPLogitsWarper)

    logits = np.random.default_rng(0).normal(size=200) * 3
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)]
                                  + ([TopKLogitsWarper(top_k)] if top_k else []) + [TopPLogitsWarper(top_p)])
    scores = warpers(torch.zeros(1, 1, dtype=torch.long), torch.tensor(logits[None]))
    expected = torch.softmax(scores, dim=-1)[0].numpy()
    np.testing.assert_allclose(sampling.filter_distribution(logits, temperature, top_k, top_p)["top-p"], expected,
                               atol=1e-9)


def test_an_explorer_step_is_greedy_or_a_seeded_draw_among_survivors():
    logits = np.log(PROBS)
    assert explorer.walk_step(logits, sampling.SamplingSettings("greedy"), [], step=0) == 0
    settings = sampling.SamplingSettings("sampling", temperature=1.0, top_k=2, seed=7)
    draws = [explorer.walk_step(logits, settings, [], step) for step in range(40)]
    assert set(draws) == {0, 1}  # only top-k survivors are ever drawn
    assert draws == [explorer.walk_step(logits, settings, [], step) for step in range(40)]  # replayable
    # The walk draws with the one sampler, its generator seeded by (seed, step).
    assert draws == [sampling.sample_next(logits, settings, [], np.random.default_rng([7, step])) for step in range(40)]


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 20, 0.9), (1.3, 0, 0.5), (1.0, 5, 1.0), (1.0, 0, 1.0),
                                                    (0.5, 3, 0.3)])
def test_the_sampler_draws_from_the_explorers_last_stage(temperature, top_k, top_p):
    logits = np.random.default_rng(1).normal(size=300) * 3
    logits[[10, 11, 12]] = logits.max() + 1  # ties at the top: all survive top-k together
    ids, probs = sampling.sampling_candidates(logits, temperature, top_k, top_p)
    expected = sampling.filter_distribution(logits, temperature, top_k, top_p)["top-p"]
    assert list(ids) == list(np.flatnonzero(expected))
    np.testing.assert_allclose(probs, expected[ids], atol=1e-12)


def test_the_sampler_is_seeded_and_its_draws_follow_the_probabilities():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    settings = sampling.SamplingSettings("sampling", temperature=1.0, top_k=3, top_p=1.0)
    draws = [sampling.sample_next(logits, settings, [], np.random.default_rng(5)) for _ in range(3)]
    assert len(set(draws)) == 1  # one seed, one draw
    rng = np.random.default_rng(0)
    counts = np.bincount([sampling.sample_next(logits, settings, [], rng) for _ in range(20_000)], minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], atol=0.015)
    assert sampling.sample_next(logits, sampling.SamplingSettings("greedy"), [], rng) == 0
    with pytest.raises(ValueError, match="random generator"):
        sampling.sample_next(logits, settings, [], None)


def test_repetition_penalty_matches_transformers_and_leaves_the_logits_alone():
    import torch
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = np.random.default_rng(2).normal(size=50) * 2
    history = [3, 7, 7, 20, 41]
    expected = RepetitionPenaltyLogitsProcessor(1.4)(torch.tensor([history]), torch.tensor(logits[None]))[0]
    before = logits.copy()
    np.testing.assert_allclose(sampling.apply_repetition_penalty(logits, history, 1.4), expected.numpy(), atol=1e-12)
    np.testing.assert_array_equal(logits, before)
    greedy = sampling.SamplingSettings("greedy", repetition_penalty=3.0)
    top_two = np.array([2.0, 1.9, -1.0])
    assert sampling.sample_next(top_two, greedy, [], None) == 0
    assert sampling.sample_next(top_two, greedy, [0], None) == 1  # 2.0 / 3 falls below 1.9


@pytest.mark.parametrize("change, message", [
    ({"mode": "beam"}, "mode must be one of"),
    ({"temperature": 0}, "temperature must be between"),
    ({"top_k": -1}, "top-k must be between"),
    ({"top_p": 1.5}, "top-p must be between"),
    ({"max_new_tokens": 0}, "max new tokens must be between"),
    ({"repetition_penalty": 0.5}, "repetition penalty must be between"),
    ({"seed": -3}, "seed must be between"),
    ({"top_k": 2.5}, "top-k must be a whole number, got 2.5"),
    ({"seed": None}, "seed must be between 0 and 2147483647, got None"),
])
def test_out_of_range_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        sampling.SamplingSettings(**{"mode": "sampling", **change}).checked()


def test_greedy_settings_turn_sampling_off():
    kwargs = sampling.SamplingSettings("greedy", temperature=0.5).generate_kwargs()
    assert kwargs["do_sample"] is False and kwargs["temperature"] is None


# ---- label scoring and the evaluation's bookkeeping ----


def test_labels_are_scored_by_their_probabilities(tokenizer):
    label_ids = icl.label_token_ids(tokenizer, icl.ICL_LABEL_WORDS, chat=True)
    assert len(set(label_ids)) == 2
    logits = np.zeros(len(tokenizer))
    logits[label_ids[1]] = 2.0
    logits[42] = 50.0  # a token that is no label word does not count
    predicted, probs = icl.score_labels(logits, label_ids)
    assert predicted == 1 and probs[1] == pytest.approx(1 / (1 + np.exp(-2.0)))
    plain = icl.label_token_ids(tokenizer, icl.ICL_LABEL_WORDS, chat=False)
    assert plain != label_ids  # after "Output:" the word comes with its space


@pytest.mark.parametrize("successes, n, low, high", [(5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775),
                                                     (10, 10, 0.7225, 1.0), (80, 100, 0.7112, 0.8666)])
def test_wilson_interval(successes, n, low, high):
    assert icl.wilson_interval(successes, n) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize("text, expected", [("0, 1, 4", [0, 1, 4]), ("4,0,4", [0, 4]), ("2", [2])])
def test_shot_lists(text, expected):
    assert icl.parse_shot_list(text) == expected


@pytest.mark.parametrize("text", ["", "one", "0, 99", "-1"])
def test_bad_shot_lists_are_refused(text):
    with pytest.raises(ValueError, match="shot count|Shot counts"):
        icl.parse_shot_list(text)


@pytest.mark.parametrize("n, shots, seed, message", [
    (5, "0", 0, "N must be an even number .*got 5"),
    (0, "0", 0, r"N must be between 2 and \d+, got 0"),
    (icl.ICL_MAX_EXAMPLES + 2, "0", 0, "N must be between 2 and"),
    (4.5, "0", 0, "N must be a whole number, got 4.5"),
    (None, "0", 0, "N must be between 2 and .*got None"),
    (4, "0, 40", 0, r"Shot counts must be whole numbers between 0 and 16, got \[0, 40\]"),
    (4, [0, 1.5], 0, "Shot counts must be whole numbers"),
    (4, "0", -1, "seed must be between 0 and 2147483647, got -1"),
    (4, "0", 1.5, "seed must be a whole number, got 1.5"),
    (4, "0", None, "seed must be between 0 and 2147483647, got None"),
])
def test_bad_evaluation_settings_are_refused_naming_the_value_and_the_rule(n, shots, seed, message):
    """The page passes N, the shot counts and the seed as they come: these checks (icl.check_settings) are the
    only ones, and the page runs them before it loads a model."""
    with pytest.raises(ValueError, match=message):
        icl.check_icl_inputs(n, shots, seed)


def test_good_evaluation_settings_come_back_as_whole_numbers():
    assert icl.check_icl_inputs(4.0, "4, 0", 7.0) == (4, [0, 4], 7)
    assert icl.check_icl_inputs(40, [1, 0, 1], 0) == (40, [0, 1], 0)


def test_an_unknown_preset_is_refused_naming_the_choices():
    assert prompts.preset("topic")["query"] == prompts.PRESETS["topic"]["query"]
    with pytest.raises(ValueError, match="preset must be one of .*'sentiment'.*got 'poetry'"):
        prompts.preset("poetry")
