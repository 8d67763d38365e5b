"""The prompting page in the running app, driven through gradio_client: named endpoint parameters and recipes
that call them, reproducible generation, a Stop that really ends this visitor's decoder job, the explorer,
and the in-context learning evaluation (its progress, its Stop) on a few sentences.

Waits here are hang guards only (a generous deadline, then fail); no assertion is about how long
something took. Jobs are counted for this client's session only (`jobs.active(..., key=client.session_hash)`).
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import io
import json
import re
import time
from collections.abc import Callable

import pytest
from gradio_client.exceptions import AppError

from shared import jobs
from spaces.prompting import explorer, generation, icl, models, prompts, sampling

MODEL = "local:smollm2-135m-instruct"
BACKEND = "auto"  # ONNX Runtime with int8 weights on this CPU
PRESET = prompts.PRESETS["sentiment"]
LONG_QUERY = "Write a very long story about a dragon who learns to bake bread, with many chapters."
TABLE = {"headers": prompts.EXAMPLE_COLUMNS, "data": PRESET["examples"]}
HANG_GUARD_S = 180.0  # only so that a broken Stop fails the test instead of hanging the suite
GENERATE_PARAMETERS = ["model", "backend", "instruction", "examples", "shots", "query", "mode", "temperature",
                       "top_k", "top_p", "max_new_tokens", "repetition_penalty", "seed"]
ICL_PARAMETERS = ["model", "backend", "n_sentences", "shot_counts", "seed", "seeds", "formats", "label_words",
                  "demo_labels", "calibration", "data_file"]


def builder_inputs(**changes) -> dict:
    """The prompt builder's inputs by name, as every prompting endpoint takes them."""
    return {"model": MODEL, "backend": BACKEND, "instruction": PRESET["instruction"], "examples": TABLE, "shots": 2,
            "query": PRESET["query"], **changes}


def generate_inputs(**changes) -> dict:
    settings = {"mode": "sampling", "temperature": 0.9, "top_k": 40, "top_p": 0.95, "max_new_tokens": 8,
                "repetition_penalty": 1.0, "seed": 11}
    builder = {k: changes.pop(k) for k in list(changes) if k not in settings}
    return {**builder_inputs(**builder), **settings, **changes}


def wait_for(condition: Callable[..., bool], *args) -> bool:
    """Poll `condition(*args)` until it holds or HANG_GUARD_S pass: a guard against hanging, not a measurement."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        if condition(*args):
            return True
        time.sleep(0.02)
    return condition(*args)


def jobs_running(name: str, key: str, count: int) -> bool:
    """Whether exactly `count` jobs called `name` run now for session `key` (other clients' jobs do not count)."""
    return jobs.active(name, key=key) == count


def record_jobs(monkeypatch) -> list[jobs.Job]:
    """The jobs that `jobs.running` starts from now on (it is otherwise unchanged), to read how each ended."""
    started: list[jobs.Job] = []
    running = jobs.running

    @contextlib.contextmanager
    def recorded(*args, **kwargs):
        with running(*args, **kwargs) as job:
            started.append(job)
            yield job

    monkeypatch.setattr(jobs, "running", recorded)
    return started


def endpoint_parameters(client) -> dict[str, list[str]]:
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    return {name: [p["parameter_name"] for p in endpoint["parameters"]] for name, endpoint in api.items()
            if name.startswith("/prompting_")}


def predict_keywords(recipe: str) -> list[str]:
    """The keyword names of the `client.predict(...)` call in a gradio_client recipe."""
    calls = [node for node in ast.walk(ast.parse(recipe))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "predict"]
    assert len(calls) == 1 and not calls[0].args, "the recipe passes every input by keyword"
    return [keyword.arg for keyword in calls[0].keywords if keyword.arg != "api_name"]


def run_recipe(recipe: str) -> str:
    """What a recipe prints when a visitor runs it."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(recipe, "recipe.py", "exec"), {})
    return printed.getvalue()


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


def test_every_endpoint_parameter_has_a_meaningful_name(client):
    parameters = endpoint_parameters(client)
    assert parameters["/prompting_generate"] == GENERATE_PARAMETERS
    assert parameters["/prompting_icl"] == ICL_PARAMETERS
    assert parameters["/prompting_step"][-2:] == ["seed", "walk"] and parameters["/prompting_preset"] == ["preset"]
    unnamed = {name: p for name, names in parameters.items() for p in names if re.fullmatch(r"param_\d+|", p)}
    assert not unnamed, unnamed


def test_the_exact_prompt_is_shown_with_its_token_count(client):
    text, info = client.predict(**builder_inputs(), max_new_tokens=64, api_name="/prompting_prompt")
    assert text.endswith("<|im_start|>assistant\n") and text.count("<|im_start|>assistant") == 3
    assert "prompt tokens of a 8192-token context" in info and "chat template applied" in info


@pytest.mark.parametrize("backend, runs_on", [("auto", "ONNX Runtime, int8 weights"),
                                              ("onnx-fp32", "ONNX Runtime, float32"),
                                              ("pytorch", "PyTorch")])
def test_generation_with_a_fixed_seed_is_reproducible(client, backend, runs_on):
    first = client.predict(**generate_inputs(backend=backend), api_name="/prompting_generate")
    second = client.predict(**generate_inputs(backend=backend), api_name="/prompting_generate")
    prompt, _, text, stats, seed, python_code, client_code = first
    assert text and text == second[2] and seed == 11
    assert "new tokens after a" in stats and "first token after" in stats and f"Ran on {runs_on}" in stats
    assert "set_seed(11)" in python_code and "do_sample=True" in python_code and repr(prompt) in python_code
    assert "api_name='/prompting_generate'" in client_code and f"backend={backend!r}," in client_code


def test_the_client_recipe_calls_the_endpoint_by_its_parameter_names_and_reproduces_the_text(client):
    *_, text, _, _, _, recipe = client.predict(**generate_inputs(), api_name="/prompting_generate")
    assert predict_keywords(recipe) == endpoint_parameters(client)["/prompting_generate"]
    assert run_recipe(recipe).endswith(text + "\n")  # the same seed and settings: the same text


@pytest.mark.parametrize("how, backend", [("stop endpoint", "pytorch"), ("job.cancel", "pytorch"),
                                          ("stop endpoint", "auto"), ("job.cancel", "auto")])
def test_stop_ends_this_visitors_decoder_job(own_client, how, backend, monkeypatch):
    client = own_client
    generating = (generation.GENERATE_JOB, client.session_hash)
    assert wait_for(jobs_running, *generating, 0), "an earlier generation of this client still runs"
    decoders = record_jobs(monkeypatch)
    # End-of-text switched off on the model the page runs (the cache's own object): a run that is not stopped
    # makes all `limit` tokens, so fewer means Stop ended it.
    limit = sampling.MAX_NEW_TOKENS_LIMIT
    chat = models.load_chat_model(MODEL, backend=backend)
    monkeypatch.setattr(chat.model.generation_config, "eos_token_id", None)
    inputs = generate_inputs(query=LONG_QUERY, shots=0, mode="greedy", max_new_tokens=limit, backend=backend)
    job = client.submit(**inputs, api_name="/prompting_generate")

    def first_token_streamed() -> bool:
        return any(isinstance(out[3], str) and "new tokens after a" in out[3] for out in job.outputs())

    assert wait_for(first_token_streamed), "no token was streamed"
    assert jobs_running(*generating, 1), "the decoder should run until it is stopped"
    if how == "stop endpoint":
        try:
            client.predict(api_name="/prompting_stop")
        except concurrent.futures.CancelledError:
            # The Stop's `cancels=` ends this session's streams, and gradio_client (one stream per session) can
            # lose the Stop's own reply with them (seen once in a fresh-clone run); what it did is checked below.
            pass
    else:
        job.cancel()  # what the Stop button's `cancels=` does: Gradio closes the streaming handler
    assert wait_for(jobs_running, *generating, 0), "the decoder job still runs after Stop"
    # It ended because it was stopped, not because it reached its last token while the guard waited.
    (decoder,) = decoders
    assert decoder.status == "stopped" and decoder.result < limit, (decoder.status, decoder.result)
    if how == "stop endpoint":
        stats = job.result(timeout=HANG_GUARD_S)[3]
        made = int(re.match(r"(\d+) new tokens", stats).group(1))
        assert generation.STOPPED_NOTE in stats and made < limit, stats


@pytest.mark.parametrize("changes, message", [
    ({"query": "  "}, "query is empty"),
    # The sliders refuse out-of-range values before the page sees them; the page's own check covers the rest.
    ({"temperature": 0}, "less than minimum value 0.05"),
    ({"top_p": 1.5}, "greater than maximum value 1"),
    ({"seed": -4}, "less than minimum value 0"),
    ({"mode": "beam"}, "not in the list of choices"),
    ({"model": "../../etc"}, "is a path or URL"),
])
def test_bad_input_gets_a_clear_message(client, changes, message):
    with pytest.raises(AppError, match=message):
        client.predict(**generate_inputs(**changes), api_name="/prompting_generate")


def test_explorer_shows_each_filter_and_steps_one_token(client):
    filters = {"temperature": 1.0, "top_k": 5, "top_p": 0.9}
    walk, survivors, *plots, table, walked = client.predict(**builder_inputs(), **filters, walk="",
                                                            api_name="/prompting_explore")
    assert len(plots) == 4 and walk == "" and walked == ""
    assert "top-k: **5**" in survivors and "model (T=1): **49,152**" in survivors
    bars = [{token: p for token, p in plot["data"]} for plot in plots]
    assert sum(p > 0 for p in bars[2].values()) == 5 and sum(p > 0 for p in bars[3].values()) <= 5
    rows = table["data"]
    assert len(rows) == explorer.EXPLORER_TOP and [row[0] for row in rows] == list(range(1, explorer.EXPLORER_TOP + 1))
    assert all(row[5] == 0 for row in rows[5:])  # top-k=5 cuts everything after rank 5
    # Greedy steps take rank 1 each time; the walk comes back as token ids to pass to the next step.
    walk, *_, walked = client.predict(**builder_inputs(), mode="greedy", **filters, seed=0, walk="",
                                      api_name="/prompting_step")
    assert walk == str(rows[0][2])
    walk, *_, walked = client.predict(**builder_inputs(), mode="greedy", **filters, seed=0, walk=walk,
                                      api_name="/prompting_step")
    assert walk.startswith(f"{rows[0][2]},") and len(walk.split(",")) == 2 and walked.startswith("positive")


def test_a_sampled_walk_replays_with_the_same_seed(client):
    step = {**builder_inputs(), "mode": "sampling", "temperature": 1.5, "top_k": 0, "top_p": 1.0, "seed": 5}
    walks = []
    for _ in range(2):
        walk = ""
        for _ in range(3):
            walk, *_ = client.predict(**step, walk=walk, api_name="/prompting_step")
        walks.append(walk)
    assert len(walks[0].split(",")) == 3 and walks[0] == walks[1]


def chart_rows(plot: dict) -> list[dict]:
    """The data rows of an Altair chart as gr.Plot sends it."""
    spec = json.loads(plot["plot"])
    (rows,) = spec["datasets"].values()
    return rows


LAB = {"seeds": 2, "label_words": "positive / negative", "demo_labels": "gold", "calibration": True,
       "data_file": None}


def test_a_two_format_comparison_returns_both_and_keeps_every_run(own_client):
    """Two formats, two seeds, k = 0 and 1 on 4 sentences: a row per format, k and calibration; a second run
    joins the session's table and plot. (A client of its own: the session's runs are its state.)"""
    client = own_client
    accuracy, bias, summary, shares, runs, prompts_text, status, recipe = client.predict(
        model=MODEL, backend=BACKEND, n_sentences=4, shot_counts="0, 1", seed=0,
        formats=["chat turns", "plain text"], **LAB, api_name="/prompting_icl")
    rows = summary["data"]
    assert [(row[0], row[1]) for row in rows] == [
        ("chat turns · positive/negative", 0), ("chat turns · positive/negative", 1),
        ("plain text · positive/negative", 0), ("plain text · positive/negative", 1),
        ("chat turns · positive/negative · calibrated", 0), ("chat turns · positive/negative · calibrated", 1),
        ("plain text · positive/negative · calibrated", 0), ("plain text · positive/negative · calibrated", 1)]
    for setting, shots, seeds, n, mean, lowest, highest, low, high in rows:
        assert seeds == 2 and n == 8 and lowest <= mean <= highest and 0 <= low <= high <= 1
    assert [row[0] for row in shares["data"]] == [row[0] for row in rows]
    assert all(0 <= row[2] <= 1 for row in shares["data"])  # the share predicted positive
    assert "**chat turns**" in prompts_text and "**plain text**" in prompts_text and "<|im_start|>" in prompts_text
    assert "N=4 balanced, 2 seed(s) from 0" in status and "prompts/s" in status
    points = chart_rows(accuracy)
    assert {p["line"] for p in points} == {f"1: {row[0]}" for row in rows}
    assert all(p["low"] <= p["accuracy"] <= p["high"] for p in points) and '"errorbar"' in accuracy["plot"]
    assert {p["line"] for p in chart_rows(bias)} == {p["line"] for p in points}
    assert predict_keywords(recipe) == endpoint_parameters(client)["/prompting_icl"]
    assert "formats=['chat turns', 'plain text']," in recipe
    # A second run of the session: its rows join the first run's in the table and the plot.
    *_, runs, _, _, _ = client.predict(model=MODEL, backend=BACKEND, n_sentences=4, shot_counts="0", seed=0,
                                       formats=["one message"], **{**LAB, "calibration": False},
                                       api_name="/prompting_icl")
    assert [row[0] for row in runs["data"]] == [1] * 8 + [2]
    assert runs["data"][-1][1] == "one message · positive/negative"


def test_an_uploaded_csv_is_evaluated_with_its_own_label_words(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "mail.csv"
    path.write_text("text,label\n" + "".join(
        f"{'WIN A FREE PRIZE NOW' if i % 2 else 'Lunch at noon with the team'} {i},{'spam' if i % 2 else 'ham'}\n"
        for i in range(16)))
    *_, summary, shares, _, prompts_text, status, _ = client.predict(
        model=MODEL, backend=BACKEND, n_sentences=4, shot_counts="0, 2", seed=0, formats=["one message"],
        **{**LAB, "seeds": 1, "data_file": handle_file(str(path))}, api_name="/prompting_icl")
    assert [row[0] for row in summary["data"]][:2] == ["one message · spam/ham"] * 2
    assert "mail.csv (16 rows)" in status and "Classify the text as ham or spam." in prompts_text
    assert "Output: spam" in prompts_text or "Output: ham" in prompts_text


def test_a_csv_with_three_labels_is_refused(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "three.csv"
    path.write_text("text,label\n" + "".join(f"t {i},{'abc'[i % 3]}\n" for i in range(12)))
    with pytest.raises(AppError, match="needs exactly two"):
        client.predict(model=MODEL, backend=BACKEND, n_sentences=4, shot_counts="0", seed=0,
                       formats=["chat turns"], **{**LAB, "data_file": handle_file(str(path))},
                       api_name="/prompting_icl")


@pytest.mark.parametrize("inputs, message", [
    ({"n_sentences": 4, "shot_counts": "0, 40", "seed": 0}, r"Shot counts must be whole numbers between 0 and 16"),
    ({"n_sentences": 5, "shot_counts": "0", "seed": 0}, "N must be an even number"),
    ({"n_sentences": 4, "shot_counts": "one", "seed": 0}, "Shot counts are whole numbers separated by commas"),
    ({"n_sentences": 4, "shot_counts": "0", "seed": 0, "formats": []}, "Choose at least one prompt format"),
])
def test_in_context_learning_refuses_bad_settings(client, inputs, message):
    with pytest.raises(AppError, match=message):
        client.predict(model=MODEL, backend=BACKEND, **{"formats": ["chat turns"], **LAB, **inputs},
                       api_name="/prompting_icl")


def test_the_evaluation_reports_progress_and_its_stop_keeps_partial_results(own_client, monkeypatch):
    """The evaluation runs in a job's thread; its progress must still reach the visitor's progress bar, and the
    Stop endpoint must end the job, keeping the sentences scored so far."""
    from gradio.queueing import Queue

    client = own_client

    reported: list[str] = []
    set_progress = Queue.set_progress

    def record(queue, event_id, iterables):
        reported.extend(unit.desc for unit in iterables or [] if unit.desc)
        return set_progress(queue, event_id, iterables)

    monkeypatch.setattr(Queue, "set_progress", record)
    evaluating = (icl.ICL_JOB, client.session_hash)
    evaluations = record_jobs(monkeypatch)
    n = icl.ICL_MAX_EXAMPLES  # far more sentences than are scored before the Stop below
    job = client.submit(model=MODEL, backend=BACKEND, n_sentences=n, shot_counts="0, 4, 16", seed=0,
                        formats=["chat turns"], **{**LAB, "seeds": 1}, api_name="/prompting_icl")

    def first_sentence_scored() -> bool:
        return any(text.startswith("chat turns, seed 0, 0-shot: ") for text in reported)

    assert wait_for(first_sentence_scored), f"no progress from the evaluation's job: {reported}"
    assert jobs_running(*evaluating, 1)
    client.predict(api_name="/prompting_icl_stop")
    assert wait_for(jobs_running, *evaluating, 0), "the evaluation job still runs after Stop"
    assert [(job.name, job.status) for job in evaluations] == [(icl.ICL_JOB, "stopped")]
    _, _, summary, _, _, _, status, _ = job.result(timeout=HANG_GUARD_S)
    assert status.startswith("Stopped early; partial results.")
    assert [row[1] for row in summary["data"]] == [0, 0] and 0 < summary["data"][0][3] < n  # before and calibrated
