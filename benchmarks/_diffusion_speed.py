"""Seconds per 512x512 image of the Stable Diffusion page's default path against plain diffusers, in one run.

    .venv/bin/python benchmarks/diffusion.py --part speed [--runs 2] [--candidates] [--fresh]

The sd-turbo architecture with random weights (the hub is out of reach offline; random weights of the real
configuration take the same time): the UNet of SD 2.1 (865M parameters), OpenCLIP ViT-H's text tower (23
layers, 1024 wide), the SD VAE, a default AutoencoderTiny for TAESD and EulerDiscreteScheduler with trailing
timesteps, as stabilityai/sd-turbo ships them. They are written once to PLAYGROUND_HOME/benchmarks/ (about
5 GB, plus 5 GB of ONNX builds under PLAYGROUND_HOME/onnx/) and reused by later runs, which then skip the
export (minutes on 2 cores); `--fresh` writes them anew.

1. plain: `StableDiffusionPipeline` in float32 with the full VAE, `pipe(prompt, ...)`: the reference.
2. the page's default path: `shared.diffusion.load_diffuser(..., fast=True)` (TAESD decode; UNet and text
   encoder on ONNX Runtime, exported into a temporary store first), the pipeline run with
   output_type="latent", then `Diffuser.decode`, as the page does.
Both at 1 and 4 steps without guidance (sd-turbo's use), interleaved, one warm-up each, then the median of
`--runs`. `--candidates` also times each part alone (UNet step, text encoder, decoders) on each backend tried.
Anchor: FastSD CPU reports SD-Turbo 1 step 7.8 s in PyTorch against 1.7 s with OpenVINO + TAESD (4.6x) on a
Core i7-12700. Target: the default path at least 3x faster than plain diffusers, at 1 and at 4 steps.

Ends with one `RESULT <name>: <figure> (goal <goal>) MET|MISSED` line per figure; exits 0 either way,
1 only when something could not be measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import result_line  # first: puts the repo on sys.path and keeps the hub off

SIZE = 512
STEPS = (1, 4)
SPEEDUP_GOAL = 3.0
PROMPT = "a photo of a cat sitting on a red sofa, soft light"


def write_sd_turbo(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Random weights of stabilityai/sd-turbo's configuration as a pipeline folder, and a default
    AutoencoderTiny (TAESD's configuration) beside it; returns (pipeline folder, TAESD folder)."""
    import torch
    from diffusers import (AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tests.retrieval.tiny import write_tokenizer_files  # a byte-level BPE CLIPTokenizer accepts (no CLIP vocab offline)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(  # SD 2.1's UNet at 512 px
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
        act_fn="silu", norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768, scaling_factor=0.18215)
    text_encoder = CLIPTextModel(CLIPTextConfig(  # OpenCLIP ViT-H/14's text tower
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=1024))
    scratch = folder / "tokenizer-files"
    scratch.mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(scratch)
    tokenizer = CLIPTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"), model_max_length=77)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, prediction_type="epsilon",
                                       timestep_spacing="trailing", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder / "sd-turbo-random")
    AutoencoderTiny().save_pretrained(folder / "taesd-random")
    return folder / "sd-turbo-random", folder / "taesd-random"


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def plain_image(pipe, steps: int) -> Callable[[], object]:
    import torch

    def generate():
        with torch.inference_mode():
            return pipe(PROMPT, num_inference_steps=steps, guidance_scale=0.0, height=SIZE, width=SIZE,
                        generator=torch.Generator("cpu").manual_seed(0)).images
    return generate


def page_image(diffuser, steps: int) -> Callable[[], object]:
    import torch

    def generate():
        with torch.inference_mode():
            latents = diffuser.pipe(PROMPT, num_inference_steps=steps, guidance_scale=0.0, height=SIZE, width=SIZE,
                                    generator=torch.Generator("cpu").manual_seed(0), output_type="latent").images
        return diffuser.decode(latents)
    return generate


def candidate_lines(plain, diffuser, taesd_folder: Path) -> list[str]:
    """Each part alone on each backend tried (seconds, best of 2 after a warm-up)."""
    import torch
    from diffusers import AutoencoderTiny

    def best(function, runs=2):
        function()
        return min(timed(function) for _ in range(runs))

    lines = []
    latents = torch.randn(1, 4, SIZE // 8, SIZE // 8)
    embeds = torch.randn(1, 77, 1024)
    ids = plain.tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.inference_mode():
        unet_torch = best(lambda: plain.unet(latents, 999, embeds))
        lines.append(f"unet step  pytorch fp32            {unet_torch:6.2f} s")
        lines.append(f"unet step  onnxruntime fp32        {best(lambda: diffuser.pipe.unet(latents, 999, embeds)):6.2f} s")
        plain.unet.to(memory_format=torch.channels_last)
        lines.append(f"unet step  pytorch channels-last   {best(lambda: plain.unet(latents, 999, embeds)):6.2f} s")
        plain.unet.to(memory_format=torch.contiguous_format)
        lines.append(f"text       pytorch fp32            {best(lambda: plain.text_encoder(ids)):6.2f} s")
        lines.append(f"text       onnxruntime fp32        {best(lambda: diffuser.pipe.text_encoder(ids)):6.2f} s")
        lines.append(f"decode     full VAE fp32           {best(lambda: plain.vae.decode(latents), 1):6.2f} s")
        taesd = AutoencoderTiny.from_pretrained(taesd_folder).eval()
        lines.append(f"decode     TAESD                   {best(lambda: taesd.decode(latents)):6.2f} s")
        taesd.to(memory_format=torch.channels_last)
        lines.append(f"decode     TAESD channels-last     {best(lambda: taesd.decode(latents)):6.2f} s")
    return lines


def speed_results(runs: int = 2, candidates: bool = False, fresh: bool = False, echo: bool = False) -> list[str]:
    """RESULT lines (and the figures before them): seconds per 512x512 image, plain vs the page's default path.
    `echo` prints each line as soon as it is measured."""
    import torch
    from diffusers import StableDiffusionPipeline

    from shared.diffusion import load_diffuser
    from shared.settings import read_settings

    lines = []

    def say(line: str) -> None:
        lines.append(line)
        if echo:
            print(line, flush=True)

    work = read_settings().home / "benchmarks" / "sd-turbo-random"
    if fresh or not (work / "taesd-random" / "config.json").is_file():
        shutil.rmtree(work, ignore_errors=True)
        work.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".sd-turbo-random-", dir=work.parent))
        write_sd_turbo(scratch)
        scratch.rename(work)  # whole or not at all
    # 1. Load the random sd-turbo both ways (the default path exports its ONNX parts the first time).
    started = time.perf_counter()
    folder, taesd_folder = work / "sd-turbo-random", work / "taesd-random"
    plain = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None,
                                                    requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    diffuser = load_diffuser(str(folder), "cpu", torch.float32, fast=True, fast_decoder_source=str(taesd_folder))
    say(f"setup (load, export when new): {time.perf_counter() - started:.0f} s; default path: "
        f"{'; '.join(diffuser.notes)}; threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    # 2. Warm up each path once, then time them interleaved.
    timed(plain_image(plain, 1))
    timed(page_image(diffuser, 1))
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(runs):
        for steps in STEPS:
            times.setdefault(("plain", steps), []).append(timed(plain_image(plain, steps)))
            times.setdefault(("page", steps), []).append(timed(page_image(diffuser, steps)))
    # 3. The figures, then the parts alone when asked.
    results = []
    for steps in STEPS:
        plain_runs, page_runs = times[("plain", steps)], times[("page", steps)]
        ratio = statistics.median(plain_runs) / statistics.median(page_runs)
        say(f"{steps} step(s), {SIZE}x{SIZE}: plain fp32 + full VAE {statistics.median(plain_runs):.1f} s; "
            f"default path {statistics.median(page_runs):.1f} s; {ratio:.2f}x "
            f"(runs: plain {[round(t, 1) for t in plain_runs]}, page {[round(t, 1) for t in page_runs]})")
        results.append(result_line(f"sd_turbo_speedup_{steps}_step{'s' if steps > 1 else ''}", ratio,
                                   f">= {SPEEDUP_GOAL:g}x", ratio >= SPEEDUP_GOAL, unit="x"))
    if candidates:
        for line in candidate_lines(plain, diffuser, taesd_folder):
            say(line)
    say(f"load average after: {os.getloadavg()[0]:.1f}")
    return lines + results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each path and step count (median)")
    parser.add_argument("--candidates", action="store_true", help="also time each part alone on each backend")
    parser.add_argument("--fresh", action="store_true", help="write the random model (and so its ONNX builds) anew")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    try:
        lines = speed_results(args.runs, args.candidates, args.fresh, echo=True)
    except Exception as error:  # could not measure
        print(f"could not measure: {type(error).__name__}: {error}")
        return 1
    for line in lines:
        if line.startswith("RESULT"):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
