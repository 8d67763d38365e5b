"""The prompting page's UI: `build()` returns its Blocks. Alone: `python -m spaces.prompting`.

Four parts on one prompt: the prompt builder, generation (streamed, timed, stoppable), the next-token
explorer (temperature, top-k and top-p side by side, one step at a time), and an in-context-learning lab on
labeled movie sentences (formats, label words, demonstration labels, seeds, calibration).

Handlers only turn widget values into calls of the page's modules and their results into widget values:
the checks live in those modules (ValueError -> gr.Error through @visitor_errors), and long work runs as
jobs (shared/jobs.py) that each Stop button ends for its visitor alone.
"""

from __future__ import annotations

import random

import gradio as gr
import pandas as pd

from shared import jobs
from shared.assets import SENTIMENT_CITATION
from shared.registry import choices
from shared.ui import HEAVY, LIGHT, PageInfo, gradio_progress, line_chart, session_key, table, visitor_errors
from spaces.prompting import explorer, generation, icl, models, prompts, recipes, sampling

PAGE = PageInfo(
    name="Prompting",
    path="prompting",
    teaches="What examples in a prompt do, and how greedy decoding, temperature, top-k and top-p pick the next token.",
    needs=("Offline: SmolLM2-135M-Instruct on the CPU (ONNX Runtime, int8 weights, by default). Any causal LM "
           "from the hub when online."),
)

INTRO = """# Transformer Playground · Prompting and decoding
Build a prompt from an instruction and labeled examples, then watch a real language model answer it.
**Examples** (shots) show the model what you want; **decoding settings** decide how it picks each next token.
Greedy always takes the most likely token; sampling draws one after *temperature* reshapes the distribution
and *top-k* / *top-p* cut its tail. The explorer shows each step, and the last section measures what examples
are worth on labeled data.
"""
BACKEND_INFO = ("ONNX Runtime runs Llama/Qwen2/Mistral-style models as one fused graph (converted once, ~15 s): "
                "on a CPU ~3x faster than PyTorch. int8 weights are a little less exact than float32.")
DEFAULT_PRESET = "sentiment"
DEFAULT_URL = "http://127.0.0.1:7860/"


def rows_of(examples) -> list[list]:
    """The examples table as rows, whether it arrives as a DataFrame, a list of rows or {"data": rows}."""
    if examples is None:
        return []
    if isinstance(examples, pd.DataFrame):
        return examples.values.tolist()
    if isinstance(examples, dict):
        return list(examples.get("data") or [])
    return [list(row) for row in examples]


def page_url(request: gr.Request | None) -> str:
    host = request.headers.get("host") if request is not None and request.headers else None
    return f"http://{host}/" if host else DEFAULT_URL


def settings_from(mode, temperature, top_k, top_p, max_new_tokens, repetition_penalty, seed
                  ) -> sampling.SamplingSettings:
    return sampling.SamplingSettings(mode, temperature, top_k, top_p, max_new_tokens, repetition_penalty,
                                     seed).checked()


def build_for(chat: models.ChatModel, instruction, examples, shots, query, max_new_tokens) -> prompts.BuiltPrompt:
    """The prompt for this model, warning the visitor about anything the builder had to change."""
    prompt = prompts.build_prompt(chat.tokenizer, instruction, rows_of(examples), shots, query, chat.context_length,
                                  max_new_tokens=int(max_new_tokens))
    if prompt.dropped:
        gr.Warning(f"The prompt was longer than the context: the {prompt.dropped} oldest example(s) were dropped.")
    if not prompt.chat:
        gr.Warning(f"{chat.source.label} has no chat template, so it gets a plain-text prompt "
                   "('Input: ... Output: ...' blocks) instead.")
    return prompt


# ---- prompt builder --------------------------------------------------------------------------------------


@visitor_errors
def apply_preset(preset: str):
    chosen = prompts.preset(preset)
    examples = chosen["examples"]
    return (chosen["instruction"], examples, chosen["query"],
            gr.Slider(maximum=len(examples), value=min(2, len(examples))))


@visitor_errors
def resize_shots(examples, shots):
    size = len(prompts.clean_examples(rows_of(examples)))
    return gr.Slider(maximum=max(size, 1), value=min(int(shots or 0), size))


@visitor_errors
def show_prompt(model, backend, instruction, examples, shots, query, max_new_tokens):
    chat = models.load_chat_model(model, backend=backend)
    prompt = build_for(chat, instruction, examples, shots, query, max_new_tokens)
    return prompt.text, prompt.summary


# ---- generation -------------------------------------------------------------------------------------------


@visitor_errors
def generate(model, backend, instruction, examples, shots, query, mode, temperature, top_k, top_p, max_new_tokens,
             repetition_penalty, seed, request: gr.Request = None, progress=gr.Progress()):
    settings = settings_from(mode, temperature, top_k, top_p, max_new_tokens, repetition_penalty, seed)
    gradio_progress(progress)(0.0, "loading the model (the first ONNX Runtime run converts it, once)")
    chat = models.load_chat_model(model, backend=backend)
    prompt = build_for(chat, instruction, examples, shots, query, settings.max_new_tokens)
    used = prompts.clean_examples(rows_of(examples))[int(shots) - prompt.shots:int(shots)] if prompt.shots else []
    recipe = recipes.python_recipe(chat.source.label, prompt, settings, chat.backend)
    call = recipes.generate_client_recipe(page_url(request), chat.source.label, backend, instruction, used,
                                          prompt.shots, query, settings)
    text, stats = "", generation.GenerationStats(prompt_tokens=len(prompt.ids))
    yield prompt.text, prompt.summary, text, stats.describe(), settings.seed, recipe, call
    for text, stats in generation.stream_generation(chat, prompt.ids, settings, key=session_key(request)):
        # Only the text and the stats change while streaming; skipping the rest keeps each update cheap.
        yield gr.skip(), gr.skip(), text, stats.describe(), gr.skip(), gr.skip(), gr.skip()
    # The last update carries every output, so an API caller's result is complete.
    yield prompt.text, prompt.summary, text, stats.describe(), settings.seed, recipe, call


def stop_generation(request: gr.Request = None) -> None:
    """Set this visitor's decoder's stop event: it ends at its next token (the button also cancels the event)."""
    jobs.stop(session_key(request), generation.GENERATE_JOB)


def new_seed() -> int:
    return random.randint(0, sampling.SEED_LIMIT)


# ---- next-token explorer -------------------------------------------------------------------------------


def stage_frames(exploration: explorer.Exploration) -> list[pd.DataFrame]:
    # Plain frames: returning gr.BarPlot(...) as an update leaves the chart empty in Gradio 6.
    frame = pd.DataFrame(exploration.long_table())
    return [frame[frame["stage"] == stage][["token", "probability"]].reset_index(drop=True)
            for stage in sampling.STAGES]


def survivors_line(exploration: explorer.Exploration) -> str:
    counts = " → ".join(f"{stage}: **{exploration.survivors[stage]:,}**" for stage in sampling.STAGES)
    return f"Tokens that can still be drawn after each stage: {counts}"


def walk_ids(text: str | None) -> list[int]:
    """The stepped token ids, kept in a hidden textbox as '12,345' (a gr.State would hold a heartbeat open)."""
    try:
        return [int(part) for part in (text or "").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"The walk must be token ids separated by commas, got {text!r}.") from None


def walk_text(chat: models.ChatModel, walk: list[int]) -> str:
    return chat.tokenizer.decode(walk) if walk else ""


def explorer_outputs(chat, prompt, walk, settings: sampling.SamplingSettings):
    logits = explorer.next_token_logits(chat, prompt.ids + list(walk))
    exploration = explorer.explore(chat.tokenizer, logits, settings.temperature, settings.top_k, settings.top_p)
    return [",".join(map(str, walk)), survivors_line(exploration), *stage_frames(exploration), exploration.rows,
            walk_text(chat, walk)]


@visitor_errors
def explore(model, backend, instruction, examples, shots, query, temperature, top_k, top_p, walk=""):
    settings = settings_from("sampling", temperature, top_k, top_p, 1, 1.0, 0)
    chat = models.load_chat_model(model, backend=backend)
    walk = walk_ids(walk)
    prompt = build_for(chat, instruction, examples, shots, query, 1 + len(walk))
    return explorer_outputs(chat, prompt, walk, settings)


def clear_walk():
    """A changed prompt starts a new walk: stepped tokens belonged to the old one."""
    return "", ""


def reset_walk(model, backend, instruction, examples, shots, query, temperature, top_k, top_p):
    return explore(model, backend, instruction, examples, shots, query, temperature, top_k, top_p, "")


@visitor_errors
def step(model, backend, instruction, examples, shots, query, mode, temperature, top_k, top_p, seed, walk):
    settings = settings_from(mode, temperature, top_k, top_p, 1, 1.0, seed)
    chat = models.load_chat_model(model, backend=backend)
    walk = walk_ids(walk)
    prompt = build_for(chat, instruction, examples, shots, query, 2 + len(walk))
    history = prompt.ids + walk
    walk.append(explorer.walk_step(explorer.next_token_logits(chat, history), settings, history, step=len(walk)))
    return explorer_outputs(chat, prompt, walk, settings)


# ---- in-context learning -------------------------------------------------------------------------------


SUMMARY_COLUMNS = ["setting", "shots", "seeds", "N", "accuracy", "lowest seed", "highest seed", "95% CI low",
                   "95% CI high"]
BIAS_COLUMNS = ["setting", "shots", "predicted positive", "mean P(positive word)",
                "label words' share of the vocabulary", "content-free P(positive word)"]
RUN_COLUMNS = ["run", *SUMMARY_COLUMNS]


def icl_charts(rows: list[dict]):
    """Accuracy against k and the share predicted positive against k, one line per setting. Error bars: the
    lowest and highest seed where a setting has several, the Wilson 95% interval where it has one."""
    if not rows:
        return None, None
    frame = pd.DataFrame(rows)
    several = frame["seeds"] > 1
    frame["low"] = frame["spread low"].where(several, frame["CI low"])
    frame["high"] = frame["spread high"].where(several, frame["CI high"])
    accuracy = line_chart(frame, "shots", "accuracy", color="line", low="low", high="high", y_domain=(0, 1))
    bias = line_chart(frame, "shots", "predicted positive", color="line", y_domain=(0, 1))
    # The settings' names are long: one per legend line, whole.
    return (accuracy.configure_legend(columns=1, labelLimit=600),
            bias.configure_legend(columns=1, labelLimit=600))


def summary_row(row: dict) -> list:
    return [row["setting"], row["shots"], row["seeds"], row["N"], round(row["accuracy"], 3),
            round(row["spread low"], 3), round(row["spread high"], 3), round(row["CI low"], 3),
            round(row["CI high"], 3)]


def bias_rows(run: icl.IclRun, rows: list[dict]) -> list[list]:
    positive = run.label_words[1]
    priors = {}
    for cell in run.cells:
        if cell.n:
            priors.setdefault((cell.format, cell.shots), []).append(cell.prior[1])
    # A calibrated row shows its own predictions and calibrated probabilities; the vocabulary share and the
    # content-free prior belong to the model before calibration, so they are shown on the uncalibrated row only.
    return [[row["setting"], row["shots"], round(row["predicted positive"], 3), round(row[f"P({positive})"], 3),
             "" if row["calibrated"] else round(row["label words' share of the vocabulary"], 3),
             "" if row["calibrated"] else
             round(float(sum(priors[(row["format"], row["shots"])]) / len(priors[(row["format"], row["shots"])])), 3)]
            for row in rows]


def prompts_markdown(run: icl.IclRun) -> str:
    parts = []
    for fmt, text in run.example_prompts.items():
        shots = max(run.settings.shot_counts)
        parts.append(f"**{fmt}** ({icl.FORMATS[fmt]}), {shots}-shot, the first test sentence of seed "
                     f"{run.settings.base_seed}:\n\n```text\n{text}\n```")
    return "\n\n".join(parts)


@visitor_errors
def measure_icl(model, backend, n_sentences, shot_counts, seed, seeds, formats, label_words, demo_labels,
                calibration, data_file, history, request: gr.Request = None, progress=gr.Progress()):
    settings = icl.check_settings(n_sentences, shot_counts, seed, seeds, formats, label_words, demo_labels)
    run = icl.measure_icl(model, backend, settings, data_file=data_file or None, progress=gradio_progress(progress),
                          key=session_key(request))
    rows = run.summary_rows(calibration=bool(calibration))
    number = 1 + max([entry["run"] for entry in history or []], default=0)
    history = [*(history or []), *({**row, "run": number, "line": f"{number}: {row['setting']}"} for row in rows)]
    accuracy, bias = icl_charts(history)
    recipe = recipes.icl_client_recipe(page_url(request), run.model_label, backend, settings, bool(calibration))
    return (accuracy, bias, [summary_row(row) for row in rows], bias_rows(run, rows),
            [[entry["run"], *summary_row(entry)] for entry in history], prompts_markdown(run), run.describe(),
            recipe, history)


def clear_icl_runs():
    return None, None, [], []


def stop_icl(request: gr.Request = None) -> None:
    """Set this visitor's evaluation's stop event: it ends before its next sentence, keeping what it scored."""
    jobs.stop(session_key(request), icl.ICL_JOB)


# ---- the page ------------------------------------------------------------------------------------------


def build() -> gr.Blocks:
    preset = prompts.PRESETS[DEFAULT_PRESET]
    model_choices = choices("chat-lm")
    with gr.Blocks(title="Transformer Playground: prompting") as page:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=True):
            model = gr.Dropdown(model_choices, value=model_choices[0] if model_choices else None, allow_custom_value=True, label="Model",
                                info="The chat-lm role's models; type a hub id when online. Paths are refused.")
            backend = gr.Dropdown([(label, key) for key, label in models.BACKENDS.items()], value="auto",
                                  label="Runs on", info=BACKEND_INFO)
        # 1. Prompt builder
        gr.Markdown("## 1. Build the prompt")
        with gr.Row(equal_height=True):
            preset_name = gr.Dropdown(list(prompts.PRESETS), value=DEFAULT_PRESET, label="Preset", scale=1)
            instruction = gr.Textbox(preset["instruction"], label="Task instruction", scale=4)
        examples = gr.Dataframe(preset["examples"], headers=prompts.EXAMPLE_COLUMNS, type="array", interactive=True,
                                label="Labeled examples (edit, add or delete rows)", column_count=2, wrap=True)
        with gr.Row(equal_height=True):
            shots = gr.Slider(0, len(preset["examples"]), value=2, step=1, label="Shots",
                              info="How many examples go into the prompt, oldest first.")
            query = gr.Textbox(preset["query"], label="Query", scale=3)
        show = gr.Button("Show the exact prompt")
        prompt_info = gr.Markdown()
        prompt_text = gr.Textbox(label="Exact prompt sent (with the chat template)", lines=8, max_lines=20,
                                 interactive=False, buttons=["copy"])

        # 2. Generation
        gr.Markdown("## 2. Generate")
        with gr.Row():
            mode = gr.Radio(list(sampling.MODES), value="greedy", label="Decoding",
                            info="Greedy ignores temperature, top-k and top-p.")
            temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature")
            top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k", info="0: no cut")
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.01, label="Top-p", info="1: no cut")
        with gr.Row():
            max_new_tokens = gr.Slider(1, sampling.MAX_NEW_TOKENS_LIMIT, value=64, step=1, label="Max new tokens")
            repetition_penalty = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
            seed = gr.Number(0, precision=0, minimum=0, maximum=sampling.SEED_LIMIT, label="Seed",
                             info="Same seed + settings = same text.")
            reseed = gr.Button("New seed", scale=0, min_width=100)
        with gr.Row():
            run = gr.Button("Generate", variant="primary")
            stop = gr.Button("Stop", variant="stop")
        output = gr.Textbox(label="Model output", lines=5, interactive=False)
        stats = gr.Markdown()
        seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
        with gr.Accordion("Recipe: reproduce this run", open=False):
            python_code = gr.Code(language="python", label="transformers", interactive=False)
            client_code = gr.Code(language="python", label="gradio_client", interactive=False)

        # 3. Next-token explorer
        gr.Markdown("## 3. Next-token explorer\nThe most likely next tokens for the prompt above (plus any tokens "
                    "you stepped), and what each sampling filter keeps. Cut tokens drop to 0; survivors are "
                    "renormalised. Uses the temperature, top-k, top-p, decoding and seed set above.")
        walk = gr.Textbox("", visible=False, label="Stepped token ids")
        with gr.Row():
            explore_button = gr.Button("Show the next-token distribution", variant="primary")
            step_button = gr.Button("Step: append one token")
            reset_button = gr.Button("Reset the walk")
        walked = gr.Textbox(label="Tokens stepped so far", interactive=False)
        survivors = gr.Markdown()
        with gr.Row():
            plots = [gr.BarPlot(x="token", y="probability", y_lim=[0, 1], sort="-y", label=stage, x_label_angle=-45,
                                height=260, elem_id=f"prompting-dist-{i}") for i, stage in enumerate(sampling.STAGES)]
        token_table = table(["rank", "token", "id", *sampling.STAGES], "Top next tokens")

        # 4. In-context learning, a lab
        gr.Markdown("## 4. In-context learning, a lab\nScore the model on N movie-review sentences (half positive, "
                    "half negative) with k demonstrations in the prompt, and find out what moves the accuracy: the "
                    "**prompt format**, the **label words**, the demonstrations' **labels** (true, flipped or "
                    "random; Min et al. 2022) and their **draw and order** (each seed draws its own, shared by every "
                    "test sentence). The answer is the label word the model finds more likely, not parsed text. "
                    "**Contextual calibration** (Zhao et al. 2021) asks the model about content-free inputs "
                    "(\"N/A\", \"\", \"[MASK]\") with the same prompt and divides that prior out; it may help or "
                    "hurt: the lab measures it. Every run of your session stays in the tables and plots below.\n\n"
                    f"<span class='playground-note'>Data: {SENTIMENT_CITATION}</span>")
        with gr.Row(equal_height=True):
            icl_n = gr.Number(40, precision=0, minimum=2, maximum=icl.ICL_MAX_EXAMPLES, label="N sentences")
            icl_shots = gr.Textbox("0, 1, 4", label="Shot counts k")
            icl_seed = gr.Number(0, precision=0, minimum=0, maximum=sampling.SEED_LIMIT, label="First seed")
            icl_seeds = gr.Number(3, precision=0, minimum=1, maximum=icl.ICL_MAX_SEEDS,
                                  label="Seeds (draws of demonstrations)")
        with gr.Row(equal_height=True):
            icl_formats = gr.CheckboxGroup(list(icl.FORMATS), value=["chat turns"], label="Prompt formats")
            icl_words = gr.Dropdown(list(icl.LABEL_SETS), value="positive / negative", label="Label words")
            icl_demo_labels = gr.Radio(list(icl.DEMO_LABELS), value="gold", label="Demonstrations' labels")
            icl_calibration = gr.Checkbox(True, label="Also show calibrated accuracy")
        with gr.Accordion("Your own data: a CSV with text and label columns, two labels (the label words)",
                          open=False):
            icl_file = gr.File(label="CSV (instead of the movie sentences)", file_types=[".csv"], type="filepath")
        with gr.Row():
            icl_run = gr.Button("Measure", variant="primary")
            icl_stop = gr.Button("Stop", variant="stop")
            icl_clear = gr.Button("Clear the session's runs")
        icl_status = gr.Markdown()
        icl_history = gr.State([])
        with gr.Row():
            icl_plot = gr.Plot(label="Accuracy against k, every run of the session (error bars: lowest to highest "
                                     "seed; the Wilson 95% interval with one seed)", elem_id="prompting-icl-plot")
            icl_bias_plot = gr.Plot(label="Label bias: the share predicted positive (the sentences are half positive: "
                                          "0.5 is unbiased)", elem_id="prompting-icl-bias")
        icl_summary = table(SUMMARY_COLUMNS, "This run: accuracy, mean over seeds, with their spread and the pooled "
                                             "Wilson 95% interval")
        icl_bias = table(BIAS_COLUMNS, "This run: label bias")
        icl_runs = table(RUN_COLUMNS, "Every run of the session")
        with gr.Accordion("The exact prompts", open=False):
            icl_prompts = gr.Markdown()
        with gr.Accordion("Recipe: reproduce this measurement", open=False):
            icl_code = gr.Code(language="python", label="gradio_client", interactive=False)

        # Events
        builder = [model, backend, instruction, examples, shots, query]
        filters = [temperature, top_k, top_p]
        preset_name.change(apply_preset, preset_name, [instruction, examples, query, shots],
                           api_name="prompting_preset", **LIGHT)
        examples.input(resize_shots, [examples, shots], shots, api_name="prompting_resize_shots", **LIGHT)
        show.click(show_prompt, [*builder, max_new_tokens], [prompt_text, prompt_info],
                   api_name="prompting_prompt", **HEAVY)
        generating = gr.on([run.click, query.submit], generate,
                           [*builder, mode, *filters, max_new_tokens, repetition_penalty, seed],
                           [prompt_text, prompt_info, output, stats, seed_used, python_code, client_code],
                           api_name="prompting_generate", **HEAVY)
        reseed.click(new_seed, None, seed, api_name="prompting_new_seed", **LIGHT)
        explored = [walk, survivors, *plots, token_table, walked]
        explore_button.click(explore, [*builder, *filters, walk], explored, api_name="prompting_explore", **HEAVY)
        step_button.click(step, [*builder, mode, *filters, seed, walk], explored, api_name="prompting_step", **HEAVY)
        gr.on([model.change, backend.change, instruction.change, examples.change, shots.change, query.change],
              clear_walk, None, [walk, walked], api_name="prompting_clear_walk", show_progress="hidden", **LIGHT)
        reset_button.click(reset_walk, [*builder, *filters], explored, api_name="prompting_reset", **HEAVY)
        measuring = icl_run.click(measure_icl, [model, backend, icl_n, icl_shots, icl_seed, icl_seeds, icl_formats,
                                                icl_words, icl_demo_labels, icl_calibration, icl_file, icl_history],
                                  [icl_plot, icl_bias_plot, icl_summary, icl_bias, icl_runs, icl_prompts, icl_status,
                                   icl_code, icl_history], api_name="prompting_icl", **HEAVY)
        icl_clear.click(clear_icl_runs, None, [icl_plot, icl_bias_plot, icl_runs, icl_history],
                        api_name="prompting_icl_clear", **LIGHT)
        # Stop: set this visitor's job's stop event (so the thread under the event ends too) and cancel the event.
        stop.click(stop_generation, None, None, cancels=[generating], api_name="prompting_stop", **LIGHT)
        icl_stop.click(stop_icl, None, None, cancels=[measuring], api_name="prompting_icl_stop", **LIGHT)
    return page
