"""The prompting page in the running app, driven through gradio_client: reproducible generation, a Stop
that really ends `generate`, the explorer, and the in-context learning evaluation on a few sentences."""

from __future__ import annotations

import time

import pytest
from gradio_client.exceptions import AppError

from spaces.prompting import logic

MODEL = "local:smollm2-135m-instruct"
BACKEND = "auto"  # ONNX Runtime with int8 weights on this CPU
PRESET = logic.PRESETS["sentiment"]
LONG_QUERY = "Write a very long story about a dragon who learns to bake bread, with many chapters."
TABLE = {"headers": logic.EXAMPLE_COLUMNS, "data": PRESET["examples"]}


def generate_args(query=PRESET["query"], shots=2, mode="sampling", temperature=0.9, top_k=40, top_p=0.95,
                  max_new_tokens=8, repetition_penalty=1.0, seed=11, backend=BACKEND):
    return (MODEL, backend, PRESET["instruction"], TABLE, shots, query, mode, temperature, top_k, top_p,
            max_new_tokens, repetition_penalty, seed)


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_every_prompting_event_has_an_api_name_and_heavy_ones_share_the_group():
    import app

    demo = app.build_app(["prompting"])
    groups = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in demo.fns.values()
              if fn.api_name and fn.api_name.startswith("prompting_")}
    for name in ("prompting_generate", "prompting_explore", "prompting_step", "prompting_icl", "prompting_prompt"):
        assert groups[name] == ("heavy", 1), name
    for name in ("prompting_stop", "prompting_icl_stop", "prompting_preset"):
        assert groups[name][0] != "heavy" and groups[name][1] is None, name
    assert all(fn.api_name for fn in demo.fns.values())


def test_the_exact_prompt_is_shown_with_its_token_count(client):
    text, info = client.predict(MODEL, BACKEND, PRESET["instruction"], TABLE, 2, PRESET["query"], 64,
                                api_name="/prompting_prompt")
    assert text.endswith("<|im_start|>assistant\n") and text.count("<|im_start|>assistant") == 3
    assert "prompt tokens of a 8192-token context" in info and "chat template applied" in info


@pytest.mark.parametrize("backend, runs_on", [("auto", "ONNX Runtime, int8 weights"),
                                              ("onnx-fp32", "ONNX Runtime, float32"),
                                              ("pytorch", "PyTorch")])
def test_generation_with_a_fixed_seed_is_reproducible(client, backend, runs_on):
    first = client.predict(*generate_args(backend=backend), api_name="/prompting_generate")
    second = client.predict(*generate_args(backend=backend), api_name="/prompting_generate")
    prompt, _, text, stats, seed, python_code, client_code = first
    assert text and text == second[2] and seed == 11
    assert "new tokens after a" in stats and "first token after" in stats and f"Ran on {runs_on}" in stats
    assert "set_seed(11)" in python_code and "do_sample=True" in python_code and repr(prompt) in python_code
    assert 'api_name="/prompting_generate"' in client_code and f"{backend!r},  # runs on" in client_code


@pytest.mark.parametrize("how, backend", [("stop endpoint", "pytorch"), ("job.cancel", "pytorch"),
                                          ("stop endpoint", "auto"), ("job.cancel", "auto")])
def test_stop_really_ends_generate_within_a_second(client, how, backend):
    assert wait_for(lambda: logic.active_generations() == 0, 30)
    # A story at 512 new tokens, with a repetition penalty keeping it going: far longer than the wait below.
    args = generate_args(query=LONG_QUERY, shots=0, mode="greedy", max_new_tokens=logic.MAX_NEW_TOKENS_LIMIT,
                         repetition_penalty=1.3, backend=backend)
    job = client.submit(*args, api_name="/prompting_generate")
    assert wait_for(lambda: logic.active_generations() == 1, 120), "generation did not start"
    time.sleep(0.5)
    started = time.monotonic()
    if how == "stop endpoint":
        client.predict(api_name="/prompting_stop")
    else:
        job.cancel()
    assert wait_for(lambda: logic.active_generations() == 0, 5), "the generate thread still runs after Stop"
    assert time.monotonic() - started < 5
    if how == "stop endpoint":
        stats = job.result(timeout=30)[3]
        assert "Stopped by the Stop button" in stats


@pytest.mark.parametrize("args, message", [
    (generate_args(query="  "), "query is empty"),
    # The sliders refuse out-of-range values before the page sees them; the page's own check covers the rest.
    (generate_args(temperature=0), "less than minimum value 0.05"),
    (generate_args(top_p=1.5), "greater than maximum value 1"),
    (generate_args(seed=-4), "less than minimum value 0"),
])
def test_bad_input_gets_a_clear_message(client, args, message):
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/prompting_generate")


def test_a_path_typed_as_a_model_is_refused(client):
    args = ("../../etc",) + generate_args()[1:]
    with pytest.raises(AppError, match="is a path or URL"):
        client.predict(*args, api_name="/prompting_generate")


def test_explorer_shows_each_filter_and_steps_one_token(client):
    walk, survivors, *plots, table, walked = client.predict(MODEL, BACKEND, PRESET["instruction"], TABLE, 2,
                                                            PRESET["query"], 1.0, 5, 0.9, "",
                                                            api_name="/prompting_explore")
    assert len(plots) == 4 and walk == "" and walked == ""
    assert "top-k: **5**" in survivors and "model (T=1): **49,152**" in survivors
    bars = [{token: p for token, p in plot["data"]} for plot in plots]
    assert sum(p > 0 for p in bars[2].values()) == 5 and sum(p > 0 for p in bars[3].values()) <= 5
    rows = table["data"]
    assert len(rows) == logic.EXPLORER_TOP and [row[0] for row in rows] == list(range(1, logic.EXPLORER_TOP + 1))
    assert all(row[5] == 0 for row in rows[5:])  # top-k=5 cuts everything after rank 5
    # Greedy steps take rank 1 each time; the walk comes back as token ids to pass to the next step.
    walk, *_, walked = client.predict(MODEL, BACKEND, PRESET["instruction"], TABLE, 2, PRESET["query"], "greedy",
                                      1.0, 5, 0.9, 0, "", api_name="/prompting_step")
    assert walk == str(rows[0][2])
    walk, *_, walked = client.predict(MODEL, BACKEND, PRESET["instruction"], TABLE, 2, PRESET["query"], "greedy",
                                      1.0, 5, 0.9, 0, walk, api_name="/prompting_step")
    assert walk.startswith(f"{rows[0][2]},") and len(walk.split(",")) == 2 and walked.startswith("positive")


def test_in_context_learning_runs_on_a_few_sentences(client):
    plot, summary, confusion, status, recipe = client.predict(MODEL, BACKEND, 4, "0, 1", 0,
                                                              api_name="/prompting_icl")
    rows = summary["data"]
    assert [row[0] for row in rows] == [0, 1] and all(row[1] == 4 for row in rows)
    for shots, n, correct, accuracy, low, high in rows:
        assert 0 <= low <= accuracy <= high <= 1 and accuracy == pytest.approx(correct / n, abs=1e-3)
    assert len(confusion["data"]) == 4 and sum(r[2] + r[3] for r in confusion["data"]) == 8
    assert "N=4 balanced sentences, seed 0" in status
    assert len(plot["data"]) == 6  # accuracy and both interval ends for each k
    assert "'auto', 4, '0, 1', 0" in recipe and 'api_name="/prompting_icl"' in recipe


def test_in_context_learning_refuses_bad_settings(client):
    with pytest.raises(AppError, match="Shot counts must be between"):
        client.predict(MODEL, BACKEND, 4, "0, 40", 0, api_name="/prompting_icl")
    with pytest.raises(AppError, match="even number"):
        client.predict(MODEL, BACKEND, 5, "0", 0, api_name="/prompting_icl")
