"""The Stable Diffusion page's benchmark: the page's generation speed against plain diffusers, and the tiny
Stable Diffusion it trains (time per stage, and whether its samples show the prompted class).

    .venv/bin/python benchmarks/diffusion.py                      # both parts (about 30-40 minutes on 2 cores)
    .venv/bin/python benchmarks/diffusion.py --part speed [--runs 2] [--candidates] [--fresh]
    .venv/bin/python benchmarks/diffusion.py --part training [--threads 1] [--per-prompt 100] [--steps 671,1156]

speed (benchmarks/_diffusion_speed.py): seconds per 512x512 image of the sd-turbo architecture (random weights
of its real configuration) at 1 and 4 steps, the page's default path (TAESD, UNet and text encoder on ONNX
Runtime) against plain StableDiffusionPipeline in fp32 with the full VAE, interleaved in one run. Goal >= 3x.
training (benchmarks/_diffusion_training.py): the Train button's run (PAGE_DEFAULTS), then a CNN judge trained
here labels 100 samples per prompt at guidance 1 and at the page's default. Goals: >= 70% recognised at the
default guidance, more than at guidance 1, <= 10 minutes of training. Grids go to test-output/diffusion/.

Ends with the RESULT lines of each part; exits 0 either way (1 only when a part could not measure).
"""

from __future__ import annotations

import argparse
import sys

from common import REPO_ROOT  # noqa: F401  (first: puts the repo on sys.path and keeps the hub off)

from _diffusion_speed import speed_results  # noqa: E402
from _diffusion_training import training_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "speed", "training"), default="all", help="which part to run")
    parser.add_argument("--runs", type=int, default=2, help="speed: timed runs of each path and step count (median)")
    parser.add_argument("--candidates", action="store_true", help="speed: also time each part alone on each backend")
    parser.add_argument("--fresh", action="store_true", help="speed: write the random model and its ONNX builds anew")
    parser.add_argument("--threads", type=int, default=0,
                        help="training: torch threads (0: PAGE_DEFAULTS as is; 1 is far faster on a busy machine)")
    parser.add_argument("--per-prompt", type=int, default=100, help="training: samples per prompt and guidance")
    parser.add_argument("--steps", default="", help="training: VAE,UNet step caps instead of the time budgets")
    parser.add_argument("--out-dir", default=str(REPO_ROOT / "test-output" / "diffusion"),
                        help="training: where the run and the grids go")
    args = parser.parse_args(argv)
    lines, failed = [], False
    if args.part in ("all", "training"):
        try:
            steps = tuple(int(n) for n in args.steps.split(",")) if args.steps else None
            lines += training_results(args.out_dir, args.threads, args.per_prompt, None, steps, False)
        except Exception as error:  # noqa: BLE001 - report, go on with the other part, exit 1 at the end
            print(f"training: could not measure: {error!r}", file=sys.stderr)
            failed = True
    if args.part in ("all", "speed"):
        try:
            lines += [line for line in speed_results(args.runs, args.candidates, args.fresh, echo=True)
                      if line.startswith("RESULT")]
        except Exception as error:  # noqa: BLE001
            print(f"speed: could not measure: {error!r}", file=sys.stderr)
            failed = True
    print("\n".join(lines), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
