"""Train the tiny Stable Diffusion on Fashion-MNIST: the diffusion page's training, also a script.

    python -m spaces.diffusion.train --vae-seconds 120 --unet-seconds 420 --save-as tiny-sd --output-dir runs/tiny-sd
    python -m spaces.diffusion.train --stages vae --vae-seconds 120 --output-dir runs/vae       # the VAE alone
    python -m spaces.diffusion.train --stages unet --base runs/vae --unet-seconds 420 ...       # reuse that VAE
    accelerate launch --multi_gpu --num_processes 2 -m spaces.diffusion.train ...             # DDP (GPUs, or CPUs)

Stable Diffusion in three parts, trained one after the other (the architecture is in spaces/diffusion/tiny.py):

1. VAE: an AutoencoderKL learns to squeeze 32x32 grey images into 4x8x8 latents and back: an L1 reconstruction
   loss plus a small KL term (per latent element) that keeps the latent space smooth enough to sample from.
   Its scaling factor is then set to 1/std of the training latents, so the UNet works on unit-variance latents.
2. UNet: the frozen VAE encodes every training image once, and the frozen MiniLM every distinct caption once
   (shared/fashion_captions.py: a few hundred); the UNet learns to predict the noise DDPM added to a latent, given
   the caption's token states. 10% of the captions are dropped (replaced by the empty string's encoding, which
   is what the pipeline feeds as the unconditional input), so classifier-free guidance works at sampling time.
   Gradients are clipped and an exponential moving average (EMA) of the weights is what gets saved.
3. Assembly: a real diffusers StableDiffusionPipeline (VAE, MiniLM, EMA UNet, DDIM), sampled once per class at
   guidance 1, 3 and 7 with the same seed, so the page can show what guidance does.

Written with Accelerate (`prepare`, `backward`, `unwrap_model`, `main_process_first`) so `accelerate launch`
scales it unchanged. --output-dir gets the pipeline folder (`pipeline/`; `vae/` for a VAE-only run) and
results.json (config, per-stage history, wall time per stage, final losses); --save-as also saves the pipeline
into the model cache as `local:<name>` for the "diffusion" role. The page calls `train()` in a job with
`on_event` and a stop Event.

Stop ends the stage under way at its next step. Stopped in the VAE stage, the run ends there: no UNet, no
pipeline (with --output-dir, the VAE trained so far is still written to `vae/`). Stopped in the UNet stage, the
UNet trained so far (its EMA) is still assembled, sampled and saved.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from shared import config_cli
from shared import fashion_captions as captions
from spaces.diffusion import tiny

STAGES = ("both", "vae", "unet")
SAMPLE_GUIDANCE = (1.0, 3.0, 7.0)  # the "samples" event: what guidance does, one image per class at each
SAMPLE_STEPS = 25  # DDIM steps for the samples event and the page's default
# The page's default guidance. benchmarks/diffusion.py --part training, PAGE_DEFAULTS run (100 samples per class): 48% of
# samples recognised as their prompted class at guidance 1, 80% at 3, 89% at 5, 91% at 7. 7 adds 2 points for
# harsher, less varied images.
DEFAULT_GUIDANCE = 5.0


@dataclass
class TrainConfig:
    stages: str = "both"  # "both", "vae" (the VAE alone) or "unet" (reuses the VAE of `base`)
    base: str = ""  # stages "unet": a folder with a vae/ inside (a saved pipeline, a VAE-only run), or local:<name>
    vae_seconds: float = 120.0  # wall time of the VAE stage; 0 = no limit (then vae_steps)
    vae_steps: int = 0  # cap on VAE optimizer steps; 0 = until the time runs out
    unet_seconds: float = 420.0  # wall time of the UNet stage, encoding the latents included; 0 = no limit
    unet_steps: int = 0  # cap on UNet optimizer steps; 0 = until the time runs out
    vae_batch_size: int = 16
    unet_batch_size: int = 64
    vae_learning_rate: float = 2e-3
    unet_learning_rate: float = 1e-3
    warmup: float = 0.03  # share of each stage's budget spent warming the learning rate up; then a cosine to 0
    kl_weight: float = 1e-4  # weight of the KL term (per latent element) against the L1 reconstruction (per pixel)
    caption_dropout: float = 0.1  # share of captions replaced by "" (classifier-free guidance needs it)
    ema_decay: float = 0.999  # at most; early on it is (1 + step) / (10 + step), as diffusers' EMAModel does
    grad_clip: float = 1.0  # max gradient norm (UNet)
    sample_steps: int = SAMPLE_STEPS  # DDIM steps of the "samples" event at the end
    # Training images, a seeded subset of the 60k (0 = all): encoding them is part of the UNet's budget (35 s for
    # 30k on 2 quiet cores, 2 minutes on a busy machine), and 1,156 steps of 64 are 5 epochs of 15k.
    train_size: int = 15000
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = leave torch's default (the page does: the setting is process-wide)
    output_dir: str = ""  # where the pipeline folder and results.json go; empty = do not write files
    save_as: str = ""  # also save the pipeline into the model cache as local:<name> (role "diffusion")

    def check(self) -> None:
        if self.stages not in STAGES:
            raise ValueError(f"stages must be one of {STAGES}, got {self.stages!r}")
        if self.stages == "unet" and not self.base:
            raise ValueError("stages 'unet' reuses a trained VAE: set base to a pipeline folder or local:<name>")
        if self.stages == "vae" and self.save_as:
            raise ValueError("save as needs a pipeline, and stages 'vae' trains no UNet: use stages 'both'")
        for name in ("vae_seconds", "vae_steps", "unet_seconds", "unet_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        if self.stages != "unet" and not self.vae_seconds and not self.vae_steps:
            raise ValueError("set a time budget (vae seconds) or a step cap (vae steps) for the VAE stage")
        if self.stages != "vae" and not self.unet_seconds and not self.unet_steps:
            raise ValueError("set a time budget (unet seconds) or a step cap (unet steps) for the UNet stage")
        for name in ("vae_batch_size", "unet_batch_size"):
            if not 1 <= getattr(self, name) <= 4096:
                raise ValueError(f"{name.replace('_', ' ')} must be between 1 and 4096, got {getattr(self, name)}")
        for name in ("vae_learning_rate", "unet_learning_rate"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name.replace('_', ' ')} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.kl_weight < 0:
            raise ValueError(f"kl weight must be >= 0, got {self.kl_weight}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema decay must be in [0, 1) (0: no averaging), got {self.ema_decay}")
        if self.grad_clip < 0:
            raise ValueError(f"grad clip must be >= 0 (0: no clipping), got {self.grad_clip}")
        if not 1 <= self.sample_steps <= 1000:
            raise ValueError(f"sample steps must be between 1 and 1000, got {self.sample_steps}")
        if not (self.train_size == 0 or 10 <= self.train_size <= 60000):
            raise ValueError(f"train size must be 0 (all 60,000) or between 10 and 60000, got {self.train_size}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got {self.threads}")


# The page's Train button: 120 + 430 s of stages, 9.3 minutes in all (loading, encoding, the samples and saving
# included). benchmarks/diffusion.py --part training measured it on a shared machine (load ~2, one torch thread): 452 VAE
# and 770 UNet steps, 89% of samples recognised at guidance 5. With the reference run's step counts (671 and
# 1,156, what 2 quiet cores do in that time) the same code reached 92%.
PAGE_DEFAULTS = TrainConfig(vae_seconds=120.0, unet_seconds=430.0)


# The help of every flag: one per TrainConfig field, named as the field with dashes (--vae-seconds).
FLAG_HELP: dict[str, str] = {
    "stages": "what to train: both (VAE then UNet), vae (the VAE alone) or unet (reuses the VAE of --base)",
    "base": "--stages unet: a folder with a vae/ inside (a saved pipeline, a --stages vae run) or local:<name>",
    "vae_seconds": "wall time of the VAE stage in seconds (0: none; then --vae-steps)",
    "vae_steps": "cap on VAE optimizer steps (0: none)",
    "unet_seconds": "wall time of the UNet stage in seconds, encoding the latents included "
                    "(0: none; then --unet-steps)",
    "unet_steps": "cap on UNet optimizer steps (0: none)",
    "vae_batch_size": "images per VAE step",
    "unet_batch_size": "latent-caption pairs per UNet step",
    "vae_learning_rate": "peak learning rate of the VAE (AdamW)",
    "unet_learning_rate": "peak learning rate of the UNet (AdamW)",
    "warmup": "share of each stage's budget spent warming the learning rate up (then a cosine to 0)",
    "kl_weight": "weight of the VAE's KL term (per latent element) against its L1 loss (per pixel)",
    "caption_dropout": "share of captions replaced by the empty string (classifier-free guidance)",
    "ema_decay": "decay of the UNet's exponential moving average, which is what gets saved (0: none)",
    "grad_clip": "max gradient norm of the UNet (0: no clipping)",
    "sample_steps": "DDIM steps of the samples shown at the end (one per class at guidance 1, 3 and 7)",
    "train_size": "training images, a seeded subset of Fashion-MNIST's 60,000 (0: all)",
    "seed": "seed for the subset, the batches, the noise and the initial weights",
    "threads": "torch CPU threads for this process (0: torch's default)",
    "output_dir": "where the pipeline folder and results.json go",
    "save_as": "also save the pipeline into the model cache as local:<name> for the diffusion role",
}


def command_line(config: TrainConfig, processes: int = 1) -> str:
    """The shell command that runs this configuration as a script (what the page shows)."""
    return config_cli.command_line(config, "spaces.diffusion.train", processes)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return config_cli.parse_config(TrainConfig, FLAG_HELP, "Train the tiny Stable Diffusion on Fashion-MNIST (accelerate-ready).", argv)


# ---------------------------------------------------------------------------------------------------------
# Pieces of the stages


def load_fashion_mnist() -> dict[str, np.ndarray]:
    from shared import assets

    with np.load(assets.ensure("fashion-mnist") / "fashion-mnist.npz") as data:
        return {name: data[name] for name in data.files}


def learning_rate_factor(progress: float, warmup: float) -> float:
    """Linear warmup, then a cosine down to 0 over the stage's budget (`progress` in [0, 1])."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


class Budget:
    """A stage's budget in seconds and/or steps, counted from the stage's start (its preparation included).

    progress(step) is the larger share spent (1 = done). The learning-rate schedule and the total-steps estimate
    count from `begin_loop()` instead: the preparation (encoding the latents) is no part of the loop's pace.
    """

    def __init__(self, seconds: float, steps: int):
        self.seconds, self.steps = seconds, steps
        self.started = self.loop_started = time.perf_counter()

    def begin_loop(self) -> None:
        self.loop_started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def progress(self, step: int) -> float:
        return max(step / self.steps if self.steps else 0.0, self.elapsed() / self.seconds if self.seconds else 0.0)

    def loop_progress(self, step: int) -> float:
        """Share of the loop's own budget spent: what the learning-rate schedule follows."""
        loop_seconds = self.seconds - (self.loop_started - self.started)
        in_loop = time.perf_counter() - self.loop_started
        return max(step / self.steps if self.steps else 0.0, in_loop / loop_seconds if self.seconds else 0.0)

    def total_steps(self, step: int) -> int:
        """The steps the stage will have taken when its budget ends: the cap, or an estimate from its pace."""
        if not self.seconds:
            return self.steps
        progress = max(self.loop_progress(step), 1e-9)
        estimate = max(step, round(step / progress))
        return min(estimate, self.steps) if self.steps else estimate


def vae_objective(vae):
    """The VAE stage's module: pixels -> (L1 per pixel, KL per latent element). A module (not a function) so
    that Accelerate can wrap it in DDP: `forward` is what a wrapped model can call. (Defined here so that
    importing this module does not import torch: the page imports it for PAGE_DEFAULTS.)"""
    import torch

    class VAEObjective(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, pixels, generator=None):
            posterior = self.vae.encode(pixels).latent_dist
            latents = posterior.sample(generator=generator)
            reconstruction = self.vae.decode(latents).sample
            elements = latents[0].numel()
            return (reconstruction - pixels).abs().mean(), posterior.kl().mean() / elements

    return VAEObjective()


def encode_latents(vae, pixels, batch_size: int = 500):
    """The posterior means and stds of `pixels` (n, 1, 32, 32), unscaled: the means are what the UNet learns to
    generate.

    The mean, not a sample: decoding the mean gives the VAE's best reconstruction (the previews show it); a sample
    adds posterior noise (its std is about a sixth of the latents' spread with this KL weight: results.json's
    "posterior_std_ratio") that the UNet would then learn to generate too, and one fixed sample per image, encoded
    once, is no augmentation.
    """
    import torch

    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            posterior = vae.encode(pixels[start:start + batch_size].to(vae.device)).latent_dist
            means.append(posterior.mean.cpu())
            stds.append(posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


def encode_captions(text_encoder, tokenizer, texts: list[str]):
    """MiniLM's last_hidden_state (n, TEXT_MAX_LENGTH, 384) of each text, padded and masked exactly as the
    pipeline's encode_prompt does (padding to max length, truncation, attention mask passed)."""
    import torch

    tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(text_encoder.device),
                            attention_mask=tokens.attention_mask.to(text_encoder.device)).last_hidden_state.cpu()


def update_ema(ema, model, decay: float) -> None:
    import torch

    with torch.no_grad():
        ema_params = list(ema.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - decay)


def sample_grid(pipe, prompts: list[str], guidance: float, seed: int, steps: int = SAMPLE_STEPS) -> np.ndarray:
    """One image per prompt at `guidance`, all from the same seed: uint8 (len(prompts), 32, 32)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                  output_type="np").images  # (n, 32, 32, 1) in [0, 1]
    return np.clip(images[..., 0] * 255 + 0.5, 0, 255).astype(np.uint8)


def resolve_base(base: str) -> Path:
    """The vae/ folder of `base`: a folder holding one, or a saved model's local:<name> label."""
    from shared.hub import LOCAL_PREFIX

    if base.startswith(LOCAL_PREFIX):
        from shared.registry import resolve

        base = resolve("diffusion", base).location
    folder = Path(base) / "vae"
    if not (folder / "config.json").exists():
        raise ValueError(f"base must hold a trained VAE in vae/ (a saved pipeline or a --stages vae run), "
                         f"got {base!r}")
    return folder


# ---------------------------------------------------------------------------------------------------------
# Training


def train(config: TrainConfig, on_event: Callable[[dict], None] | None = None,
          stop: threading.Event | None = None, text_location: str | None = None) -> dict:
    """Train the VAE, then the UNet, assemble the pipeline, sample it, save it. Returns the results.

    `on_event` receives, in order:
      {"type": "stage", "stage": "vae", "parameters": int}           (a stage begins; "assembly" at the end)
      {"type": "step", "stage": "vae", "step", "total_steps", "loss", "reconstruction", "kl", "lr", "elapsed"}
      {"type": "reconstructions", "step", "originals": uint8 (10, 32, 32), "reconstructions": uint8 (10, 32, 32)}
          (one image per class: at each quarter of the VAE stage and at its end)
      {"type": "stage", "stage": "unet", "parameters": int}          (before the latents are encoded: ~35 s)
      {"type": "scaling", "scaling_factor": float}                   (once the training latents are encoded)
      {"type": "step", "stage": "unet", "step", "total_steps", "loss", "lr", "elapsed"}
      {"type": "samples", "guidance": [1, 3, 7], "prompts": [10 texts], "images": [uint8 (10, 32, 32) per guidance]}
      {"type": "done", "results": dict}
    "total_steps" is the stage's step cap, or an estimate from its pace when it runs on time. Setting `stop` ends
    the stage under way at its next step (see the module docstring for what follows).
    """
    import copy

    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from shared.device import pick_device

    # 1. Check the inputs and gather what the run needs.
    config.check()
    stop = stop or threading.Event()
    if config.threads:
        torch.set_num_threads(config.threads)
    accelerator = Accelerator(cpu=pick_device() == "cpu")
    emit = on_event if on_event and accelerator.is_main_process else None
    set_seed(config.seed)
    run_started = time.perf_counter()
    if text_location is None:
        from shared import assets

        with accelerator.main_process_first():
            text_location = str(assets.ensure("all-minilm-l6-v2"))
    with accelerator.main_process_first():
        data = load_fashion_mnist()
    order = np.random.default_rng(config.seed).permutation(len(data["train_labels"]))
    train_ids = order[:config.train_size] if config.train_size else order
    pixels = tiny.pad_images(data["train_images"][train_ids])  # (n, 1, 32, 32) in [-1, 1], CPU
    labels = data["train_labels"][train_ids].astype(np.int64)
    # Each process draws its own batches and noise.
    generator = torch.Generator().manual_seed(config.seed + accelerator.process_index)
    device = accelerator.device
    # One test image per class: the reconstructions the page shows.
    preview_ids = [int(np.flatnonzero(data["test_labels"] == c)[0]) for c in range(len(captions.CLASS_NAMES))]
    previews = tiny.pad_images(data["test_images"][preview_ids])
    results: dict = {"config": asdict(config), "stages": {}, "history": {}, "stopped": False,
                     "processes": accelerator.num_processes}

    # 2. Stage 1, the VAE: L1 + KL on random batches until its budget is spent.
    if config.stages == "unet":
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(resolve_base(config.base))
    else:
        vae = tiny.create_vae(config.seed)
        if emit:
            emit({"type": "stage", "stage": "vae", "parameters": sum(p.numel() for p in vae.parameters())})
        objective = vae_objective(vae)
        optimizer = torch.optim.AdamW(objective.parameters(), lr=config.vae_learning_rate)
        objective, optimizer = accelerator.prepare(objective, optimizer)
        history = {"step": [], "loss": [], "reconstruction": [], "kl": [], "elapsed": []}
        budget = Budget(config.vae_seconds, config.vae_steps)
        step, next_preview = 0, 0.25

        def preview() -> None:
            vae.eval()
            with torch.no_grad():
                shown = vae.decode(vae.encode(previews.to(device)).latent_dist.mean).sample
            vae.train()
            if emit:
                emit({"type": "reconstructions", "step": step, "originals": tiny.to_uint8(previews),
                      "reconstructions": tiny.to_uint8(shown.clamp(-1, 1))})

        objective.train()
        while budget.progress(step) < 1 and not stop.is_set():
            lr = config.vae_learning_rate * learning_rate_factor(budget.loop_progress(step), config.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = torch.randint(len(pixels), (config.vae_batch_size,), generator=generator)
            reconstruction, kl = objective(pixels[batch].to(device), generator=generator)
            loss = reconstruction + config.kl_weight * kl
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            parts = accelerator.gather(torch.stack([loss, reconstruction, kl]).detach().float()[None]).mean(0).tolist()
            history["step"].append(step)
            for name, value in zip(("loss", "reconstruction", "kl"), parts):
                history[name].append(value)
            history["elapsed"].append(budget.elapsed())
            if emit:
                emit({"type": "step", "stage": "vae", "step": step, "total_steps": budget.total_steps(step),
                      "loss": parts[0], "reconstruction": parts[1], "kl": parts[2], "lr": lr,
                      "elapsed": budget.elapsed()})
            if budget.progress(step) >= next_preview and budget.progress(step) < 1:
                preview()
                next_preview += 0.25
        vae = accelerator.unwrap_model(objective).vae.eval()
        preview()
        results["stopped"] = stop.is_set()
        results["history"]["vae"] = history
        final = {name: float(np.mean(history[name][-20:])) if step else None for name in ("loss", "reconstruction")}
        results["stages"]["vae"] = {"steps": step, "seconds": budget.elapsed(), "stopped": stop.is_set(),
                                    "final_loss": final["loss"], "final_reconstruction": final["reconstruction"]}
    vae.requires_grad_(False)
    vae.eval()

    # 3. The latent scaling factor: 1/std of the training latents, so the UNet sees unit-variance latents. The
    # pipeline divides by vae.config.scaling_factor before decoding, so it must be in the saved config. When the
    # UNet stage follows, encoding the latents is its first part (and counts in its budget).
    stage_started = time.perf_counter()
    unet = None
    if config.stages != "vae" and not results["stopped"]:
        unet = tiny.create_unet(config.seed + 1)
        if emit:
            emit({"type": "stage", "stage": "unet", "parameters": sum(p.numel() for p in unet.parameters())})
    latent_means, latent_stds = encode_latents(vae.to(device), pixels)
    scaling_factor = float(1.0 / latent_means.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    encoding_seconds = time.perf_counter() - stage_started
    results["scaling_factor"] = scaling_factor
    results["posterior_std_ratio"] = float(latent_stds.mean() * scaling_factor)
    if emit:
        emit({"type": "scaling", "scaling_factor": scaling_factor})
    if unet is None:
        return finish(config, results, None, vae, accelerator, emit, run_started)

    # 4. Stage 2, the UNet: the captions' token states once (a few hundred distinct texts, and ""), then
    # noise-prediction MSE on random (latent, caption) pairs until its budget (which counted the encoding) ends.
    budget = Budget(config.unet_seconds, config.unet_steps)
    budget.started = stage_started
    text_encoder, tokenizer = tiny.load_text_encoder(text_location)
    caption_rows = captions.training_captions()
    caption_states = encode_captions(text_encoder.to(device), tokenizer, [text for text, _ in caption_rows] + [""])
    empty_caption = len(caption_rows)  # the last row: the unconditional input
    caption_labels = np.array([label for _, label in caption_rows])
    class_caption_ids = [torch.from_numpy(np.flatnonzero(caption_labels == c))
                         for c in range(len(captions.CLASS_NAMES))]
    latents = latent_means * scaling_factor
    labels_tensor = torch.from_numpy(labels)
    ema = copy.deepcopy(unet).requires_grad_(False).to(device)
    scheduler = tiny.training_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_learning_rate)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    history = {"step": [], "loss": [], "elapsed": []}
    budget.begin_loop()
    step = 0
    unet.train()
    while budget.progress(step) < 1 and not stop.is_set():
        lr = config.unet_learning_rate * learning_rate_factor(budget.loop_progress(step), config.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = torch.randint(len(latents), (config.unet_batch_size,), generator=generator)
        # One caption of the image's class each, and "" for caption_dropout of them.
        chosen = torch.stack([ids[torch.randint(len(ids), (1,), generator=generator)[0]]
                              for ids in (class_caption_ids[label] for label in labels_tensor[batch].tolist())])
        dropped = torch.rand(len(batch), generator=generator) < config.caption_dropout
        chosen = torch.where(dropped, torch.full_like(chosen, empty_caption), chosen)
        clean = latents[batch]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(batch),), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        prediction = unet(noisy.to(device), timesteps.to(device),
                          encoder_hidden_states=caption_states[chosen].to(device)).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.to(device))
        accelerator.backward(loss)
        if config.grad_clip:
            accelerator.clip_grad_norm_(unet.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        update_ema(ema, accelerator.unwrap_model(unet), decay)
        mean_loss = accelerator.gather(loss.detach().float().reshape(1)).mean().item()
        history["step"].append(step)
        history["loss"].append(mean_loss)
        history["elapsed"].append(budget.elapsed())
        if emit:
            emit({"type": "step", "stage": "unet", "step": step, "total_steps": budget.total_steps(step),
                  "loss": mean_loss, "lr": lr, "elapsed": budget.elapsed()})
    results["stopped"] = stop.is_set()
    results["history"]["unet"] = history
    results["stages"]["unet"] = {"steps": step, "seconds": budget.elapsed(), "encoding_seconds": encoding_seconds,
                                 "stopped": stop.is_set(),
                                 "final_loss": float(np.mean(history["loss"][-50:])) if step else None}
    if not step:
        return finish(config, results, None, vae, accelerator, emit, run_started)

    # 5. Assembly: the EMA UNet into a real StableDiffusionPipeline; one sample per class at guidance 1, 3, 7.
    assembly_started = time.perf_counter()
    if emit:
        emit({"type": "stage", "stage": "assembly", "parameters": 0})
    final_unet = ema if config.ema_decay else accelerator.unwrap_model(unet)
    pipe = tiny.assemble(vae, final_unet.eval(), text_location, text_parts=(text_encoder, tokenizer))
    prompts = [captions.class_caption(c) for c in range(len(captions.CLASS_NAMES))]
    grids = [sample_grid(pipe, prompts, guidance, config.seed, config.sample_steps) for guidance in SAMPLE_GUIDANCE]
    results["stages"]["assembly"] = {"seconds": time.perf_counter() - assembly_started}
    if emit:
        emit({"type": "samples", "guidance": list(SAMPLE_GUIDANCE), "prompts": prompts, "images": grids})
    return finish(config, results, pipe, vae, accelerator, emit, run_started)


def finish(config: TrainConfig, results: dict, pipe, vae, accelerator, emit, run_started: float) -> dict:
    """Save what the run made (the main process only), emit "done", and return the results (with the objects)."""
    results["wall_seconds"] = time.perf_counter() - run_started
    if accelerator.is_main_process:
        save_run(config, results, pipe, vae)
    accelerator.wait_for_everyone()
    if emit:
        emit({"type": "done", "results": results})
    results["pipeline"], results["vae"] = pipe, vae
    return results


def save_run(config: TrainConfig, results: dict, pipe, vae) -> None:
    """Write the pipeline folder (or the VAE alone) and results.json to output_dir, and/or save the pipeline
    into the model cache (--save-as). A run stopped before it had a UNet saves no pipeline."""

    def write(folder: Path) -> None:
        pipe.save_pretrained(folder, safe_serialization=True)

    if config.save_as and pipe is not None:
        from shared.registry import save_local_model

        source = str(Path(config.output_dir).resolve()) if config.output_dir else "diffusion page"
        results["label"] = save_local_model(config.save_as, "diffusion", write, source_run=source)
    if config.output_dir:
        folder = Path(config.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if pipe is not None:
            write(folder / "pipeline")
        else:
            vae.save_pretrained(folder / "vae", safe_serialization=True)
        (folder / "results.json").write_text(json.dumps(results, indent=1))


def main(argv: list[str] | None = None) -> dict:
    config = parse_args(argv)
    last_print = [0.0]

    def report(event: dict) -> None:
        if event["type"] == "stage":
            print(f"stage {event['stage']}: {event['parameters']:,} parameters", flush=True)
        elif event["type"] == "step" and (time.perf_counter() - last_print[0] > 10 or event["step"] == 1):
            last_print[0] = time.perf_counter()
            print(f"{event['stage']} step {event['step']}/{event['total_steps']} ({event['elapsed']:.0f} s): "
                  f"loss {event['loss']:.4f}", flush=True)
        elif event["type"] == "scaling":
            print(f"latent scaling factor {event['scaling_factor']:.4f}", flush=True)

    results = train(config, on_event=report)
    stages = ", ".join(f"{name} {stage.get('steps', '-')} steps in {stage['seconds']:.0f} s"
                       for name, stage in results["stages"].items())
    print(f"{stages}; {results['wall_seconds']:.0f} s in all; saved as {results.get('label', '-')}")
    return results


if __name__ == "__main__":
    main()
