"""The quantization page's UI: `build()` returns its Blocks. Alone: `python -m spaces.quantization`.

Three parts: compare the variants of one model (a sentence classifier or a causal LM) measured side by side on
this machine, each in a process of its own (spaces/quantization/runner.py); the number formats, with the rounding
error of the model's own weights; the memory calculator (training and serving memory, arithmetic with formulas).
"""

from __future__ import annotations

import threading

import gradio as gr
import pandas as pd

from shared import jobs
from shared.checks import check_range
from shared.registry import choices, resolve
from shared.ui import HEAVY, LIGHT, PageInfo, gradio_progress, session_key, table, visitor_errors
from spaces.quantization import formats, memory, report, runner
from spaces.quantization.common import cpu_summary, format_note

PAGE = PageInfo(
    name="Quantization",
    path="quantization",
    teaches="One model in fp32, bf16, fp16, int8 and int4, in PyTorch, torchao and ONNX Runtime, measured side by "
            "side on your machine: speed, size, memory, and the quality each one costs; plus the number formats "
            "and a memory calculator.",
    needs="Offline: SmolLM2-135M-Instruct and a MiniLM classifier fine-tuned here (about 3 minutes the first "
          "time). Online: any hub classifier or causal LM. CPU; bitsandbytes variants need a GPU.",
)
INTRO = """# Quantization
Storing a model's numbers in fewer bits makes it smaller and often faster, and costs some quality. How much of
each depends on the model, the runtime and **your hardware**, so this page measures them here, side by side, in
one run: every variant is built (once; builds are kept), timed with warm-up and repeats at batch 1 and in a batch,
and scored against the fp32 original. Each variant runs in a process of its own, so its peak memory is its own
and one that fails leaves the others running. Speeds are shown as ratios to fp32 measured in the same run.
"""
COMPARE_JOB = "quantization-compare"
FAMILY_LABELS = {"Sentence classifier": "classifier", "Causal LM": "lm"}
DEFAULT_CLASSIFIER = "default: MiniLM fine-tuned on the movie sentences here"
STOP_WAIT_SECONDS = 30.0
FORMAT_MODELS = {"SmolLM2 (chat LM)": "chat-lm", "MiniLM (encoder)": "encoder"}
MAX_SETTINGS = {"test_size": 1060, "other_domain_size": 1000, "repeats": 200, "text_tokens": 1024,
                "new_tokens": 128}


def cpu_markdown() -> str:
    summary = cpu_summary()
    units = ", ".join(f"{name} **{value}**" for name, value in summary.items() if name != "cores")
    notes = [note for p in ("bf16", "fp16", "int8") if (note := format_note(p))]
    lines = [f"**This machine**: {summary['cores']} cores; {units}."] + [f"- {p}" for p in notes]
    return "\n".join(lines)


# ---- 1. compare variants -------------------------------------------------------------------------------------


def check_family(label: str) -> str:
    if label not in FAMILY_LABELS:
        raise ValueError(f"Choose a model family: {', '.join(FAMILY_LABELS)}; got {label!r}.")
    return FAMILY_LABELS[label]


def variant_choices(family_name: str) -> list[tuple[str, str]]:
    return [(v.title + (" (needs a GPU)" if v.needs == "gpu" else ""), v.name)
            for v in runner.family(family_name).VARIANTS]


def default_variants(family_name: str) -> list[str]:
    return [v.name for v in runner.family(family_name).VARIANTS if v.needs != "gpu"]


def model_choices(family_name: str) -> list[str]:
    if family_name == "classifier":
        return [DEFAULT_CLASSIFIER, *choices("classifier")]
    return choices("chat-lm")


def default_model(family_name: str) -> str:
    if family_name == "classifier":
        return DEFAULT_CLASSIFIER
    try:
        return resolve("chat-lm").label
    except ValueError:
        return ""


def refresh_models(family_label: str):
    """The model list as it is now (a classifier saved on the fine-tuning page since the app started)."""
    return gr.update(choices=model_choices(check_family(family_label)))


def switch_family(family_label: str):
    """The model list, the variants and the settings that belong to the chosen family."""
    family_name = check_family(family_label)
    is_lm = family_name == "lm"
    return (gr.update(choices=model_choices(family_name), value=default_model(family_name)),
            gr.update(choices=variant_choices(family_name), value=default_variants(family_name)),
            gr.update(visible=not is_lm), gr.update(visible=is_lm))


def comparison_params(family_name: str, test_size, other_domain_size, repeats, text_tokens, new_tokens,
                      prompt) -> dict:
    check_range("repeats", repeats, 3, MAX_SETTINGS["repeats"], whole=True)
    if family_name == "classifier":
        check_range("test sentences", test_size, 10, MAX_SETTINGS["test_size"], whole=True)
        check_range("out-of-domain sentences per set", other_domain_size, 0, MAX_SETTINGS["other_domain_size"],
                    whole=True)
        return {"test_size": int(test_size), "other_domain_size": int(other_domain_size), "repeats": int(repeats)}
    check_range("quality text tokens", text_tokens, 16, MAX_SETTINGS["text_tokens"], whole=True)
    check_range("new tokens", new_tokens, 4, MAX_SETTINGS["new_tokens"], whole=True)
    prompt = (prompt or "").strip()
    if not prompt:
        raise ValueError("Type the prompt whose greedy output each variant shows.")
    if len(prompt) > 2000:
        raise ValueError(f"The prompt is {len(prompt)} characters; keep it under 2000.")
    return {"text_tokens": int(text_tokens), "new_tokens": int(new_tokens), "prompt": prompt,
            "repeats": int(repeats)}


def pick_source(family_name: str, model: str, progress, stop: threading.Event):
    """The model to compare: the visitor's choice through the registry (a hub id or a local: label, never a
    path), or for the classifier default, the MiniLM the fine-tuning page's default run makes (trained once)."""
    model = (model or "").strip()
    if family_name == "classifier":
        if not model or model == DEFAULT_CLASSIFIER:
            from spaces.quantization.student import default_classifier

            return default_classifier(progress, stop)
        return resolve("classifier", model)
    return resolve("chat-lm", model or None)


def comparison_outputs(family_name: str, rows: list[runner.Row], status: str):
    module = runner.family(family_name)
    quality, direction = module.QUALITY
    frame = report.results_frame(rows, module.REFERENCE)
    texts = report.outputs_frame(rows)
    return (status, report.rounded(frame), report.scatter_chart(frame, quality, direction == "higher"),
            report.bar_charts(frame), gr.update(value=texts, visible=not texts.empty))


def status_line(label: str, rows: list[runner.Row], total: int, finished: bool) -> str:
    counts = {s: sum(r.status == s for r in rows) for s in runner.STATUSES}
    done = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    head = f"**{label}**: {len(rows)} of {total} variants ({done or 'none yet'})"
    if not finished:
        return head + ", measuring…"
    problems = [f"- **{r.title}** {r.status}: {r.reason}" for r in rows if r.status in ("failed", "unavailable")]
    return "\n".join([head + ".", *problems])


@visitor_errors
def compare_variants(family_label, model, variants, test_size, other_domain_size, repeats, text_tokens, new_tokens,
                     prompt, fresh, request: gr.Request = None, progress=gr.Progress()):
    """Measure the chosen variants one after another, showing each row as soon as it is known."""
    # 1. Check the inputs before any work.
    family_name = check_family(family_label)
    params = comparison_params(family_name, test_size, other_domain_size, repeats, text_tokens, new_tokens, prompt)
    order = runner.check_variants(family_name, list(variants or []))
    rows: list[runner.Row] = []
    chosen = {"label": model or default_model(family_name)}
    report_progress = gradio_progress(progress)

    # 2. The work, in a job the Stop button ends: the source (trained once for the default), then the variants.
    def work(stop: threading.Event) -> None:
        source = pick_source(family_name, model, report_progress, stop)
        chosen["label"] = source.label
        for row in runner.compare(family_name, order, {**params, "source": source.location, "label": source.label},
                                  report_progress, stop, use_cache=not fresh):
            rows.append(row)

    # 3. Stream the table and charts as rows arrive.
    with jobs.running(work, name=COMPARE_JOB, key=session_key(request)) as job:
        shown = -1
        while True:
            finished = job.join(0.5)
            if len(rows) != shown:
                shown = len(rows)
                yield comparison_outputs(family_name, rows, status_line(chosen["label"], rows, len(order), False))
            if finished and shown == len(rows):
                break
    yield comparison_outputs(family_name, rows, status_line(chosen["label"], rows, len(order), True))


def stop_comparison(request: gr.Request = None) -> str:
    """Stop this visitor's comparison: the variant being measured has its process ended."""
    key = session_key(request)
    stopped = jobs.stop(key, COMPARE_JOB)
    for _ in range(int(STOP_WAIT_SECONDS / 0.1)):
        if not jobs.active(COMPARE_JOB, key):
            break
        threading.Event().wait(0.1)
    return "Stopped: the variant being measured was ended; rows already measured are kept." if stopped else \
        "Nothing was running."


@visitor_errors
def forget_results(family_label):
    removed = runner.forget_results(check_family(family_label))
    return f"Forgot {removed} kept result(s): the next comparison measures again (builds are kept)."


# ---- 2. number formats ---------------------------------------------------------------------------------------


def format_table() -> pd.DataFrame:
    frame = pd.DataFrame(formats.format_rows())
    for column in ("largest", "smallest normal", "precision"):
        frame[column] = frame[column].map(lambda v: f"{v:.4g}")
    return frame


def load_weights(model_label: str):
    from shared.cache import LoadSpec, get_cache

    if model_label not in FORMAT_MODELS:
        raise ValueError(f"Choose one of {list(FORMAT_MODELS)}, got {model_label!r}.")
    role = FORMAT_MODELS[model_label]
    source = resolve(role)
    kind = "causal-lm" if role == "chat-lm" else "encoder"
    return get_cache().get(LoadSpec(kind, source.location, dtype="float32", device="cpu", label=source.label))


def matrix_names(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.ndim == 2]


def preferred_matrix(names: list[str]) -> str | None:
    """The first layer's first matrix (attention's query projection), a typical weight matrix."""
    return next((n for n in names if "layers.0." in n or "layer.0." in n), names[0] if names else None)


@visitor_errors
def list_matrices(model_label, progress=gr.Progress()):
    names = matrix_names(load_weights(model_label))
    return gr.update(choices=names, value=preferred_matrix(names))


def error_histogram(weight) -> pd.DataFrame:
    """Per format, the share of weights whose rounding error falls in each decade-fraction bin (log10 scale)."""
    import numpy as np

    edges = np.linspace(-12, 0, 49)
    records = []
    for name in formats.FORMATS:
        if name == "fp32":
            continue
        errors = formats.rounding_errors(weight, name)
        exact = float((errors == 0).mean())
        logs = np.log10(errors[errors > 0])
        counts, _ = np.histogram(np.clip(logs, edges[0], edges[-1]), bins=edges)
        for left, count in zip(edges[:-1], counts):
            records.append({"format": name, "log10 |error|": float(left + (edges[1] - edges[0]) / 2),
                            "share of weights": float(count) / max(1, errors.size)})
        records.append({"format": name, "log10 |error|": -12.5, "share of weights": exact})  # exact: drawn at the left
    return pd.DataFrame(records)


@visitor_errors
def show_rounding(model_label, matrix_name):
    import altair as alt

    model = load_weights(model_label)
    parameters = dict(model.named_parameters())
    names = matrix_names(model)
    matrix_name = (matrix_name or "").strip() or preferred_matrix(names)  # none chosen yet: the first layer's
    if matrix_name not in names:
        raise ValueError(f"{matrix_name!r} is not a weight matrix of {model_label}; choose one from the list.")
    weight = parameters[matrix_name].detach().float().cpu().numpy()
    histogram = error_histogram(weight)
    chart = alt.Chart(histogram).mark_line(point=True).encode(
        x=alt.X(field="log10 |error|", type="quantitative",
                title="log10 |weight - stored weight| (left edge: stored exactly)"),
        y=alt.Y(field="share of weights", type="quantitative", axis=alt.Axis(format="%")),
        color=alt.Color(field="format", type="nominal", legend=alt.Legend(orient="bottom")),
        tooltip=["format", alt.Tooltip(field="log10 |error|", type="quantitative", format=".2f"),
                 alt.Tooltip(field="share of weights", type="quantitative", format=".2%")],
    ).properties(height=280, width="container", title=f"Rounding error of {matrix_name} ({weight.shape[0]}×"
                                                       f"{weight.shape[1]} weights)")
    summary = pd.DataFrame(formats.error_summary(weight))
    return gr.update(choices=names, value=matrix_name), chart, report.rounded(summary)


# ---- 3. memory calculator ------------------------------------------------------------------------------------


@visitor_errors
def calculate_memory(model_text, precision, batch, sequence, gpus):
    import altair as alt

    check_range("micro-batch", batch, 1, 4096, whole=True)
    check_range("sequence length", sequence, 1, 1_048_576, whole=True)
    check_range("GPUs", gpus, 1, 100_000, whole=True)
    size = memory.model_size(model_text)
    plan = memory.training_memory(size, precision, int(batch), int(sequence))
    weights = pd.DataFrame(memory.weights_table(size))
    parts = [{"part": name, "GiB": value / memory.GIB} for name, value in plan.parts.items()]
    if plan.activations is not None:
        parts.append({"part": f"activations (batch {plan.batch}, sequence {plan.sequence})",
                      "GiB": plan.activations / memory.GIB})
    parts_frame = pd.DataFrame(parts)
    per_gpu = pd.DataFrame(memory.per_gpu(plan, int(gpus)))
    chart = alt.Chart(per_gpu.melt(id_vars=["strategy"], value_vars=["GPU GiB", "host GiB"], var_name="where",
                                   value_name="GiB")).mark_bar().encode(
        y=alt.Y(field="strategy", type="nominal", title=None, axis=alt.Axis(labelLimit=220)),
        x=alt.X(field="GiB", type="quantitative", title=f"GiB per GPU, {int(gpus)} GPU(s) (estimate)"),
        color=alt.Color(field="where", type="nominal", legend=alt.Legend(orient="bottom")),
        yOffset=alt.YOffset(field="where", type="nominal"),
        tooltip=["strategy", "where", alt.Tooltip(field="GiB", type="quantitative", format=".3g")],
    ).properties(height=200, width="container")
    architecture = (f"{size.layers} layers, hidden {size.hidden}, {size.heads} heads" if size.layers
                    else "architecture unknown (a bare count): activations are left out")
    headline = (f"**{size.name}**: {size.parameters:,} parameters ({architecture}). Training with Adam "
                f"({precision}) on one device: **{plan.model_states / memory.GIB:.1f} GiB** of weights, gradients "
                f"and optimizer states" + (f" + **{plan.activations / memory.GIB:.1f} GiB** of activations"
                                          if plan.activations is not None else "") +
                ". Estimates: real frameworks add buffers, fragmentation and a CUDA context (0.5-1 GiB a GPU).")
    return headline, report.rounded(weights), report.rounded(parts_frame), report.rounded(per_gpu), chart


# ---- the page ------------------------------------------------------------------------------------------------


def build() -> gr.Blocks:
    family_name = "classifier"
    with gr.Blocks(title="Quantization") as page:
        gr.Markdown(INTRO)
        gr.Markdown(cpu_markdown(), elem_classes="playground-note")
        with gr.Tab("1. Compare variants"):
            with gr.Row():
                with gr.Column(scale=1):
                    family = gr.Radio(list(FAMILY_LABELS), value="Sentence classifier", label="Model family")
                    model = gr.Dropdown(model_choices(family_name), value=default_model(family_name),
                                        allow_custom_value=True, label="Model",
                                        info="A saved local: model, or a hub id when online. Paths are refused.")
                    variants = gr.CheckboxGroup(variant_choices(family_name), value=default_variants(family_name),
                                                label="Variants (fp32 PyTorch is always measured: the reference)")
                    with gr.Group(visible=True) as classifier_settings:
                        with gr.Row():
                            test_size = gr.Number(500, label="Held-out movie sentences", precision=0)
                            other_domain_size = gr.Number(100, label="Tweets / Amazon / NYT, each", precision=0)
                    with gr.Group(visible=False) as lm_settings:
                        with gr.Row():
                            text_tokens = gr.Number(256, label="Quality text, tokens", precision=0)
                            new_tokens = gr.Number(32, label="Greedy tokens", precision=0)
                        prompt = gr.Textbox("What is the capital of France? Answer in one sentence.",
                                            label="Prompt (greedy output shown per variant)", lines=2)
                    with gr.Row():
                        repeats = gr.Number(30, label="Timed runs at batch 1", precision=0)
                        fresh = gr.Checkbox(False, label="Measure again (ignore kept results)")
                    with gr.Row():
                        compare_button = gr.Button("Compare", variant="primary")
                        stop_button = gr.Button("Stop", variant="stop")
                    forget_button = gr.Button("Forget kept results", size="sm")
                with gr.Column(scale=2):
                    status = gr.Markdown("Choose variants and press **Compare**. Builds and results are kept: a "
                                         "second visit shows them at once.")
                    scatter = gr.Plot(label="Latency against quality", elem_id="quantization-scatter")
                    bars = gr.Plot(label="Speed, size and memory", elem_id="quantization-bars")
            results = table(["variant", "status", "p50 ms", "speed × fp32"],
                            "Measurements (latency at batch 1; speed as a multiple of fp32 in this run)",
                            elem_id="quantization-results")
            greedy = table(["variant", "greedy output"], "The same prompt, greedy, under each variant",
                           visible=False)
        with gr.Tab("2. Number formats"):
            gr.Markdown("Floating-point formats keep a *relative* precision: the step between neighbouring values "
                        "grows with the value, and bf16 trades fp16's precision for fp32's range. Integer formats "
                        "keep an *absolute* step: the row's largest weight ÷ 127 (int8) or ÷ 7 (int4), so small "
                        "weights beside a large one lose the most. Pick a weight matrix of a model to see it.")
            formats_table = table(["format", "bits", "largest", "smallest normal", "precision", "kind"],
                                  "The formats")
            with gr.Row():
                format_model = gr.Radio(list(FORMAT_MODELS), value=list(FORMAT_MODELS)[0], label="Model")
                matrix = gr.Dropdown([], label="Weight matrix", allow_custom_value=True)
                rounding_button = gr.Button("Show rounding error")
            rounding_plot = gr.Plot(label="Rounding error per format")
            rounding_table = table(["format", "mean |error|", "max |error|", "mean |error| / mean |weight|"],
                                   "Rounding error of the matrix, per format")
        with gr.Tab("3. Memory calculator"):
            gr.Markdown("Arithmetic, not a measurement: how much memory a model needs to serve and to train, for "
                        "a parameter count or a model's configuration (no weights are downloaded).")
            with gr.Row():
                memory_model = gr.Textbox("7B", label="Parameters (7B, 135M) or a model id / local: label")
                precision = gr.Radio(["mixed", "fp32"], value="mixed", label="Training precision")
                batch = gr.Number(1, label="Micro-batch per GPU", precision=0)
                sequence = gr.Number(2048, label="Sequence length", precision=0)
                gpus = gr.Number(8, label="GPUs", precision=0)
            memory_button = gr.Button("Calculate", variant="primary")
            memory_headline = gr.Markdown()
            with gr.Row():
                weights_table = table(["format", "bytes per parameter", "GiB"], "Weights to serve, per format")
                parts_table = table(["part", "GiB"], "Training on one device")
            per_gpu_plot = gr.Plot(label="Per GPU")
            per_gpu_table = table(["strategy", "GPU GiB", "host GiB", "activations known"],
                                  "Per GPU: DDP vs FSDP")
            gr.Markdown("**Formulas**\n\n" + memory.FORMULAS)

        page.load(refresh_models, family, model, api_name="quantization_models", **LIGHT)
        family.change(switch_family, family, [model, variants, classifier_settings, lm_settings],
                      api_name="quantization_family", **LIGHT)
        comparing = compare_button.click(
            compare_variants, [family, model, variants, test_size, other_domain_size, repeats, text_tokens,
                               new_tokens, prompt, fresh], [status, results, scatter, bars, greedy],
            api_name="quantization_compare", **HEAVY)
        stop_button.click(stop_comparison, None, status, cancels=[comparing], api_name="quantization_stop", **LIGHT)
        forget_button.click(forget_results, family, status, api_name="quantization_forget", **LIGHT)
        page.load(format_table, None, formats_table, api_name="quantization_formats", **LIGHT)
        format_model.change(list_matrices, format_model, matrix, api_name="quantization_matrices", **HEAVY)
        rounding_button.click(show_rounding, [format_model, matrix], [matrix, rounding_plot, rounding_table],
                              api_name="quantization_rounding", **HEAVY)
        memory_button.click(calculate_memory, [memory_model, precision, batch, sequence, gpus],
                            [memory_headline, weights_table, parts_table, per_gpu_table, per_gpu_plot],
                            api_name="quantization_memory", **LIGHT)
    return page
