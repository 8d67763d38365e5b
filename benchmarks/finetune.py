"""Fine-tuning methods side by side on the offline movie sentences and all-MiniLM-L6-v2, in one run.

    .venv/bin/python benchmarks/finetune.py [--steps 100] [--speed-steps 10]

1. The page's default run (spaces/finetune/train.py PAGE_DEFAULTS, the page's own training path): wall time and
   test accuracy on the movie sentences. Target: >= 82% within 3 minutes on this machine.
2. Every method (full, freeze, head, LoRA) for the same budget of steps: wall time, trainable parameters,
   validation and test accuracy. Target: LoRA within 2 points of full fine-tuning.
   Anchor: in the LoRA paper (RoBERTa-base, SST-2) LoRA scored 95.1 vs 94.8 for full fine-tuning, at
   about 0.6% of the parameters.
3. Training samples/s in fp32 vs bf16 autocast (full fine-tuning), as a ratio.

Ends with `RESULT <name>: <figure> (goal <goal>) MET|MISSED` lines; exits 0 either way, 1 only when it
could not measure.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from common import result_line  # first: puts the repo on sys.path and keeps the hub off


def run(config, label: str) -> dict:
    from spaces.finetune.train import train

    started = time.perf_counter()
    results = train(config)
    results["wall_seconds"] = time.perf_counter() - started
    print(f"{label:28} trainable {results['trainable_parameters']:>10,} ({100 * results['trainable_parameters'] / results['total_parameters']:5.2f}%)"
          f"  steps {results['steps']:4}  wall {results['wall_seconds']:6.1f} s  train {results['samples_per_second']:5.1f} samples/s"
          f"  best val {results['best_validation_accuracy']:.4f}  test " +
          " ".join(f"{k} {v:.4f}" for k, v in results["test_accuracy"].items()), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="step budget for each method in part 2")
    parser.add_argument("--speed-steps", type=int, default=10, help="steps timed for fp32 vs bf16 in part 3")
    args = parser.parse_args()
    try:
        from spaces.finetune.train import PAGE_DEFAULTS as DEFAULTS

        # 1. The page's default run, exactly as the Train button starts it.
        default = run(dataclasses.replace(DEFAULTS), f"page default ({DEFAULTS.method} {DEFAULTS.freeze_layers})")
        # 2. Each method, same step budget, same data, same seed.
        per_method = {}
        for method, learning_rate in (("full", 1e-4), ("freeze", 1e-4), ("head", 1e-3), ("lora", 1e-3)):
            config = dataclasses.replace(DEFAULTS, method=method, learning_rate=learning_rate, max_steps=args.steps,
                                         train_size=0, epochs=1.0)
            per_method[method] = run(config, f"{method} (lr {learning_rate:g})")
        # 3. fp32 vs bf16 autocast throughput: validation and test cut to a minimum.
        speed = {}
        for bf16 in (False, True):
            config = dataclasses.replace(DEFAULTS, method="full", bf16=bf16, max_steps=args.speed_steps,
                                         validation_size=8, test_size=8, other_domain_size=8, eval_every=10_000,
                                         train_size=0)
            speed[bf16] = run(config, "bf16 autocast" if bf16 else "fp32")["samples_per_second"]
    except Exception as error:
        print(f"benchmark failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1

    accuracy, seconds = default["test_accuracy"]["movies"], default["wall_seconds"]
    gap = 100 * (per_method["lora"]["test_accuracy"]["movies"] - per_method["full"]["test_accuracy"]["movies"])
    ratio = speed[True] / speed[False]
    print(result_line("default_run_movie_test_accuracy", f"{accuracy:.4f}", ">= 0.82", accuracy >= 0.82))
    print(result_line("default_run_wall_seconds", f"{seconds:.0f} s", "<= 180 s", seconds <= 180))
    print(result_line("lora_minus_full_test_points", f"{gap:+.2f}", ">= -2.00", gap >= -2.0))
    print(result_line("bf16_vs_fp32_train_samples_per_second", f"{ratio:.2f}x", ">= 1.00x", ratio >= 1.0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
