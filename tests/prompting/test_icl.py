"""The in-context-learning lab's logic: the three prompt formats build what they claim, flipped labels flip exactly
the demonstrations, calibration divides out the content-free prior, the draws are balanced and seeded, and the
fast path (the shared prefix run once) predicts what running every prompt whole predicts, on the real offline
SmolLM2 (ONNX Runtime int8, the page's default on a CPU, and PyTorch)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from spaces.prompting import icl
from spaces.prompting.models import load_chat_model

DEMOS = [("a gorgeous film", "positive"), ("two wasted hours", "negative")]


@pytest.fixture(scope="module")
def onnx_chat():
    return load_chat_model(None, backend="auto")


@pytest.fixture(scope="module")
def torch_chat():
    return load_chat_model(None, backend="pytorch")


@pytest.fixture(scope="module")
def tokenizer(onnx_chat):
    return onnx_chat.tokenizer


def toy_data(n: int = 60) -> icl.IclData:
    rows = [(f"sentence number {i} is {'good' if i % 2 else 'bad'}", i % 2) for i in range(n)]
    return icl.IclData("toy", rows, ("negative", "positive"), icl.ICL_INSTRUCTION)


# ---- prompts -------------------------------------------------------------------------------------------------

def test_chat_turns_put_each_demonstration_in_its_own_turns(tokenizer):
    text, ids = icl.format_prompt(tokenizer, "chat turns", "Classify.", DEMOS, "a fine cast")
    assert text.count("<|im_start|>user") == 3 and text.count("<|im_start|>assistant") == 3  # 2 demos + the answer
    assert "<|im_start|>system\nClassify.<|im_end|>" in text
    assert "<|im_start|>assistant\npositive<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_one_message_holds_instruction_demonstrations_and_sentence_in_one_user_turn(tokenizer):
    text, _ = icl.format_prompt(tokenizer, "one message", "Classify.", DEMOS, "a fine cast")
    assert text.count("<|im_start|>user") == 1 and text.count("<|im_start|>assistant") == 1
    user = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    assert user == ("Classify.\n\nInput: a gorgeous film\nOutput: positive\n\nInput: two wasted hours\n"
                    "Output: negative\n\nInput: a fine cast\nOutput:")
    assert text.endswith("<|im_start|>assistant\n")


def test_plain_text_has_no_chat_template(tokenizer):
    text, _ = icl.format_prompt(tokenizer, "plain text", "Classify.", DEMOS, "a fine cast")
    assert "<|im_start|>" not in text and text.endswith("Input: a fine cast\nOutput:")
    # The answer follows "Output:" with a space, so the label words are scored with one.
    assert icl.label_token_ids(tokenizer, ["positive"], chat=False) == \
        tokenizer(" positive", add_special_tokens=False)["input_ids"][:1]


def test_an_unknown_format_is_refused(tokenizer):
    with pytest.raises(ValueError, match="prompt format must be one of"):
        icl.format_prompt(tokenizer, "poem", "Classify.", DEMOS, "x")


# ---- demonstrations ------------------------------------------------------------------------------------------

def test_flipped_labels_flip_exactly_the_demonstrations():
    demos = [("a", 1), ("b", 0), ("c", 1), ("d", 0), ("e", 0)]
    words = ("negative", "positive")
    gold = icl.demo_words(demos, words, "gold", seed=0)
    flipped = icl.demo_words(demos, words, "flipped", seed=0)
    assert [w for _, w in gold] == ["positive", "negative", "positive", "negative", "negative"]
    assert [w for _, w in flipped] == ["negative", "positive", "negative", "positive", "positive"]
    assert [t for t, _ in flipped] == [t for t, _ in gold]  # the texts and their order are untouched
    random_words = [w for _, w in icl.demo_words(demos * 20, words, "random", seed=0)]
    assert 30 < random_words.count("positive") < 70  # a coin per demonstration


def test_the_draws_are_balanced_disjoint_and_seeded():
    rows = toy_data(100).rows
    tests, pool = icl.draw_tests(rows, 10, seed=3)
    assert sorted(label for _, label in tests) == [0] * 5 + [1] * 5
    assert not {t for t, _ in tests} & {t for t, _ in pool} and len(tests) + len(pool) == 100
    assert icl.draw_tests(rows, 10, seed=3) == (tests, pool) and icl.draw_tests(rows, 10, seed=4)[0] != tests
    demos = icl.draw_demos(pool, 5, seed=7)
    assert len(demos) == 5 and sorted(label for _, label in demos) in ([0, 0, 0, 1, 1], [0, 0, 1, 1, 1])
    assert icl.draw_demos(pool, 5, seed=7) == demos and icl.draw_demos(pool, 5, seed=8) != demos
    with pytest.raises(ValueError, match="N must be an even number"):
        icl.draw_tests(rows, 7, seed=0)
    with pytest.raises(ValueError, match="needs 50 test sentences of each label"):
        icl.draw_tests(rows, 100, seed=0)


# ---- calibration ---------------------------------------------------------------------------------------------

def test_calibration_divides_out_the_content_free_prior():
    prior = np.array([0.8, 0.2])  # the prompt alone makes the model say "negative" 80% of the time
    assert icl.calibrate(np.array([0.6, 0.4]), prior) == pytest.approx([0.6 / 0.8 / (0.75 + 2), 2 / 2.75])
    assert np.argmax(icl.calibrate(np.array([0.6, 0.4]), prior)) == 1  # less negative than the prior: positive
    assert icl.calibrate(np.array([0.3, 0.7]), np.array([0.5, 0.5])) == pytest.approx([0.3, 0.7])  # unbiased prompt
    assert icl.calibrate(prior, prior) == pytest.approx([0.5, 0.5])  # the prior itself becomes a coin


def test_the_common_prefix_stops_before_the_last_token():
    assert icl.common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert icl.common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # one prompt is the other's prefix
    assert icl.common_prefix_length([[7], [7]]) == 0


# ---- settings ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"seeds": 0}, "seeds must be between 1 and 10"), ({"formats": []}, "Choose at least one prompt format"),
    ({"formats": ["sonnet"]}, r"prompt format must be one of .*got \['sonnet'\]"),
    ({"label_set": "up / down"}, "label words must be one of"), ({"demo_labels": "mixed"}, "must be one of"),
])
def test_bad_lab_settings_are_refused(change, message):
    settings = {"n": 10, "shot_counts": "0, 1", "seed": 0, "seeds": 2, "formats": ["chat turns"],
                "label_set": "positive / negative", "demo_labels": "gold", **change}
    with pytest.raises(ValueError, match=message):
        icl.check_settings(**settings)


def test_an_uploaded_csv_needs_two_one_word_labels(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("text,label\n" + "".join(f"mail {i},{'spam' if i % 2 else 'ham'}\n" for i in range(12)))
    data = icl.uploaded_data(str(good))
    assert data.label_words == ("ham", "spam") and "as ham or spam" in data.instruction and len(data.rows) == 12
    three = tmp_path / "three.csv"
    three.write_text("text,label\n" + "".join(f"t {i},{'abc'[i % 3]}\n" for i in range(12)))
    with pytest.raises(ValueError, match="has 3 labels .*needs exactly two"):
        icl.uploaded_data(str(three))
    phrases = tmp_path / "phrases.csv"
    phrases.write_text("text,label\n" + "".join(f"t {i},{'very good' if i % 2 else 'bad'}\n" for i in range(12)))
    with pytest.raises(ValueError, match="must be single words"):
        icl.uploaded_data(str(phrases))
    with pytest.raises(ValueError, match="needs the columns text and label"):
        (tmp_path / "cols.csv").write_text("sentence,score\na,1\n")
        icl.uploaded_data(str(tmp_path / "cols.csv"))


# ---- the evaluation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_the_shared_prefix_path_predicts_exactly_what_whole_prompts_predict(request, backend):
    """The same predictions; the probabilities agree closely but not bit for bit: int8 ONNX Runtime quantizes
    activations with one scale per call, so a prefix run in its own call rounds a little differently."""
    chat = request.getfixturevalue(f"{backend}_chat")
    settings = icl.check_settings(4, "0, 2", 0, 1, ["chat turns", "one message", "plain text"])
    data = icl.movie_data()
    fast, examples, stopped = icl.evaluate_icl(chat, data, settings, reuse=True)
    plain, _, _ = icl.evaluate_icl(chat, data, settings, reuse=False)
    assert not stopped and len(fast) == 3 * 2 and set(examples) == set(icl.FORMATS)
    for a, b in zip(fast, plain):
        assert (a.format, a.seed, a.shots, a.n) == (b.format, b.seed, b.shots, 4)
        assert a.confusion == b.confusion and a.calibrated_predicted == b.calibrated_predicted
        assert a.prior == pytest.approx(b.prior, abs=0.01)
        assert a.label_probability_sum == pytest.approx(b.label_probability_sum, abs=0.01 * 4)


def test_the_cells_count_and_the_summary_pools_the_seeds(onnx_chat):
    settings = icl.check_settings(6, "0, 2", 5, 2, ["one message"], "yes / no", "flipped")
    cells, examples, _ = icl.evaluate_icl(onnx_chat, icl.movie_data("yes / no"), settings)
    assert [(c.seed, c.shots) for c in cells] == [(5, 0), (5, 2), (6, 0), (6, 2)]
    for cell in cells:
        assert cell.n == 6 and sum(map(sum, cell.confusion)) == 6 and sum(cell.calibrated_predicted) == 6
        assert cell.correct == cell.confusion[0][0] + cell.confusion[1][1]
        assert sum(cell.prior) == pytest.approx(1)
    assert "Output: yes" in examples["one message"] or "Output: no" in examples["one message"]
    run = icl.IclRun("m", "onnx-int8", settings, "movies", ("no", "yes"), cells, examples, False)
    rows = run.summary_rows()
    assert [(r["shots"], r["calibrated"]) for r in rows] == [(0, False), (2, False), (0, True), (2, True)]
    first = rows[0]
    zero_shot = [c for c in cells if c.shots == 0]
    assert first["accuracy"] == pytest.approx(np.mean([c.accuracy for c in zero_shot]))
    assert first["spread low"] == min(c.accuracy for c in zero_shot) and first["N"] == 12
    assert (first["CI low"], first["CI high"]) == icl.wilson_interval(sum(c.correct for c in zero_shot), 12)
    assert first["setting"] == "one message · yes/no · flipped labels" and rows[2]["setting"].endswith("calibrated")


def test_stop_ends_the_evaluation_between_prompts_keeping_what_was_scored(onnx_chat):
    stop = threading.Event()
    seen = []

    def progress(fraction: float, text: str) -> None:
        seen.append(text)
        if text.endswith("3/6"):
            stop.set()

    settings = icl.check_settings(6, "0, 1", 0, 1, ["chat turns"])
    cells, _, stopped = icl.evaluate_icl(onnx_chat, icl.movie_data(), settings, progress, stop)
    assert stopped and [c.n for c in cells] == [3] and seen[-1] == "chat turns, seed 0, 0-shot: 3/6"
