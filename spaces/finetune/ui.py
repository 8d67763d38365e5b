"""The fine-tuning page's UI: `build()` returns its Blocks. Alone: `python -m spaces.finetune`."""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from shared.device import bf16_is_native, pick_device
from shared.registry import choices, resolve
from shared.ui import HEAVY, LIGHT, PageInfo, visitor_errors
from spaces.finetune import logic, runs
from spaces.finetune.train import TrainConfig, command_line

PAGE = PageInfo(
    name="Fine-tuning",
    path="finetune",
    teaches="Train a BERT-family classifier live (full, frozen layers, head only, LoRA) and compare what each "
            "costs and gains.",
    needs="Offline (MiniLM + movie sentences) or hub models and data sets; CPU is enough, a GPU is faster.",
)
POLL_SECONDS = 1.0
# The Train button's defaults: every transformer layer trains, the embeddings (half of MiniLM's weights) stay
# frozen, which makes a step ~1.3x faster than full fine-tuning at no cost in accuracy here; 160 steps of 32
# sentences (60% of an epoch). Measured by benchmarks/finetune.py against the goal of >= 82% test accuracy
# within 3 minutes on 2 CPU cores.
DEFAULTS = TrainConfig(method="freeze", freeze_layers=0, learning_rate=2e-4, max_steps=160, epochs=1.0, train_size=0)
DATA_SOURCES = ("movie sentences", "upload CSV", "hub data set")
INTRO = """# Fine-tuning
Pick a base encoder, a data set and a method, press **Train**, and watch loss and validation accuracy move.
Every run lands in the comparison table: trainable parameters, time and accuracy side by side, in domain
(movie reviews) and out of domain (tweets, Amazon and NYT snippets). Data: movie-review sentences from
Hutto & Gilbert (2014), labeled positive when their mean rating is above zero.
"""


def make_config(model, data_source, upload, hub_name, method, freeze_layers, lora_r, lora_alpha, lora_dropout,
                lora_targets, learning_rate, epochs, max_steps, batch_size, max_length, seed, bf16,
                train_size, validation_size, test_size, other_domain_size) -> TrainConfig:
    if data_source == "upload CSV":
        if not upload:
            raise ValueError("Upload a CSV file with text and label columns, or choose the movie sentences.")
        data = f"csv:{upload}"
    elif data_source == "hub data set":
        data = f"hub:{(hub_name or '').strip()}"
    else:
        data = "movies"
    config = TrainConfig(
        model=(model or DEFAULTS.model).strip(), data=data, method=method, freeze_layers=int(freeze_layers),
        lora_r=int(lora_r), lora_alpha=int(lora_alpha), lora_dropout=float(lora_dropout),
        lora_targets=tuple(lora_targets or ()), learning_rate=float(learning_rate), epochs=float(epochs),
        max_steps=int(max_steps), batch_size=int(batch_size), max_length=int(max_length), seed=int(seed),
        bf16=bool(bf16), train_size=int(train_size), validation_size=int(validation_size), test_size=int(test_size),
        other_domain_size=int(other_domain_size))
    config.check()
    return config


def loss_frame(run_list: list[runs.Run]) -> pd.DataFrame:
    rows = [(r.id, s, l) for r in run_list for s, l in zip(r.steps, r.losses)]
    return pd.DataFrame(rows or [("", 0, None)], columns=["run", "step", "training loss"])


def accuracy_frame(run_list: list[runs.Run]) -> pd.DataFrame:
    rows = [(r.id, s, a) for r in run_list for s, a in zip(r.eval_steps, r.accuracies)]
    return pd.DataFrame(rows or [("", 0, None)], columns=["run", "step", "validation accuracy"])


def progress_text(run: runs.Run) -> str:
    if run.status == "failed":
        return f"**{run.id} failed:** {run.error}"
    if run.status == "starting":
        return f"**{run.id}**: loading the model and data…"
    done = run.step / run.total_steps if run.total_steps else 0
    line = (f"**{run.id}** — {run.status}: step {run.step} of {run.total_steps} ({100 * done:.0f}%)"
            f", last loss {run.losses[-1]:.4f}" if run.losses else f"**{run.id}** — {run.status}")
    if run.status == "running":
        line += f", about {run.eta:.0f} s left"
    if run.accuracies:
        line += f"; best validation accuracy {max(run.accuracies):.3f}"
    if run.test_accuracy:
        line += "; test " + ", ".join(f"{k} {v:.3f}" for k, v in run.test_accuracy.items())
    return line


def comparison(run_ids: list[str]):
    session_runs = [runs.RUNS[r] for r in run_ids if r in runs.RUNS]
    table = pd.DataFrame([r.summary() for r in session_runs])
    return table, accuracy_frame(session_runs)


@visitor_errors
def describe_parameters(model, method, freeze_layers, lora_r, lora_alpha, lora_dropout, lora_targets):
    """Trainable vs total parameters for the chosen method, before any weight is loaded."""
    source = resolve("encoder", model)
    trainable, total = logic.preview_parameters(source.location, 2, method, int(freeze_layers), int(lora_r),
                                                int(lora_alpha), float(lora_dropout), tuple(lora_targets or ()))
    return (f"**{logic.METHOD_TITLES[method]}.** {source.label}: {trainable:,} trainable of {total:,} parameters "
            f"(**{100 * trainable / total:.2f}%**).")


@visitor_errors
def show_command(*settings):
    config = make_config(*settings)
    config.output_dir = "runs/my-run"
    return (f"# one process\n{command_line(config)}\n"
            f"# DDP over 2 processes (GPUs when present, else CPU processes over gloo)\n{command_line(config, 2)}")


@visitor_errors
def train_and_watch(run_ids, *settings):
    """Start a run and stream its progress until it ends; leaving the page stops it."""
    config = make_config(*settings)
    resolve("encoder", config.model)  # refuse a bad model id before a thread starts
    if config.bf16 and not bf16_is_native(pick_device()):
        gr.Warning("bf16 is emulated on this processor (no AVX512-BF16 or AMX): expect autocast to be slower "
                   "than float32 here. Compare the two runs' samples/s in the table.")
    run = runs.start_run(config)
    run_ids = [*run_ids, run.id]
    try:
        while True:
            finished = run.finished
            table, accuracy_plot = comparison(run_ids)
            yield (progress_text(run), loss_frame([run]), accuracy_frame([run]), table, accuracy_plot, run_ids,
                   run.id, gr.Dropdown(choices=[r for r in run_ids if r in runs.RUNS], value=run.id))
            if finished:
                break
            time.sleep(POLL_SECONDS)
    finally:
        run.stop.set()  # the generator is closed when the visitor leaves or the event is cancelled
    if run.status == "failed":
        raise gr.Error(f"{run.id} failed: {run.error}")


def stop_training(current_run):
    return runs.stop_run(current_run)


@visitor_errors
def classify(run_id, text):
    return runs.predict(run_id, text)


@visitor_errors
def save_to_cache(run_id, name):
    label = runs.save_to_cache(run_id, name)
    return f"Saved as **{label}**: other pages can now choose it as a classifier."


@visitor_errors
def download_zip(run_id):
    return str(runs.zip_run(run_id))


@visitor_errors
def export_onnx(run_id, progress=gr.Progress(track_tqdm=True)):
    progress(0, desc="exporting to ONNX through optimum")
    return str(runs.export_onnx(run_id))


@visitor_errors
def merge_lora(run_id):
    run = runs.get_run(run_id, finished=True)
    folder = runs.merged_folder(run_id)
    what = "LoRA adapters merged into the base weights" if run.config.method == "lora" else "full model saved"
    return f"{what}: `{folder}`"


def build() -> gr.Blocks:
    with gr.Blocks(title="Fine-tuning") as page:
        gr.Markdown(INTRO)
        run_ids = gr.State([])
        current_run = gr.State("")
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(choices("encoder"), value=choices("encoder")[0] if choices("encoder") else None,
                                    allow_custom_value=True, label="Base encoder",
                                    info="A hub id (online) or a local: model. Paths are refused.")
                data_source = gr.Radio(list(DATA_SOURCES), value=DATA_SOURCES[0], label="Data")
                upload = gr.File(label="CSV with text and label columns", file_types=[".csv"], type="filepath",
                                 visible=False)
                hub_name = gr.Textbox(label="Hub data set", value="rotten_tomatoes", visible=False)
                with gr.Row():
                    train_size = gr.Number(DEFAULTS.train_size, label="Train examples (0 = all)", precision=0)
                    validation_size = gr.Number(DEFAULTS.validation_size, label="Validation", precision=0)
                with gr.Row():
                    test_size = gr.Number(DEFAULTS.test_size, label="Test (0 = whole split)", precision=0)
                    other_domain_size = gr.Number(DEFAULTS.other_domain_size, precision=0,
                                                  label="Tweets / Amazon / NYT test, each")
                method = gr.Radio(list(logic.METHODS), value=DEFAULTS.method, label="Method",
                                  info="full · freeze (embeddings + bottom N layers) · head only · LoRA")
                freeze_layers = gr.Slider(0, 12, value=DEFAULTS.freeze_layers, step=1, label="Layers to freeze")
                with gr.Accordion("LoRA", open=False):
                    lora_r = gr.Slider(1, 64, value=DEFAULTS.lora_r, step=1, label="Rank r")
                    lora_alpha = gr.Slider(1, 128, value=DEFAULTS.lora_alpha, step=1, label="Alpha")
                    lora_dropout = gr.Slider(0, 0.5, value=DEFAULTS.lora_dropout, step=0.05, label="Dropout")
                    lora_targets = gr.CheckboxGroup(["query", "key", "value", "dense"],
                                                    value=list(DEFAULTS.lora_targets), label="Target modules")
                with gr.Accordion("Training settings", open=False):
                    learning_rate = gr.Number(DEFAULTS.learning_rate, label="Learning rate")
                    epochs = gr.Number(DEFAULTS.epochs, label="Epochs")
                    max_steps = gr.Number(DEFAULTS.max_steps, label="Max steps (0 = no cap)", precision=0)
                    batch_size = gr.Slider(4, 128, value=DEFAULTS.batch_size, step=4, label="Batch size")
                    max_length = gr.Slider(16, 256, value=DEFAULTS.max_length, step=8, label="Max length (tokens)")
                    seed = gr.Number(DEFAULTS.seed, label="Seed", precision=0)
                    bf16 = gr.Checkbox(DEFAULTS.bf16, label="bf16 autocast")
            with gr.Column(scale=2):
                parameters = gr.Markdown()
                with gr.Row():
                    train_button = gr.Button("Train", variant="primary")
                    stop_button = gr.Button("Stop", variant="stop")
                progress = gr.Markdown("No run yet.")
                with gr.Row():
                    loss_plot = gr.LinePlot(x="step", y="training loss", color="run", title="Training loss per step",
                                            height=260)
                    accuracy_plot = gr.LinePlot(x="step", y="validation accuracy", color="run",
                                                title="Validation accuracy", height=260)
                gr.Markdown("### Compare runs")
                table = gr.Dataframe(headers=["run", "method", "status", "trainable params", "trainable %", "wall s",
                                              "steps", "samples/s", "best val acc", "test movies"],
                                     label="Runs this session", interactive=False, wrap=True)
                compare_plot = gr.LinePlot(x="step", y="validation accuracy", color="run",
                                           title="Validation accuracy, every run", height=260)
                command = gr.Code(label="The same run as a script (accelerate launch)", language="shell",
                                  interactive=False)
        gr.Markdown("### Use a trained model")
        with gr.Row():
            run_choice = gr.Dropdown([], label="Run", allow_custom_value=False)
            sentence = gr.Textbox(label="Sentence", placeholder="A gorgeous, witty, seductive movie.", scale=2)
            classify_button = gr.Button("Classify")
        probabilities = gr.Label(label="Class probabilities")
        with gr.Row():
            save_name = gr.Textbox(label="Save into the model cache as", placeholder="my-sentiment-model")
            save_button = gr.Button("Save")
            merge_button = gr.Button("Merge LoRA")
            zip_button = gr.Button("Download zip")
            onnx_button = gr.Button("Export ONNX")
        action_status = gr.Markdown()
        download = gr.File(label="Download", interactive=False)

        settings = [model, data_source, upload, hub_name, method, freeze_layers, lora_r, lora_alpha, lora_dropout,
                    lora_targets, learning_rate, epochs, max_steps, batch_size, max_length, seed, bf16,
                    train_size, validation_size, test_size, other_domain_size]
        method_inputs = [model, method, freeze_layers, lora_r, lora_alpha, lora_dropout, lora_targets]

        def show_source(source):
            return gr.File(visible=source == "upload CSV"), gr.Textbox(visible=source == "hub data set")

        data_source.change(show_source, data_source, [upload, hub_name], api_name="finetune_data_source", **LIGHT)
        gr.on([page.load, model.change, method.change, freeze_layers.release, lora_r.release, lora_targets.change],
              describe_parameters, method_inputs, parameters, api_name="finetune_parameters", **LIGHT)
        gr.on([page.load, *[c.change for c in settings if c not in (upload,)]], show_command, settings, command,
              api_name="finetune_command", **LIGHT)
        train_button.click(train_and_watch, [run_ids, *settings],
                           [progress, loss_plot, accuracy_plot, table, compare_plot, run_ids, current_run, run_choice],
                           api_name="finetune_train", show_progress="hidden", **HEAVY)
        stop_button.click(stop_training, current_run, progress, api_name="finetune_stop", **LIGHT)
        gr.on([classify_button.click, sentence.submit], classify, [run_choice, sentence], probabilities,
              api_name="finetune_classify", **LIGHT)
        save_button.click(save_to_cache, [run_choice, save_name], action_status, api_name="finetune_save", **HEAVY)
        merge_button.click(merge_lora, run_choice, action_status, api_name="finetune_merge", **HEAVY)
        zip_button.click(download_zip, run_choice, download, api_name="finetune_zip", **HEAVY)
        onnx_button.click(export_onnx, run_choice, download, api_name="finetune_onnx", **HEAVY)
    return page
