"""The prompting page's in-context-learning lab: how fast it scores prompts, and (with --lab) the lab's own
table on the offline SmolLM2, as the issue asked for it.

    .venv/bin/python benchmarks/icl.py [--n 100] [--shots "0, 1, 4"] [--backend auto]
    .venv/bin/python benchmarks/icl.py --lab      # + k in {0, 1, 4, 8} x 3 formats x 3 seeds, N=100 (~10 min)

Speed: the same prompts (the page's defaults: chat turns, k = 0, 1, 4, one seed, N sentences) scored two ways in
one run, on the default backend (ONNX Runtime with int8 weights on a CPU):
1. whole prompts: every prompt run from its first token, as the page did before;
2. the page's path: the prefix every prompt of a (format, seed, k) shares (instruction and demonstrations) run
   once, each prompt then only its own tokens (spaces/prompting/icl.py PrefixScorer).
Both count the content-free prompts of calibration. Every prediction is compared, prompt by prompt.
Targets (issue 13): the page's path >= 2x the prompts/s of whole prompts, with identical predictions.

Ends with one `RESULT <name>: <figure> (goal <goal>) MET|MISSED` line per figure; exits 0 either way,
1 only when something could not be measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import result_line  # first: puts the repo on sys.path and keeps the hub off

SPEED_GOAL = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="test sentences (even), half of each label")
    parser.add_argument("--shots", default="0, 1, 4", help="shot counts, as the page takes them")
    parser.add_argument("--backend", default="auto", help="the page's backend: auto, onnx-int8, onnx-fp32, pytorch")
    parser.add_argument("--lab", action="store_true", help="also print the lab's table: k in {0,1,4,8} x 3 "
                        "formats x 3 seeds, before and after calibration, with the label shares")
    parser.add_argument("--lab-n", type=int, default=100, help="test sentences of the lab's table")
    return parser.parse_args(argv)


def timed(chat, data, settings, reuse: bool):
    from spaces.prompting import icl

    predictions: list = []
    started = time.perf_counter()
    cells, _, _ = icl.evaluate_icl(chat, data, settings, reuse=reuse, predictions=predictions)
    seconds = time.perf_counter() - started
    prompts = sum(cell.n + len(icl.CONTENT_FREE) for cell in cells)
    return predictions, prompts / seconds, seconds


def lab_table(chat, n: int) -> None:
    from spaces.prompting import icl

    settings = icl.check_settings(n, [0, 1, 4, 8], 0, 3, list(icl.FORMATS))
    started = time.perf_counter()
    cells, _, _ = icl.evaluate_icl(chat, icl.movie_data(), settings)
    run = icl.IclRun(chat.source.label, chat.backend, settings, icl.MOVIES, icl.ICL_LABEL_WORDS, cells, {}, False)
    print(f"\nThe lab: {chat.source.label} on {chat.backend}, N={n} balanced movie sentences, seeds 0-2 "
          f"({time.perf_counter() - started:.0f} s)")
    print("| format | k | accuracy (mean, lowest-highest seed) | calibrated | predicted positive | "
          "calibrated: predicted positive | P(positive) | content-free P(positive) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = run.summary_rows()
    calibrated = {(r["format"], r["shots"]): r for r in rows if r["calibrated"]}
    for row in (r for r in rows if not r["calibrated"]):
        cal = calibrated[(row["format"], row["shots"])]
        prior = [c.prior[1] for c in cells if c.format == row["format"] and c.shots == row["shots"]]
        print(f"| {row['format']} | {row['shots']} | {row['accuracy']:.1%} ({row['spread low']:.0%}–"
              f"{row['spread high']:.0%}) | {cal['accuracy']:.1%} ({cal['spread low']:.0%}–{cal['spread high']:.0%}) "
              f"| {row['predicted positive']:.0%} | {cal['predicted positive']:.0%} | {row['P(positive)']:.2f} | "
              f"{sum(prior) / len(prior):.2f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from spaces.prompting import icl
        from spaces.prompting.models import load_chat_model

        chat = load_chat_model(None, backend=args.backend)
        data = icl.movie_data()
        settings = icl.check_settings(args.n, args.shots, 0, 1, ["chat turns"])
        print(f"{chat.source.label} on {chat.backend}; N={args.n}, k = {settings.shot_counts}, chat turns, "
              f"one seed; load average {os.getloadavg()[0]:.2f}")
        timed(chat, data, icl.check_settings(2, "0", 0, 1, ["chat turns"]), reuse=True)  # warm-up
        whole, whole_rate, whole_s = timed(chat, data, settings, reuse=False)
        fast, fast_rate, fast_s = timed(chat, data, settings, reuse=True)
    except Exception as error:  # the model or data could not be had: nothing was measured
        print(f"could not measure: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    same = sum(a == b for a, b in zip(whole, fast)) / max(len(whole), 1) if len(whole) == len(fast) else 0.0
    print(f"whole prompts: {whole_rate:.2f} prompts/s ({whole_s:.1f} s); the page's path: {fast_rate:.2f} "
          f"prompts/s ({fast_s:.1f} s); predictions identical on {same:.1%} of {len(whole)} sentences")
    if args.lab:
        lab_table(chat, args.lab_n)
    speedup = fast_rate / whole_rate
    print(result_line("icl_prompts_per_second_speedup", speedup, f">= {SPEED_GOAL:.0f}x whole prompts", speedup >= 2,
                      "x"))
    print(result_line("icl_identical_predictions", f"{same:.1%}", "100%", same == 1.0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
