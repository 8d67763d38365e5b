"""The tiny Stable Diffusion the diffusion page trains: wall time per stage, and how often its samples look like
the class they were prompted with.

    .venv/bin/python benchmarks/diffusion.py --part training [--threads 1] [--per-prompt 100] [--guidance 1,5,3,7]

1. Train with spaces/diffusion/train.py PAGE_DEFAULTS (the Train button's run): wall time of each stage and in all.
   Target: <= 10 minutes on this machine.
2. A judge: a small CNN trained here on Fashion-MNIST (2,000 steps: about a minute); its accuracy on the test split, and on
   the test images passed through the trained VAE (what the VAE alone costs in recognisability).
3. Sample `--per-prompt` images per prompt, one prompt per class ("a photo of a sneaker."), at guidance 1 and at
   the page's DEFAULT_GUIDANCE (and 3 and 7), through the saved pipeline reloaded with
   `StableDiffusionPipeline.from_pretrained`; the share the judge recognises as the prompted class. Targets:
   >= 70% at the default guidance, and more than at guidance 1. A 10x10 grid PNG per prompt and guidance goes to
   test-output/diffusion/.

`training_results(out_dir)` returns the RESULT lines (benchmarks/diffusion.py calls it); run as a script it
prints them and exits 0 either way (1 only when it could not measure).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from common import REPO_ROOT, result_line  # first: puts the repo on sys.path and keeps the hub off

GOAL_RECOGNISED = 0.70
GOAL_UNSEEN = 0.60  # issue 22: the frozen test wordings, at the default guidance
GOAL_MINUTES = 10.0
JUDGE_STEPS = 2000  # batches of 64: about two epochs


def train_judge(data: dict, steps: int = JUDGE_STEPS, seed: int = 0):
    """A 3-conv CNN classifier of 28x28 Fashion-MNIST images (inputs in [-1, 1]): a fixed number of steps, not
    seconds, so that its accuracy (and every figure it judges) does not depend on how busy the machine is."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    judge = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14x14
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),  # 3x3
        nn.Linear(64 * 9, 10))
    images = torch.from_numpy(data["train_images"]).float().div(127.5).sub(1).unsqueeze(1)
    labels = torch.from_numpy(data["train_labels"].astype("int64"))
    optimizer = torch.optim.AdamW(judge.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for group in optimizer.param_groups:  # a linear decay: a steadier final judge
            group["lr"] = 3e-3 * (1 - step / steps)
        batch = torch.randint(len(images), (64,), generator=generator)
        loss = nn.functional.cross_entropy(judge(images[batch]), labels[batch])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return judge.eval()


def judge_labels(judge, images) -> "np.ndarray":  # noqa: F821
    """Predicted classes of uint8 images, (n, 28, 28) or (n, 32, 32) (then the padded border is cropped)."""
    import numpy as np
    import torch

    images = np.asarray(images)
    if images.shape[-1] == 32:
        images = images[:, 2:30, 2:30]
    pixels = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)
    with torch.no_grad():
        return torch.cat([judge(pixels[i:i + 1000]).argmax(1) for i in range(0, len(pixels), 1000)]).numpy()


def save_grid(images, path: Path) -> None:
    """uint8 (n, 32, 32) -> a square-ish grid PNG (grey)."""
    import math

    import numpy as np
    from PIL import Image

    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    grid = np.zeros((rows * 32, columns * 32), dtype=np.uint8)
    for i, image in enumerate(images):
        grid[(i // columns) * 32:(i // columns + 1) * 32, (i % columns) * 32:(i % columns + 1) * 32] = image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid, mode="L").save(path)


def training_results(out_dir: Path | str = REPO_ROOT / "test-output" / "diffusion", threads: int = 0,
                     per_prompt: int = 100, guidances: tuple[float, ...] | None = None,
                     steps: tuple[int, int] | None = None, evaluate_only: bool = False) -> list[str]:
    """Train with PAGE_DEFAULTS, judge the samples; returns the RESULT lines (and prints progress).

    `steps` = (VAE steps, UNet steps) replaces the time budgets with step caps: the quality of a run of known
    length (such as the reference run's 671 and 1,156 steps) whatever the machine's load; the minutes then say
    how long that took here. `evaluate_only` judges the run already in out_dir/run instead of training one.
    """
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from shared import fashion_captions as captions
    from spaces.diffusion import tiny
    from spaces.diffusion import train as sd_train

    out_dir = Path(out_dir)
    if threads:  # the judge and the sampling too (training sets it again from its config)
        torch.set_num_threads(threads)
    # Guidance 1 and the default always: the targets compare them.
    guidances = tuple(dict.fromkeys((1.0, sd_train.DEFAULT_GUIDANCE, *(guidances or (3.0, 7.0)))))
    lines = []

    # 1. Train the page's default run.
    config = dataclasses.replace(sd_train.PAGE_DEFAULTS, output_dir=str(out_dir / "run"), threads=threads)
    if steps:
        config = dataclasses.replace(config, vae_seconds=0.0, vae_steps=steps[0], unet_seconds=0.0, unet_steps=steps[1])
    if evaluate_only:
        from diffusers import AutoencoderKL

        results = json.loads((out_dir / "run" / "results.json").read_text())
        results["vae"] = AutoencoderKL.from_pretrained(out_dir / "run" / "pipeline" / "vae").eval()
    else:
        print(f"training: {sd_train.command_line(config)}", flush=True)
        results = sd_train.main(sd_train.command_line(config).split()[3:])
    stages = results["stages"]
    minutes = results["wall_seconds"] / 60
    for name, stage in stages.items():
        print(f"  {name}: {stage.get('steps', '-')} steps in {stage['seconds']:.0f} s "
              f"(final loss {stage.get('final_loss')})", flush=True)

    # 2. The judge, on the test split and on VAE reconstructions of it.
    data = sd_train.load_fashion_mnist()
    started = time.perf_counter()
    judge = train_judge(data)
    judge_seconds = time.perf_counter() - started
    test_accuracy = float(np.mean(judge_labels(judge, data["test_images"]) == data["test_labels"]))
    vae = results["vae"]
    test_pixels = tiny.pad_images(data["test_images"][:2000])
    with torch.no_grad():
        rebuilt = torch.cat([vae.decode(vae.encode(test_pixels[i:i + 500]).latent_dist.mean).sample
                             for i in range(0, len(test_pixels), 500)])
    vae_accuracy = float(np.mean(judge_labels(judge, tiny.to_uint8(rebuilt.clamp(-1, 1)))
                                 == data["test_labels"][:2000]))
    print(f"judge: {JUDGE_STEPS} steps in {judge_seconds:.0f} s, test accuracy {test_accuracy:.1%}, on VAE reconstructions {vae_accuracy:.1%}",
          flush=True)

    # 3. Sample through the saved folder, reloaded as an ordinary pipeline; judge every image.
    pipe = StableDiffusionPipeline.from_pretrained(out_dir / "run" / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    recognised = {}
    for guidance in guidances:
        started, hits = time.perf_counter(), []
        for label in range(len(captions.CLASS_NAMES)):
            prompt = captions.class_caption(label)
            images = sd_train.sample_grid(pipe, [prompt] * per_prompt, guidance, seed=label)
            hits.append(float(np.mean(judge_labels(judge, images) == label)))
            save_grid(images, out_dir / f"guidance-{guidance:g}" / f"{label}-{captions.CLASS_NAMES[label].replace('/', '-')}.png")
        recognised[guidance] = float(np.mean(hits))
        per_class = ", ".join(f"{captions.CLASS_NAMES[c]} {h:.0%}" for c, h in enumerate(hits))
        print(f"guidance {guidance:g}: {recognised[guidance]:.1%} recognised in {time.perf_counter() - started:.0f} s "
              f"({per_class})", flush=True)

    # 3b. Prompt-following on the frozen test wordings (shared/fashion_test_set.py: written before any tuning, never
    # trained on), at the default guidance: per class, its wordings share the same number of samples.
    from shared import fashion_test_set

    started, unseen_hits = time.perf_counter(), []
    for label, name in enumerate(captions.CLASS_NAMES):
        wordings = list(fashion_test_set.WORDINGS[name])
        prompts = [wordings[i % len(wordings)] for i in range(per_prompt)]
        images = sd_train.sample_grid(pipe, prompts, sd_train.DEFAULT_GUIDANCE, seed=label)
        unseen_hits.append(float(np.mean(judge_labels(judge, images) == label)))
    unseen = float(np.mean(unseen_hits))
    per_class = ", ".join(f"{captions.CLASS_NAMES[c]} {h:.0%}" for c, h in enumerate(unseen_hits))
    print(f"unseen wordings at guidance {sd_train.DEFAULT_GUIDANCE:g}: {unseen:.1%} recognised in "
          f"{time.perf_counter() - started:.0f} s ({per_class})", flush=True)

    # 4. The RESULT lines.
    default = sd_train.DEFAULT_GUIDANCE
    lines.append(result_line("tiny_sd_judge_test_accuracy", f"{test_accuracy:.1%}", "information; >= 85% to trust it",
                             test_accuracy >= 0.85))
    lines.append(result_line("tiny_sd_judge_on_vae_reconstructions", f"{vae_accuracy:.1%}",
                             "information: the VAE's ceiling", True))
    for guidance in guidances:
        if guidance not in (1.0, default):
            lines.append(result_line(f"tiny_sd_recognised_at_guidance_{guidance:g}", f"{recognised[guidance]:.0%}",
                                     "information", True))
    lines.append(result_line("tiny_sd_recognised_at_default_guidance",
                             f"{recognised[default]:.0%} at guidance {default:g}", f">= {GOAL_RECOGNISED:.0%}",
                             recognised[default] >= GOAL_RECOGNISED))
    lines.append(result_line("sd_unseen_prompt_following", f"{unseen:.0%} at guidance {default:g} "
                             f"(training prompts {recognised[default]:.0%})", f">= {GOAL_UNSEEN:.0%}",
                             unseen >= GOAL_UNSEEN))
    lines.append(result_line("guidance_raises_recognition", f"{recognised[1.0]:.0%} -> {recognised[default]:.0%}",
                             "higher at default guidance than at 1", recognised[default] > recognised[1.0]))
    stage_minutes = ", ".join(f"{name} {stage['seconds'] / 60:.1f}" + (f" for {stage['steps']} steps" if "steps" in stage else "")
                              for name, stage in stages.items())
    lines.append(result_line("tiny_sd_training_minutes", f"{minutes:.1f} ({stage_minutes})",
                             f"<= {GOAL_MINUTES:g}", minutes <= GOAL_MINUTES))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for the training (0: PAGE_DEFAULTS as is; 1 is far faster on a busy machine)")
    parser.add_argument("--per-prompt", type=int, default=100, help="samples per prompt and guidance")
    parser.add_argument("--guidance", default="", help="comma-separated guidance scales (default: 1, DEFAULT, 3, 7)")
    parser.add_argument("--steps", default="", help="VAE,UNet step caps instead of PAGE_DEFAULTS' time budgets "
                        "(e.g. 671,1156: the reference run's steps)")
    parser.add_argument("--evaluate-only", action="store_true", help="judge the run already in OUT_DIR/run")
    parser.add_argument("--out-dir", default=str(REPO_ROOT / "test-output" / "diffusion"), help="where runs and grids go")
    args = parser.parse_args(argv)
    guidances = tuple(float(g) for g in args.guidance.split(",")) if args.guidance else None
    try:
        steps = tuple(int(n) for n in args.steps.split(",")) if args.steps else None
        lines = training_results(args.out_dir, args.threads, args.per_prompt, guidances, steps, args.evaluate_only)
    except Exception as error:  # noqa: BLE001 - report, then exit 1: the figure could not be measured
        print(f"could not measure: {error!r}", file=sys.stderr)
        raise SystemExit(1) from error
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
