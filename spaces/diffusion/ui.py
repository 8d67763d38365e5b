"""The Stable Diffusion page's UI: `build()` returns its Blocks. Alone: `python -m spaces.diffusion`.

Five parts: text to image with every setting (previews after each step, Stop); replay of the last run step by
step (the noisy latent beside the predicted clean image); reproduce (settings in every PNG, dropped back to
restore them; this session's history); train a tiny Stable Diffusion here (the offline model: no Stable
Diffusion weights ship in any package); the forward process on a photo with its noise schedules.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from shared import assets, jobs
from shared.cache import LoadSpec, get_cache, short_reason
from shared.registry import check_local_name, choices, newest_saved, resolve
from shared.ui import HEAVY, LIGHT, PageInfo, line_chart, session_key, visitor_errors
from spaces.diffusion import forward
from spaces.diffusion.generate import (GENERATE_JOB, Generation, limits_of, load_diffuser, native_scheduler,
                                       replay_frames, stream_images, token_view)
from spaces.diffusion.settings import (MAX_BATCH, MAX_GUIDANCE, MAX_STEPS, SCHEDULER_NAMES, Settings,
                                       parameters_text, read_png_settings)
from spaces.diffusion.train import DEFAULT_GUIDANCE, PAGE_DEFAULTS, train

PAGE = PageInfo(
    name="Stable Diffusion",
    path="diffusion",
    teaches="Text to image you can watch step by step, stop, replay and reproduce from its PNG; train a tiny Stable "
            "Diffusion (VAE, text-conditioned UNet, pipeline) yourself, and see how noise schedules destroy a photo.",
    needs="Offline: a tiny Stable Diffusion trained on this page (Fashion-MNIST, ~10 min on a CPU). Online: "
          "sd-turbo (default, 1-4 steps), Stable Diffusion 1.5, tiny-sd, SDXL-Turbo.",
)
INTRO = """# Stable Diffusion
A diffusion model makes an image by removing noise: it starts from pure noise in a small *latent* space and, at
each step, a UNet guided by your prompt predicts the noise to take away; a VAE decodes the last latent into
pixels. Below you can **watch** the image emerge (the model's guess of the finished image, x̂₀, after each
step), **stop** it, **replay** every step, and **reproduce** any image: its seed and settings travel inside its
PNG. No Stable Diffusion weights ship offline: **train a tiny one in part 4** (Fashion-MNIST, 32×32, about ten
minutes on a CPU) and it becomes the page's model.
"""
TRAIN_JOB = "diffusion-train"
POLL_SECONDS = 1.0
STOP_WAIT_SECONDS = 120.0  # a step of a big model on a CPU can take this long
STRIP_TIMESTEPS = (0, 100, 250, 500, 750, 999)
DECODERS = {"fast (TAESD) where the model has one": False, "full VAE": True}
NO_MODEL = ("No Stable Diffusion model here yet: the hub is not reachable and none was trained. Train the tiny one "
            "in part 4 (about ten minutes), then choose it here.")


# ---- 1. model ---------------------------------------------------------------------------------------------


def default_model() -> str | None:
    models = choices("diffusion")
    newest = newest_saved("diffusion")
    return models[0] if models and not newest else newest


def is_loaded(model: str) -> bool:
    try:
        source = resolve("diffusion", model)
    except ValueError:
        return False
    return get_cache().contains(LoadSpec("diffusion", source.location, label=source.label))


def model_note(diffuser, label: str) -> str:
    limits = limits_of(diffuser)
    kind = "distilled for 1-4 steps without guidance (guidance is off)" if limits.turbo else "guided by the prompt"
    notes = "; ".join(diffuser.notes) if diffuser.notes else "plain diffusers"
    return (f"**{label}**: {diffuser.family.upper()} family, {kind}; trained at {limits.native_size}×"
            f"{limits.native_size}; the text encoder reads {limits.max_tokens} tokens; sampler "
            f"{native_scheduler(diffuser)}. Fast path: {notes}.")


@visitor_errors
def open_model(model, progress=gr.Progress()):
    """Load the model and set the controls to what suits it: its size and sampler, 4 steps and no guidance for a
    turbo model (guidance is then disabled, with the reason), 25 steps and guidance for the others."""
    if not model:
        raise ValueError(NO_MODEL)
    progress(0.1, desc=f"loading {model}")
    diffuser = load_diffuser(model)
    limits = limits_of(diffuser)
    if limits.turbo:
        guidance = gr.Slider(value=0.0, interactive=False,
                             info="Off: this turbo model was distilled to follow the prompt without guidance.")
        negative = gr.Textbox(interactive=False, info="Unused without guidance (a turbo model).")
    else:
        default = DEFAULT_GUIDANCE if limits.native_size <= 64 else 7.0
        guidance = gr.Slider(value=default, interactive=True,
                             info="1 = no guidance; higher follows the prompt more closely (and costs a 2nd pass).")
        negative = gr.Textbox(interactive=True, info="What to steer away from (used when guidance > 1).")
    steps = 4 if limits.turbo else 25
    return (model_note(diffuser, model), guidance, negative, gr.Slider(value=steps),
            gr.Number(value=limits.native_size), gr.Number(value=limits.native_size),
            gr.Dropdown(value=native_scheduler(diffuser)))


@visitor_errors
def count_tokens(model, prompt):
    """The prompt's tokens against the text encoder's window (only once the model is loaded)."""
    if not model or not is_loaded(model):
        return "Load the model to count the prompt's tokens."
    tokens, limit, cut = token_view(load_diffuser(model), prompt or "")
    if cut:
        return f"**{tokens} tokens of {limit}**: too long. The encoder would never read: “{cut.strip()}”"
    return f"{tokens} tokens of {limit} (start and end tokens included)."


# ---- 2. generate ------------------------------------------------------------------------------------------


@dataclass
class History:
    """This session's images: (path, settings) newest first."""
    items: list[tuple[str, Settings]] = field(default_factory=list)

    def add(self, generation: Generation) -> None:
        for i, path in enumerate(generation.paths):
            self.items.insert(0, (str(path), generation.settings.for_image(i)))

    def gallery(self) -> list[tuple[str, str]]:
        return [(path, f"seed {s.seed} · {s.steps} steps · guidance {s.guidance:g} · {s.prompt[:60]}")
                for path, s in self.items]


def settings_from(model, prompt, negative_prompt, steps, guidance, seed, width, height, scheduler, batch) -> Settings:
    if not model:
        raise ValueError(NO_MODEL)
    return Settings(model=model, prompt=prompt or "", negative_prompt=negative_prompt or "", steps=steps,
                    guidance=guidance, seed=-1 if seed is None else seed, width=width, height=height,
                    scheduler=scheduler, batch=batch)


def replay_plot(generation: Generation | None):
    """How the run converged: the noisy latent's spread, and how far each step's x̂₀ is from the final image."""
    if generation is None or not generation.steps:
        return None
    final = generation.steps[-1].predicted
    rows = []
    for record in generation.steps:
        rows.append({"step": record.index + 1, "series": "std of x_t (the noisy latent)",
                     "value": float(record.noisy.std())})
        rows.append({"step": record.index + 1, "series": "RMS distance of x̂₀ to the last x̂₀",
                     "value": float(np.sqrt(((record.predicted - final) ** 2).mean()))})
    return line_chart(pd.DataFrame(rows), "step", "value", color="series")


@visitor_errors
def generate_images(model, prompt, negative_prompt, steps, guidance, seed, width, height, scheduler, batch, decoder,
                    history, request: gr.Request = None, progress=gr.Progress()):
    """Stream x̂₀ previews after each step, then the final images (PNGs with their settings inside)."""
    settings = settings_from(model, prompt, negative_prompt, steps, guidance, seed, width, height, scheduler, batch)
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {list(DECODERS)}, got {decoder!r}")
    progress(0.0, desc=f"loading {model}")
    diffuser = load_diffuser(model)
    history = history or History()
    stream = stream_images(diffuser, settings, key=session_key(request), full_decoder=DECODERS[decoder])
    for update in stream:
        if update.generation is None:
            progress(update.step / update.total, desc=f"step {update.step} of {update.total}")
            yield (update.preview, f"Step {update.step} of {update.total}: the model's guess of the finished image.",
                   gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
            continue
        generation = update.generation
        history.add(generation)
        images = [(str(path), f"seed {generation.settings.seed + i}") for i, path in enumerate(generation.paths)]
        total = max(len(generation.steps), 1)
        # Gradio refuses a slider whose minimum equals its maximum: a 1-step run (sd-turbo's own setting) keeps
        # the range 1-2 and a slider that cannot move, as the page starts.
        yield (images, generation.summary(), generation, generation.settings.seed,
               gr.Slider(minimum=1, maximum=max(total, 2), value=total, interactive=len(generation.steps) > 1),
               [str(p) for p in generation.paths] or None, history, history.gallery(), replay_plot(generation))


def stop_generating(request: gr.Request = None) -> str:
    """Interrupt this visitor's run at its next step and answer once it has ended (the streaming event is
    cancelled, so its last preview stays on the page)."""
    key = session_key(request)
    if not jobs.stop(key, GENERATE_JOB):
        return "Nothing is running."
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while jobs.active(GENERATE_JOB, key=key) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "Stopped at the visitor's request: the last preview is the model's guess at that step."


@visitor_errors
def guidance_sweep(model, prompt, negative_prompt, steps, seed, width, height, scheduler, decoder, history,
                   request: gr.Request = None, progress=gr.Progress()):
    """The same seed and prompt at guidance 1, 3 and 7: what classifier-free guidance does."""
    diffuser = load_diffuser(model) if model else None
    if diffuser is not None and diffuser.turbo:
        raise ValueError("This turbo model was distilled to run without guidance: choose the tiny model or a "
                         "non-turbo one (Stable Diffusion 1.5, tiny-sd) to compare guidance scales.")
    history = history or History()
    if seed is None or seed == -1:
        seed = int(np.random.default_rng().integers(0, 2**31))
    shown = []
    for n, scale in enumerate((1.0, 3.0, 7.0)):
        settings = settings_from(model, prompt, negative_prompt, steps, scale, seed, width, height, scheduler, 1)
        progress(n / 3, desc=f"guidance {scale:g}")
        for update in stream_images(diffuser, settings, key=session_key(request), full_decoder=DECODERS[decoder]):
            if update.generation is not None:
                if update.generation.interrupted:
                    return shown, f"Stopped at guidance {scale:g}.", history, history.gallery()
                history.add(update.generation)
                shown += [(str(p), f"guidance {scale:g}") for p in update.generation.paths]
    return (shown, f"Seed {seed}, the same starting noise each time: only the guidance scale changes.", history,
            history.gallery())


def enlarged(image: Image.Image, at_least: int = 192) -> Image.Image:
    """A small image (the tiny model's 32x32) blown up with square pixels, so the eye sees what the model made."""
    factor = -(-at_least // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


@visitor_errors
def replay(last_run, step, image):
    """The noisy latent and the predicted clean image at one step of the last run."""
    if last_run is None:
        raise ValueError("Generate an image first: the replay shows the steps of this session's last run.")
    diffuser = load_diffuser(last_run.settings.model)
    noisy, predicted = (enlarged(frame) for frame in replay_frames(diffuser, last_run, int(step), int(image or 0)))
    record = last_run.steps[int(step) - 1]
    note = f"Step {int(step)} of {len(last_run.steps)} (timestep t = {record.timestep})."
    return noisy, predicted, note


# ---- 3. reproduce -----------------------------------------------------------------------------------------


def settings_outputs(settings: Settings, model_choices: list[str]):
    model = settings.model if settings.model in model_choices else gr.skip()
    return (model, settings.prompt, settings.negative_prompt, settings.steps, settings.guidance, settings.seed,
            settings.width, settings.height, settings.scheduler)


@visitor_errors
def restore_from_png(png):
    """Every setting a PNG carries, back into the form (ours, or an AUTOMATIC1111 PNG's `parameters`)."""
    if not png:
        raise ValueError("Drop a PNG made by this page (or by AUTOMATIC1111) to restore its settings.")
    settings = read_png_settings(png)
    available = choices("diffusion")
    note = f"Restored: {parameters_text(settings)}".replace("\n", " · ")
    if settings.model and settings.model not in available:
        gr.Warning(f"The PNG was made with {settings.model}, which is not available here; the other settings "
                   "are restored.")
    return *settings_outputs(settings, available), note


@visitor_errors
def restore_from_history(history, selected: gr.SelectData):
    if history is None or not history.items:
        raise ValueError("No image in this session's history yet.")
    _, settings = history.items[selected.index]
    return *settings_outputs(settings, choices("diffusion")), f"Restored seed {settings.seed}."


def random_seed():
    return -1


def reuse_seed(last_run):
    if last_run is None:
        raise gr.Error("No image yet: generate one, then its seed can be reused.")
    return last_run.settings.seed


# ---- 4. train ---------------------------------------------------------------------------------------------


@dataclass
class TrainingRun:
    """One tiny-SD training: its job and the history its events fill, which the page polls."""
    config: object
    job: jobs.Job | None = None
    stage: str = ""
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: {"vae": [], "unet": []})
    total_steps: dict[str, int] = field(default_factory=dict)
    reconstructions: dict | None = None
    samples: dict | None = None
    done: dict | None = None

    def record(self, event: dict) -> None:
        kind = event["type"]
        if kind == "stage":
            self.stage = event["stage"]
        elif kind == "step":
            self.losses.setdefault(event["stage"], []).append((event["step"], event["loss"]))
            self.total_steps[event["stage"]] = event.get("total_steps", 0)
        elif kind == "reconstructions":
            self.reconstructions = event
        elif kind == "samples":
            self.samples = event
        elif kind == "done":
            self.done = event["results"]

    @property
    def status(self) -> str:
        if self.job is not None and self.job.finished:
            return self.job.status
        return "running" if self.stage else "starting"


def grid_image(images: np.ndarray, columns: int) -> Image.Image:
    """uint8 images (n, h, w) or (n, h, w, c) tiled into rows of `columns`, enlarged for the eye."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    n, h, w = images.shape[:3]
    rows = -(-n // columns)
    grid = np.full((rows * h, columns * w, *images.shape[3:]), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = image
    picture = Image.fromarray(grid)
    return picture.resize((picture.width * 3, picture.height * 3), Image.NEAREST)


def training_outputs(run: TrainingRun):
    plots = []
    for stage, what in (("vae", "VAE loss"), ("unet", "UNet noise-prediction loss")):
        points = run.losses.get(stage, [])
        plots.append(line_chart(pd.DataFrame(points, columns=["step", what]), "step", what) if points else None)
    reconstructions = None
    if run.reconstructions:
        pair = np.concatenate([run.reconstructions["originals"], run.reconstructions["reconstructions"]])
        reconstructions = grid_image(pair, len(run.reconstructions["originals"]))
    samples = []
    if run.samples:
        for scale, grid in zip(run.samples["guidance"], run.samples["images"]):
            samples.append((grid_image(grid, 10), f"guidance {scale:g}: one prompt per class, the same seed"))
    return (*plots, reconstructions, samples or None)


def training_text(run: TrainingRun) -> str:
    if run.status == "failed":
        return f"**Training failed:** {short_reason(run.job.error)}"
    if run.status == "starting":
        return "Loading Fashion-MNIST and MiniLM…"
    stage = {"vae": "1. VAE", "unet": "2. UNet", "assembly": "3. assembling and sampling"}.get(run.stage, run.stage)
    line = f"**{run.status}**: {stage}"
    points = run.losses.get(run.stage, [])
    if points:
        line += f", step {points[-1][0]} of about {run.total_steps.get(run.stage, '?')}, loss {points[-1][1]:.4f}"
    if run.done is not None:
        seconds = ", ".join(f"{name} {part['seconds']:.0f} s" for name, part in run.done.get("stages", {}).items()
                            if isinstance(part, dict) and "seconds" in part)
        line += f". Wall time: {seconds}" if seconds else ""
        if run.done.get("label"):
            line += f". Saved as **{run.done['label']}**: it is now the page's model (chosen above)."
        else:
            line += ". No pipeline saved: the run ended before the UNet trained (a VAE alone cannot make images)."
    return line


RUNS: dict[str, TrainingRun] = {}  # each session's latest training, for its Stop button


def model_choice_after(run: TrainingRun):
    label = (run.done or {}).get("label")
    return gr.Dropdown(choices=choices("diffusion"), value=label) if label else gr.skip()


@visitor_errors
def train_tiny_sd(name, stages, vae_seconds, vae_steps, unet_seconds, unet_steps, train_size,
                  request: gr.Request = None):
    """Train in the background and stream its curves, reconstructions and samples until it ends."""
    # 1. Check the inputs.
    name = check_local_name((name or "").strip())
    for what, value in (("VAE time budget", vae_seconds), ("VAE max steps", vae_steps),
                        ("UNet time budget", unet_seconds), ("UNet max steps", unet_steps),
                        ("training images", train_size)):
        if value is None or value < 0 or int(value) != value:
            raise ValueError(f"{what} must be a whole number >= 0, got {value}")
    base = ""
    if stages == "unet":  # the UNet alone reuses the VAE of the newest saved tiny model
        newest = newest_saved("diffusion")
        if newest is None:
            raise ValueError("Training the UNet alone reuses a trained VAE: train both stages first.")
        base = resolve("diffusion", newest).location
    config = dataclasses.replace(PAGE_DEFAULTS, stages=stages, vae_seconds=float(vae_seconds),
                                 vae_steps=int(vae_steps), unet_seconds=float(unet_seconds),
                                 unet_steps=int(unet_steps), train_size=int(train_size),
                                 save_as="" if stages == "vae" else name, base=base)  # a VAE alone makes no images
    config.check()
    # 2. Start the training job; 3. stream what it records until it ends.
    run = RUNS[session_key(request)] = TrainingRun(config)

    def work(stop: threading.Event) -> dict:
        return train(config, on_event=run.record, stop=stop)

    run.job = jobs.start(work, name=TRAIN_JOB, key=session_key(request))
    try:
        while not run.job.finished:
            yield training_text(run), *training_outputs(run), gr.skip()
            time.sleep(POLL_SECONDS)
        yield training_text(run), *training_outputs(run), model_choice_after(run)
    finally:
        run.job.stop.set()  # leaving the page (a cancelled event) stops the training too


def stop_training(request: gr.Request = None):
    """Stop this visitor's training at the next step; a UNet stopped early is still assembled and saved."""
    run = RUNS.get(session_key(request))
    if not jobs.stop(session_key(request), TRAIN_JOB) or run is None:
        return "Nothing is training.", gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    run.job.join()
    return training_text(run), *training_outputs(run), model_choice_after(run)


# ---- 5. forward process -----------------------------------------------------------------------------------


def photo_choices() -> dict[str, tuple[str, str]]:
    """The bundled photos: name (file stem, what the API takes) -> (caption, path)."""
    try:
        return {Path(photo["path"]).stem: (photo["caption"], photo["path"]) for photo in assets.read_photos()}
    except assets.AssetUnavailable:
        return {}


@visitor_errors
def show_forward(photo, schedule, timestep, seed):
    """A photo at timestep t under a schedule, the same noise at several timesteps, and the schedules' curves."""
    photos = photo_choices()
    if photo not in photos:
        raise ValueError(f"photo must be one of {list(photos) or 'the bundled photos (not built here)'}, got {photo!r}")
    forward.check_schedule(schedule)
    t = forward.check_timestep(timestep)
    seed = 0 if seed is None else int(seed)
    with Image.open(photos[photo][1]) as image:
        image = image.convert("RGB")
        image.thumbnail((256, 256))
        pixels = np.asarray(image)
    noisy = forward.noise_strip(pixels, schedule, [t], seed)[0]
    strip = [(Image.fromarray(p), f"t = {s}") for s, p in
             zip(STRIP_TIMESTEPS, forward.noise_strip(pixels, schedule, list(STRIP_TIMESTEPS), seed))]
    alpha_bar = forward.alphas_cumprod(schedule)[t]
    snr = alpha_bar / (1 - alpha_bar)
    note = (f"t = {t}: x_t = {alpha_bar ** 0.5:.3f}·x₀ + {(1 - alpha_bar) ** 0.5:.3f}·ε (ᾱ_t = {alpha_bar:.4f}, "
            f"SNR = {snr:.3g}). Under {schedule}, noise outweighs the photo from t = "
            f"{forward.half_signal_step(schedule)} on.")
    frame = forward.schedule_frame(list(forward.SCHEDULES))
    return (Image.fromarray(noisy), strip, note, line_chart(frame, "timestep", "ᾱ_t", color="schedule"),
            line_chart(frame, "timestep", "log10 SNR", color="schedule"))


# ---- the page ---------------------------------------------------------------------------------------------


def build() -> gr.Blocks:
    models = choices("diffusion")
    photos = photo_choices()
    with gr.Blocks(title="Stable Diffusion") as page:
        gr.Markdown(INTRO)
        last_run = gr.State(None)
        history = gr.State(None)
        # 1. Model
        gr.Markdown("## 1. Model")
        with gr.Row(equal_height=True):
            model = gr.Dropdown(models, value=default_model(), allow_custom_value=True, label="Model", scale=3,
                                info="A hub id when online, or a local: model trained in part 4.")
            load_button = gr.Button("Load", scale=1)
        model_info = gr.Markdown(NO_MODEL if not models else "Load the model to see what it is and what it needs.")
        # 2. Text to image
        gr.Markdown("## 2. Text to image")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox("a photo of a sneaker", label="Prompt", lines=2, elem_id="diffusion-prompt")
                negative_prompt = gr.Textbox("", label="Negative prompt", lines=1)
                tokens = gr.Markdown("Load the model to count the prompt's tokens.")
                with gr.Row():
                    steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Steps")
                    guidance = gr.Slider(0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance scale")
                    scheduler = gr.Dropdown(list(SCHEDULER_NAMES), value="DDIM", label="Sampler")
                with gr.Row():
                    seed = gr.Number(-1, precision=0, label="Seed (-1: random)", minimum=-1)
                    random_button = gr.Button("🎲 random", size="sm")
                    reuse_button = gr.Button("♻ last seed", size="sm")
                with gr.Row():
                    width = gr.Number(32, precision=0, label="Width", minimum=8, step=8)
                    height = gr.Number(32, precision=0, label="Height", minimum=8, step=8)
                    batch = gr.Slider(1, MAX_BATCH, value=4, step=1, label="Images")
                    decoder = gr.Radio(list(DECODERS), value=list(DECODERS)[0], label="Final decoder")
                with gr.Row():
                    generate_button = gr.Button("Generate", variant="primary", elem_id="diffusion-generate")
                    generate_stop = gr.Button("Stop", variant="stop")
                    sweep_button = gr.Button("Same seed at guidance 1, 3, 7")
            with gr.Column(scale=2):
                images = gr.Gallery(label="Images", columns=2, height=360, elem_id="diffusion-images",
                                    object_fit="contain")
                status = gr.Markdown(elem_id="diffusion-status")
                used_seed = gr.Number(label="Seed used", precision=0, interactive=False)
                pngs = gr.File(label="PNGs (settings inside)", file_count="multiple", interactive=False)
        # 3. Replay
        gr.Markdown("## 3. Replay the last run\nAt each step the sampler holds a noisy latent x_t and the UNet's noise "
                    "prediction gives a guess of the clean image, x̂₀ = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t. Early guesses are "
                    "blurry averages; the details settle as the noise goes.")
        with gr.Row(equal_height=True):
            replay_step = gr.Slider(1, 2, value=1, step=1, label="Step", interactive=False, elem_id="diffusion-replay")
            replay_image = gr.Number(0, precision=0, minimum=0, maximum=MAX_BATCH - 1, label="Image of the batch")
        replay_note = gr.Markdown()
        with gr.Row():
            noisy_view = gr.Image(label="Noisy latent x_t (decoded)", height=220, elem_id="diffusion-noisy")
            clean_view = gr.Image(label="Predicted clean image x̂₀", height=220, elem_id="diffusion-clean")
            convergence = gr.Plot(label="Convergence", elem_id="diffusion-convergence")
        # 3b. Reproduce
        gr.Markdown("### Reproduce\nEvery PNG carries its settings (AUTOMATIC1111's `parameters` text, and ours). "
                    "Drop one here to restore them, or click an image of this session's history.")
        with gr.Row():
            png_upload = gr.File(label="Drop a PNG", file_types=[".png"], type="filepath")
            restore_note = gr.Markdown()
        history_gallery = gr.Gallery(label="This session's images (click one to restore its settings)", columns=8,
                                     height=200, elem_id="diffusion-history")
        sweep_images = gr.Gallery(label="Guidance 1 · 3 · 7, same seed", columns=3, height=220)
        sweep_note = gr.Markdown()
        # 4. Train
        gr.Markdown("## 4. Train a tiny Stable Diffusion\nThe three parts of Stable Diffusion, small, on Fashion-MNIST "
                    "with generated captions (\"a photo of a sneaker\"): **1.** a VAE learns to squeeze 32×32 images "
                    "into 4×8×8 latents and back; **2.** a UNet learns to predict the noise in those latents, "
                    "cross-attending to the frozen MiniLM's reading of the caption (dropped 10% of the time, so "
                    "classifier-free guidance works); **3.** they are assembled into a real `StableDiffusionPipeline`, "
                    "saved, and offered in part 1.")
        with gr.Row(equal_height=True):
            save_name = gr.Textbox("tiny-sd", label="Save as (local:<name>)")
            stages = gr.Radio(["both", "vae", "unet"], value="both", label="Stages",
                              info="unet: reuse the newest saved model's VAE")
            vae_seconds = gr.Number(PAGE_DEFAULTS.vae_seconds, precision=0, minimum=0, label="VAE seconds")
            vae_steps = gr.Number(PAGE_DEFAULTS.vae_steps, precision=0, minimum=0, label="VAE max steps (0 = no cap)")
            unet_seconds = gr.Number(PAGE_DEFAULTS.unet_seconds, precision=0, minimum=0, label="UNet seconds")
            unet_steps = gr.Number(PAGE_DEFAULTS.unet_steps, precision=0, minimum=0,
                                   label="UNet max steps (0 = no cap)")
            train_size = gr.Number(PAGE_DEFAULTS.train_size, precision=0, minimum=0, maximum=60_000,
                                   label="Training images (0 = all 60,000)")
        with gr.Row():
            train_button = gr.Button("Train", variant="primary")
            train_stop = gr.Button("Stop", variant="stop")
        train_status = gr.Markdown()
        with gr.Row():
            vae_plot = gr.Plot(label="1. VAE: reconstruction + KL", elem_id="diffusion-vae-loss")
            unet_plot = gr.Plot(label="2. UNet: noise-prediction MSE", elem_id="diffusion-unet-loss")
        reconstructions = gr.Image(label="Originals (top) and their VAE reconstructions (bottom)", height=160)
        samples = gr.Gallery(label="3. The assembled pipeline: the same seed at guidance 1, 3, 7", columns=1,
                             height=320)
        # 5. Forward process
        gr.Markdown("## 5. The forward process\nTraining teaches the UNet to undo noise added in closed form: "
                    "x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε. The schedule decides how fast the signal goes.")
        with gr.Row(equal_height=True):
            photo = gr.Dropdown([(caption, name) for name, (caption, _) in photos.items()],
                                value="astronaut" if "astronaut" in photos else next(iter(photos), None), label="Photo")
            schedule = gr.Radio(list(forward.SCHEDULES), value="cosine", label="Schedule")
            timestep = gr.Slider(0, forward.TRAIN_STEPS - 1, value=250, step=1, label="Timestep t")
            noise_seed = gr.Number(0, precision=0, label="Noise seed")
        forward_note = gr.Markdown()
        with gr.Row():
            noisy_photo = gr.Image(label="x_t", height=240)
            strip = gr.Gallery(label="The same noise at t = 0 … 999", columns=6, height=240)
        with gr.Row():
            alpha_plot = gr.Plot(label="ᾱ_t: signal variance left", elem_id="diffusion-alpha")
            snr_plot = gr.Plot(label="Signal-to-noise ratio (log10)", elem_id="diffusion-snr")

        # Events
        form = [model, prompt, negative_prompt, steps, guidance, seed, width, height, scheduler]
        load_button.click(open_model, [model], [model_info, guidance, negative_prompt, steps, width, height, scheduler],
                          api_name="diffusion_load", **HEAVY).then(
            count_tokens, [model, prompt], tokens, api_name="diffusion_tokens_after_load", **LIGHT)
        prompt.change(count_tokens, [model, prompt], tokens, api_name="diffusion_tokens", **LIGHT)
        generating = generate_button.click(
            generate_images, [*form, batch, decoder, history],
            [images, status, last_run, used_seed, replay_step, pngs, history, history_gallery, convergence],
            api_name="diffusion_generate", **HEAVY)
        sweeping = sweep_button.click(
            guidance_sweep, [model, prompt, negative_prompt, steps, seed, width, height, scheduler, decoder, history],
            [sweep_images, sweep_note, history, history_gallery], api_name="diffusion_guidance_sweep", **HEAVY)
        generate_stop.click(stop_generating, None, status, cancels=[generating, sweeping],
                            api_name="diffusion_stop", **LIGHT)
        gr.on([replay_step.input, replay_image.submit], replay, [last_run, replay_step, replay_image],
              [noisy_view, clean_view, replay_note], api_name="diffusion_replay", trigger_mode="always_last",
              **LIGHT)
        generating.success(replay, [last_run, replay_step, replay_image], [noisy_view, clean_view, replay_note],
                        api_name="diffusion_replay_last", **LIGHT)
        random_button.click(random_seed, None, seed, api_name="diffusion_random_seed", **LIGHT)
        reuse_button.click(reuse_seed, [last_run], seed, api_name="diffusion_reuse_seed", **LIGHT)
        png_upload.upload(restore_from_png, [png_upload], [*form, restore_note], api_name="diffusion_restore",
                          **LIGHT)
        history_gallery.select(restore_from_history, [history], [*form, restore_note],
                               api_name="diffusion_restore_history", **LIGHT)
        training = train_button.click(
            train_tiny_sd, [save_name, stages, vae_seconds, vae_steps, unet_seconds, unet_steps, train_size],
            [train_status, vae_plot, unet_plot, reconstructions, samples, model],
            api_name="diffusion_train", show_progress="hidden", **HEAVY)
        train_stop.click(stop_training, None, [train_status, vae_plot, unet_plot, reconstructions, samples, model],
                         cancels=[training], api_name="diffusion_train_stop", **LIGHT)
        forward_inputs = [photo, schedule, timestep, noise_seed]
        forward_outputs = [noisy_photo, strip, forward_note, alpha_plot, snr_plot]
        gr.on([page.load, schedule.change, timestep.release, photo.change, noise_seed.submit], show_forward,
              forward_inputs, forward_outputs, api_name="diffusion_forward", **LIGHT)
    return page
