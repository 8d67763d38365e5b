"""Text to image that can be watched, stopped and replayed: a diffusers pipeline run step by step.

    diffuser = load_diffuser("local:tiny-sd")                     # through the model cache
    for update in stream_images(diffuser, Settings(prompt="a photo of a sneaker", steps=25, ...)):
        update.step, update.preview                               # x̂₀ of every image after each step (cheap decode)
    update.generation.images, update.generation.paths             # the final images, as PNGs with their settings
    replay_frames(diffuser, update.generation, step=10)           # the noisy latent x_t and x̂₀ at step 10

The pipeline runs as a job (shared/jobs.py) with `output_type="latent"`, so the page keeps the latents and
decodes them itself (`Diffuser.decode`: TAESD on the fast path, the full VAE on request). The scheduler the
visitor chose is a fresh instance for each run whose `step` is wrapped to record, at every step, the noisy
latent it received (x_t) and the clean latent it predicted (x̂₀): what the replay slider shows. Stop sets the
pipeline's `_interrupt` at the next step's callback (diffusers then skips the remaining steps); the images of a
stopped run are the last x̂₀, the best guess of the finished image at that point.

Each image of a batch has its own seeded generator (seed, seed + 1, ...), as AUTOMATIC1111 does, so image i of
a batch is the same image as a batch of one with seed + i, and the same seed gives the same bytes on a CPU.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared import jobs
from spaces.diffusion.settings import Limits, Settings, check_settings, write_png

GENERATE_JOB = "diffusion-generate"
OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "DefaultCPUAllocator")


@dataclass
class StepRecord:
    """One denoising step of every image in the batch: latents as numpy (batch, channels, h, w)."""
    index: int  # 0-based
    timestep: int
    noisy: np.ndarray  # x_t: the latent the step started from, on the variance-preserving scale (as trained)
    predicted: np.ndarray  # x̂₀: the clean latent the model predicted at this step


@dataclass
class Generation:
    settings: Settings
    images: list = field(default_factory=list)  # PIL images
    paths: list[Path] = field(default_factory=list)  # the PNGs, settings inside
    steps: list[StepRecord] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    decoder: str = ""  # which decoder made the final images

    def summary(self) -> str:
        s = self.settings
        made = "stopped after" if self.interrupted else "made in"
        return (f"{len(self.images)} image(s) {made} {len(self.steps)} of {s.steps} steps, {self.seconds:.1f} s; "
                f"seed {s.seed}, guidance {s.guidance:g}, {s.scheduler}, {s.width}x{s.height}, decoded with "
                f"{self.decoder}.")


@dataclass
class Update:
    step: int  # steps done
    total: int
    preview: list = field(default_factory=list)  # x̂₀ of each image, decoded cheaply
    generation: Generation | None = None  # set on the last update


# ---- the model ----------------------------------------------------------------------------------------------


def load_diffuser(choice: str | None) -> Any:
    """The Diffuser (shared/diffusion.py) for the visitor's choice (hub id or local:<name>), through the cache."""
    import shared.loaders  # noqa: F401  (registers the "diffusion" loader)
    from shared.cache import LoadSpec, get_cache
    from shared.registry import resolve

    source = resolve("diffusion", choice)
    return get_cache().get(LoadSpec("diffusion", source.location, label=source.label))


def limits_of(diffuser) -> Limits:
    return Limits(max_tokens=int(diffuser.pipe.tokenizer.model_max_length), turbo=bool(diffuser.turbo),
                  native_size=int(diffuser.native_size))


def count_tokens(diffuser, text: str) -> int:
    """Tokens the text encoder would read, its start and end tokens included."""
    return len(diffuser.pipe.tokenizer(text, truncation=False).input_ids)


def token_view(diffuser, text: str) -> tuple[int, int, str]:
    """(tokens, limit, the part the encoder would cut off) for the page's Tokens box."""
    tokenizer = diffuser.pipe.tokenizer
    ids = tokenizer(text or "", truncation=False).input_ids
    limit = int(tokenizer.model_max_length)
    cut = tokenizer.decode(ids[limit - 1:-1]) if len(ids) > limit else ""
    return len(ids), limit, cut


# ---- schedulers ---------------------------------------------------------------------------------------------


def make_scheduler(name: str, config) -> Any:
    """A fresh scheduler of the chosen kind, from the model's own scheduler configuration (its β schedule,
    prediction type and timestep spacing are the model's; only the sampling method changes)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    if name == "DDPM":
        return DDPMScheduler.from_config(config)
    if name == "DDIM":
        return DDIMScheduler.from_config(config)
    if name == "Euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "DPM-Solver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    raise ValueError(f"scheduler must be one of DDPM, DDIM, Euler, DPM-Solver++; got {name!r}")


def native_scheduler(diffuser) -> str:
    """Our name for the sampler the model ships with (the page's default for it)."""
    kind = type(diffuser.pipe.scheduler).__name__
    return {"DDPMScheduler": "DDPM", "DDIMScheduler": "DDIM", "EulerDiscreteScheduler": "Euler",
            "EulerAncestralDiscreteScheduler": "Euler", "DPMSolverMultistepScheduler": "DPM-Solver++"}.get(kind, "DDIM")


def record_steps(scheduler, records: list[StepRecord]) -> None:
    """Wrap `scheduler.step` so each call appends what it saw (x_t) and predicted (x̂₀) to `records`.

    Euler works on x = x̂₀ + σ·ε (σ up to ~15): its input is divided by √(σ² + 1) to be shown on the scale the
    other samplers (and training) use. DDPM, DDIM and Euler return x̂₀ (`pred_original_sample`); DPM-Solver++
    converts the model's output to x̂₀ itself and keeps it (`model_outputs[-1]`)."""
    original_step = scheduler.step
    sigma_space = float(scheduler.init_noise_sigma) > 1.0

    def step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        noisy = sample
        if sigma_space:
            sigma = scheduler.sigmas[scheduler.step_index if scheduler.step_index is not None else 0]
            noisy = sample / (sigma**2 + 1) ** 0.5
        output = original_step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        predicted = getattr(output, "pred_original_sample", None)
        if predicted is None:
            predicted = scheduler.model_outputs[-1]
        records.append(StepRecord(len(records), int(timestep), noisy.detach().float().cpu().numpy(),
                                  predicted.detach().float().cpu().numpy()))
        return output if return_dict else (output.prev_sample,)

    scheduler.step = step


# ---- generation ---------------------------------------------------------------------------------------------


def outputs_dir() -> Path:
    from shared.settings import read_settings

    return read_settings().outputs_dir / "diffusion"


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or any(text in str(error) for text in OUT_OF_MEMORY)


def stream_images(diffuser, settings: Settings, stop: threading.Event | None = None, key: str = "",
                  full_decoder: bool = False, out_dir: Path | None = None) -> Iterator[Update]:
    """Yield an Update after each denoising step (with x̂₀ previews), then one with the finished Generation.
    Setting `stop` (or `jobs.stop(key, GENERATE_JOB)`), or closing this generator, interrupts the pipeline at
    its next step; the job is always joined and its error re-raised here.

    1. Check the settings. 2. Run the pipeline as a job, the scheduler recording each step. 3. Stream the
    previews. 4. Decode the final latents (or the last x̂₀ when stopped) and save them as PNGs."""
    import torch

    # 1. Check the settings against the model (token window, guidance on a turbo model).
    settings = check_settings(settings, limits_of(diffuser), lambda text: count_tokens(diffuser, text))
    stop = stop if stop is not None else threading.Event()
    pipe = diffuser.pipe
    records: list[StepRecord] = []
    updates: queue.Queue = queue.Queue()

    def on_step_end(pipeline, index: int, timestep, tensors: dict) -> dict:
        """After each step: stop at the visitor's word, else send the step's x̂₀ to the page."""
        if stop.is_set():
            pipeline._interrupt = True
            return {}
        preview = diffuser.preview(torch.from_numpy(records[-1].predicted), cheap=True)
        updates.put(Update(index + 1, settings.steps, preview))
        return {}

    def work(stop: threading.Event) -> Any:
        # 2. The pipeline, with this run's scheduler (the cached pipeline's own is put back afterwards).
        generators = [torch.Generator("cpu").manual_seed(settings.seed + i) for i in range(settings.batch)]
        shipped = pipe.scheduler
        scheduler = make_scheduler(settings.scheduler, shipped.config)
        record_steps(scheduler, records)
        pipe.scheduler = scheduler
        try:
            with torch.inference_mode():
                return pipe(prompt=settings.prompt, negative_prompt=settings.negative_prompt or None,
                            num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                            height=settings.height, width=settings.width, num_images_per_prompt=settings.batch,
                            generator=generators, output_type="latent", callback_on_step_end=on_step_end,
                            callback_on_step_end_tensor_inputs=["latents"]).images
        finally:
            pipe.scheduler = shipped
            updates.put(None)

    # 3. Stream the previews while the job runs (jobs.running joins it and re-raises its error).
    started = time.perf_counter()
    try:
        with jobs.running(work, name=GENERATE_JOB, key=key, stop=stop) as job:
            while (update := updates.get()) is not None:
                yield update
    except Exception as error:
        if is_out_of_memory(error):
            gc.collect()
            raise ValueError(f"The run ran out of memory at {settings.width}x{settings.height} x {settings.batch}: "
                             "lower the size or the batch. The app is still running.") from None
        raise
    # 4. The final images: the finished latents, or a stopped run's last x̂₀.
    generation = Generation(settings, steps=records, seconds=time.perf_counter() - started,
                            interrupted=stop.is_set() and len(records) < settings.steps)
    if generation.interrupted and not records:
        yield Update(0, settings.steps, [], generation)
        return
    latents = torch.from_numpy(records[-1].predicted) if generation.interrupted else job.result
    full = full_decoder or diffuser.fast_decoder is None
    with torch.inference_mode():
        generation.images = diffuser.decode(latents, full=full)
    generation.decoder = "the full VAE" if full else "TAESD (fast)"
    generation.seconds = time.perf_counter() - started
    folder = out_dir or outputs_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i, image in enumerate(generation.images):
        one = settings.for_image(i)
        generation.paths.append(write_png(image, one, folder / f"{stamp}-{one.seed}.png"))
    yield Update(len(records), settings.steps, generation.images, generation)


def replay_frames(diffuser, generation: Generation, step: int, image: int = 0) -> tuple[Any, Any]:
    """The noisy latent x_t a step started from and the x̂₀ it predicted, decoded cheaply, for image `image`."""
    import torch

    if not generation.steps:
        raise ValueError("This run has no steps to replay: generate an image first.")
    if step is None or not 1 <= step <= len(generation.steps):
        raise ValueError(f"step must be from 1 to {len(generation.steps)}, got {step}")
    if not 0 <= image < generation.settings.batch:
        raise ValueError(f"image must be from 0 to {generation.settings.batch - 1}, got {image}")
    record = generation.steps[int(step) - 1]
    with torch.inference_mode():
        noisy = diffuser.preview(torch.from_numpy(record.noisy[image:image + 1]))[0]
        predicted = diffuser.preview(torch.from_numpy(record.predicted[image:image + 1]))[0]
    return noisy, predicted
