"""Startup and model-loading costs, measured side by side in one run.

    .venv/bin/python benchmarks/startup.py [--runs 3]

1. `python app.py --offline`: seconds from process start to the first page served, and resident memory
   (RSS) once idle. Targets (issue 2): under 5 s and under 1.5 GB.
2. SmolLM2-135M-Instruct (the offline chat LM) loaded through the model cache vs loaded directly with
   `AutoModelForCausalLM.from_pretrained`, each in a fresh process: load seconds and RSS growth, as ratios.
   Target: the cache adds at most 10% to either.

Ends with one `RESULT <name>: <figure> (goal <goal>) MET|MISSED` line per target; exits 0 either way,
1 only when something could not be measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import psutil
from common import REPO_ROOT, result_line  # first: puts the repo on sys.path and keeps the hub off

from shared.launch import app_process

LOAD_PROBE = """
import json, os, sys, time, psutil
sys.path.insert(0, {root!r})
how, folder = sys.argv[1], sys.argv[2]
import torch, transformers  # imported before the clock starts: both ways pay the same import
before = psutil.Process().memory_info().rss
started = time.perf_counter()
if how == "cache":
    import shared.loaders
    from shared.cache import LoadSpec, get_cache
    model = get_cache().get(LoadSpec("causal-lm", folder))
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "rss_growth": psutil.Process().memory_info().rss - before}}))
"""


def measure_startup() -> tuple[float, float]:
    """Seconds to the first page served, and RSS (bytes) after 3 s idle."""
    with app_process(["app.py"]) as (process, _, seconds):
        time.sleep(3)
        return seconds, psutil.Process(process.pid).memory_info().rss


def measure_load(how: str, folder: str) -> dict[str, float]:
    code = LOAD_PROBE.format(root=str(REPO_ROOT))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PLAYGROUND_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code, how, folder], capture_output=True, text=True, env=env,
                            timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measurement (median is reported)")
    args = parser.parse_args()
    try:
        from shared.assets import ensure

        folder = str(ensure("smollm2-135m-instruct"))
        startups = [measure_startup() for _ in range(args.runs)]
        loads = {"cache": [], "direct": []}
        for _ in range(args.runs):  # interleaved, so drift in the machine's load hits both alike
            for how in ("direct", "cache"):
                loads[how].append(measure_load(how, folder))
    except Exception as error:  # could not measure
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1

    startup_s = statistics.median(s for s, _ in startups)
    idle_gb = statistics.median(r for _, r in startups) / 1e9
    print(f"app.py --offline: first page after {[round(s, 2) for s, _ in startups]} s; "
          f"idle RSS {[round(r / 1e9, 3) for _, r in startups]} GB")
    median = {how: {k: statistics.median(run[k] for run in runs) for k in ("seconds", "rss_growth")}
              for how, runs in loads.items()}
    for how in ("direct", "cache"):
        print(f"SmolLM2-135M load {how:6}: {median[how]['seconds']:.2f} s, RSS +{median[how]['rss_growth'] / 2**20:.0f} MiB")
    time_ratio = median["cache"]["seconds"] / median["direct"]["seconds"]
    memory_ratio = median["cache"]["rss_growth"] / median["direct"]["rss_growth"]
    print(result_line("startup_seconds", startup_s, "< 5 s", startup_s < 5, unit=" s"))
    print(result_line("idle_rss", idle_gb, "< 1.5 GB", idle_gb < 1.5, unit=" GB"))
    print(result_line("cache_vs_direct_load_time", time_ratio, "<= 1.10x", time_ratio <= 1.10, unit="x"))
    print(result_line("cache_vs_direct_load_memory", memory_ratio, "<= 1.10x", memory_ratio <= 1.10, unit="x"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
