"""The fine-tuning page's UI: `build()` returns its Blocks. Alone: `python -m spaces.finetune`."""

from __future__ import annotations

import inspect
import time

import gradio as gr
import pandas as pd

from shared.device import bf16_is_native, pick_device
from shared.registry import choices, resolve
from shared.ui import HEAVY, LIGHT, PageInfo, line_chart, session_key, table, visitor_errors
from spaces.finetune import logic, runs
from spaces.finetune.train import PAGE_DEFAULTS as DEFAULTS
from spaces.finetune.train import TrainConfig, command_line

PAGE = PageInfo(
    name="Fine-tuning",
    path="finetune",
    teaches="Train a BERT-family classifier live (full, frozen layers, head only, LoRA) and compare what each "
            "costs and gains.",
    needs="Offline (MiniLM + movie sentences) or hub models and data sets; CPU is enough, a GPU is faster.",
)
POLL_SECONDS = 1.0
DATA_SOURCES = ("movie sentences", "upload CSV", "hub data set")
RUN_COLUMNS = ["run", "method", "status", "trainable params", "trainable %", "wall s", "steps", "samples/s",
               "best val acc", "test movies"]
INTRO = """# Fine-tuning
Pick a base encoder, a data set and a method, press **Train**, and watch loss and validation accuracy move.
Every run lands in the comparison table: trainable parameters, time and accuracy side by side, in domain
(movie reviews) and out of domain (tweets, Amazon and NYT snippets). Data: movie-review sentences from
Hutto & Gilbert (2014), labeled positive when their mean rating is above zero.
"""


def make_config(model, data_source, upload, hub_name, method, freeze_layers, lora_r, lora_alpha, lora_dropout,
                lora_targets, learning_rate, epochs, max_steps, batch_size, max_length, seed, bf16,
                train_size, validation_size, test_size, other_domain_size) -> TrainConfig:
    """The training configuration from the page's form, checked (ValueError names the first bad value)."""
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


FORM = tuple(inspect.signature(make_config).parameters)  # the form's inputs, by name, in the handlers' order


def loss_chart(run_list: list[runs.Run]):
    rows = [(r.id, s, l) for r in run_list for s, l in zip(r.steps, r.losses)]
    return line_chart(pd.DataFrame(rows, columns=["run", "step", "training loss"]), "step", "training loss",
                      color="run")


def accuracy_chart(run_list: list[runs.Run]):
    rows = [(r.id, s, a) for r in run_list for s, a in zip(r.eval_steps, r.accuracies)]
    return line_chart(pd.DataFrame(rows, columns=["run", "step", "validation accuracy"]), "step",
                      "validation accuracy", color="run")


def progress_text(run: runs.Run) -> str:
    if run.status == "failed":
        return f"**{run.id} failed:** {run.error}"
    if run.status == "starting":
        return f"**{run.id}**: loading the model and data…"
    done = run.step / run.total_steps if run.total_steps else 0
    line = (f"**{run.id}** — {run.status}: step {run.step} of {run.total_steps} ({100 * done:.0f}%)"
            f", last loss {run.losses[-1]:.3f}" if run.losses else f"**{run.id}** — {run.status}")
    if run.status == "running":
        line += f", about {run.eta:.0f} s left"
    if run.accuracies:
        line += f"; best validation accuracy {max(run.accuracies):.3f}"
    if run.test_accuracy:
        line += "; test " + ", ".join(f"{k} {v:.3f}" for k, v in run.test_accuracy.items())
    return line


def comparison(run_ids: list[str]):
    session_runs = [runs.RUNS[r] for r in run_ids if r in runs.RUNS]
    return (pd.DataFrame([r.summary() for r in session_runs]),
            accuracy_chart(session_runs))


@visitor_errors
def describe_parameters(model, method, freeze_layers, lora_r, lora_alpha, lora_dropout, lora_targets):
    """Trainable vs total parameters for the chosen method, before any weight is loaded."""
    source = resolve("encoder", model)
    trainable, total = logic.preview_parameters(source.location, 2, method, int(freeze_layers), int(lora_r),
                                                int(lora_alpha), float(lora_dropout), tuple(lora_targets or ()))
    return (f"**{logic.METHOD_TITLES[method]}.** {source.label}: {trainable:,} trainable of {total:,} parameters "
            f"(**{100 * trainable / total:.2f}%**).")


@visitor_errors
def show_command(model, data_source, upload, hub_name, method, freeze_layers, lora_r, lora_alpha, lora_dropout,
                 lora_targets, learning_rate, epochs, max_steps, batch_size, max_length, seed, bf16, train_size,
                 validation_size, test_size, other_domain_size):
    config = make_config(**locals())
    config.output_dir = "runs/my-run"
    return (f"# one process\n{command_line(config)}\n"
            f"# DDP over 2 processes (GPUs when present, else CPU processes over gloo)\n{command_line(config, 2)}")


@visitor_errors
def train_and_watch(run_ids, model, data_source, upload, hub_name, method, freeze_layers, lora_r, lora_alpha,
                    lora_dropout, lora_targets, learning_rate, epochs, max_steps, batch_size, max_length, seed, bf16,
                    train_size, validation_size, test_size, other_domain_size, request: gr.Request = None):
    """Start a run and stream its progress until it ends; Stop, or leaving the page, stops it."""
    form = {name: value for name, value in locals().items() if name in FORM}
    config = make_config(**form)
    resolve("encoder", config.model)  # refuse a bad model id before a thread starts
    if config.bf16 and not bf16_is_native(pick_device()):
        gr.Warning("bf16 is emulated on this processor (no AVX512-BF16 or AMX): expect autocast to be slower "
                   "than float32 here. Compare the two runs' samples/s in the table.")
    run = runs.start_run(config, key=session_key(request))
    run_ids = [*run_ids, run.id]
    try:
        while True:
            finished = run.finished
            run_table, compare_chart = comparison(run_ids)
            yield (progress_text(run), loss_chart([run]), accuracy_chart([run]), run_table,
                   compare_chart, run_ids, gr.Dropdown(choices=[r for r in run_ids if r in runs.RUNS], value=run.id))
            if finished:
                break
            time.sleep(POLL_SECONDS)
    finally:
        run.stop.set()  # the generator is closed when the visitor leaves or the event is cancelled
    if run.status == "failed":
        raise gr.Error(f"{run.id} failed: {run.error}")


def stop_training(request: gr.Request = None) -> str:
    """Stop this visitor's training, and show how it ended once its best checkpoint is tested and saved. (The
    streaming event is cancelled; waiting for the run also lets any update it had in flight land first.)"""
    stopped = runs.stop_runs(session_key(request))
    return progress_text(stopped[-1]) if stopped else "No run is training."


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


def show_source(data_source: str):
    return gr.File(visible=data_source == "upload CSV"), gr.Textbox(visible=data_source == "hub data set")


def build() -> gr.Blocks:
    encoders = choices("encoder")
    with gr.Blocks(title="Fine-tuning") as page:
        gr.Markdown(INTRO)
        run_ids = gr.State([])
        form: dict[str, gr.components.Component] = {}  # the training form, keyed like make_config's parameters
        with gr.Row():
            with gr.Column(scale=1):
                form["model"] = gr.Dropdown(encoders, value=encoders[0] if encoders else None,
                                            allow_custom_value=True, label="Base encoder",
                                            info="A hub id (online) or a local: model. Paths are refused.")
                form["data_source"] = gr.Radio(list(DATA_SOURCES), value=DATA_SOURCES[0], label="Data")
                form["upload"] = gr.File(label="CSV with text and label columns", file_types=[".csv"],
                                         type="filepath", visible=False)
                form["hub_name"] = gr.Textbox(label="Hub data set", value="rotten_tomatoes", visible=False)
                with gr.Row():
                    form["train_size"] = gr.Number(DEFAULTS.train_size, label="Train examples (0 = all)",
                                                   precision=0)
                    form["validation_size"] = gr.Number(DEFAULTS.validation_size, label="Validation", precision=0)
                with gr.Row():
                    form["test_size"] = gr.Number(DEFAULTS.test_size, label="Test (0 = whole split)", precision=0)
                    form["other_domain_size"] = gr.Number(DEFAULTS.other_domain_size, precision=0,
                                                          label="Tweets / Amazon / NYT test, each")
                form["method"] = gr.Radio(list(logic.METHODS), value=DEFAULTS.method, label="Method",
                                          info="full · freeze (embeddings + bottom N layers) · head only · LoRA")
                form["freeze_layers"] = gr.Slider(0, 12, value=DEFAULTS.freeze_layers, step=1,
                                                  label="Layers to freeze")
                with gr.Accordion("LoRA", open=False):
                    form["lora_r"] = gr.Slider(1, 64, value=DEFAULTS.lora_r, step=1, label="Rank r")
                    form["lora_alpha"] = gr.Slider(1, 128, value=DEFAULTS.lora_alpha, step=1, label="Alpha")
                    form["lora_dropout"] = gr.Slider(0, 0.5, value=DEFAULTS.lora_dropout, step=0.05,
                                                     label="Dropout")
                    form["lora_targets"] = gr.CheckboxGroup(["query", "key", "value", "dense"],
                                                            value=list(DEFAULTS.lora_targets),
                                                            label="Target modules")
                with gr.Accordion("Training settings", open=False):
                    form["learning_rate"] = gr.Number(DEFAULTS.learning_rate, label="Learning rate")
                    form["epochs"] = gr.Number(DEFAULTS.epochs, label="Epochs")
                    form["max_steps"] = gr.Number(DEFAULTS.max_steps, label="Max steps (0 = no cap)", precision=0)
                    form["batch_size"] = gr.Slider(4, 128, value=DEFAULTS.batch_size, step=4, label="Batch size")
                    form["max_length"] = gr.Slider(16, 256, value=DEFAULTS.max_length, step=8,
                                                   label="Max length (tokens)")
                    form["seed"] = gr.Number(DEFAULTS.seed, label="Seed", precision=0)
                    form["bf16"] = gr.Checkbox(DEFAULTS.bf16, label="bf16 autocast")
            with gr.Column(scale=2):
                parameters = gr.Markdown()
                with gr.Row():
                    train_button = gr.Button("Train", variant="primary")
                    stop_button = gr.Button("Stop", variant="stop")
                progress = gr.Markdown("No run yet.")
                with gr.Row():
                    loss_plot = gr.Plot(label="Training loss", elem_id="finetune-loss")
                    accuracy_plot = gr.Plot(label="Validation accuracy", elem_id="finetune-accuracy")
                gr.Markdown("### Compare runs")
                run_table = table(RUN_COLUMNS, "Runs this session")
                compare_plot = gr.Plot(label="Validation accuracy, every run", elem_id="finetune-compare")
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

        settings = [form[name] for name in FORM]
        method_inputs = [form[name] for name in ("model", "method", "freeze_layers", "lora_r", "lora_alpha",
                                                 "lora_dropout", "lora_targets")]
        form["data_source"].change(show_source, form["data_source"], [form["upload"], form["hub_name"]],
                                   api_name="finetune_data_source", **LIGHT)
        gr.on([page.load, form["model"].change, form["method"].change, form["freeze_layers"].release,
               form["lora_r"].release, form["lora_targets"].change],
              describe_parameters, method_inputs, parameters, api_name="finetune_parameters", **LIGHT)
        gr.on([page.load, *[c.change for c in settings if c is not form["upload"]]], show_command, settings, command,
              api_name="finetune_command", **LIGHT)
        training = train_button.click(train_and_watch, [run_ids, *settings],
                                      [progress, loss_plot, accuracy_plot, run_table, compare_plot, run_ids,
                                       run_choice],
                                      api_name="finetune_train", show_progress="hidden", **HEAVY)
        # Stop: set this visitor's stop event (training ends at the next step, keeping its best checkpoint) and
        # cancel the streaming event. The run still tests and saves its best weights in the background.
        stop_button.click(stop_training, None, progress, cancels=[training], api_name="finetune_stop", **LIGHT)
        gr.on([classify_button.click, sentence.submit], classify, [run_choice, sentence], probabilities,
              api_name="finetune_classify", **LIGHT)
        save_button.click(save_to_cache, [run_choice, save_name], action_status, api_name="finetune_save", **HEAVY)
        merge_button.click(merge_lora, run_choice, action_status, api_name="finetune_merge", **HEAVY)
        zip_button.click(download_zip, run_choice, download, api_name="finetune_zip", **HEAVY)
        onnx_button.click(export_onnx, run_choice, download, api_name="finetune_onnx", **HEAVY)
    return page
