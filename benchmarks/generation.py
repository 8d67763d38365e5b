"""Generation speed of the prompting page, measured side by side with plain `model.generate` in one run.

    .venv/bin/python benchmarks/generation.py [--runs 3] [--skip-onnx] [--threads N]

SmolLM2-135M-Instruct (the offline chat LM), a 128-token prompt, 64 new tokens, batch 1, greedy. For each way
of generating: time to first token (TTFT, prefill plus one step) and decode tokens/s (the 63 tokens after the
first), the median of `--runs` runs after one warm-up run.

1. plain `model.generate` in float32: the reference; every other figure is a ratio to it.
2. the page's own path (spaces/prompting/logic.py `stream_generation`: a thread, a TextIteratorStreamer, a
   stopping criterion reading a stop event) in float32 -- the page's default on a CPU -- and in bfloat16.
3. ONNX Runtime: optimum's ORTModelForCausalLM, exported to a temporary folder, through its `generate`.

End-of-text is switched off for every way alike, so each run makes all 64 tokens.
On a CPU the figures depend on torch's thread count and on what else runs: with 2 intra-op threads on 2 busy
cores, `generate` called from the main thread can be several times slower than the same call from a worker
thread (the page's path). `--threads 1` takes that effect out; the load average is printed with the figures.
Target (issue 3): at least 40 decode tokens/s on the page's default path.

Ends with one `RESULT <name>: <figure> (goal <goal>) MET|MISSED` line per figure; exits 0 either way,
1 only when something could not be measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PLAYGROUND_OFFLINE", "1")

PROMPT_TOKENS = 128
NEW_TOKENS = 64
DECODE_GOAL = 40.0  # tokens/s on the page's default path
PROMPT_TEXT = (
    "The history of the printing press begins in the fifteenth century, when movable type changed how books "
    "were made, sold and read across Europe. Before it, scribes copied each page by hand, and a single book "
    "could take months. Printers in Mainz, Venice and Paris soon competed for scholars, merchants and churches, "
)

Measure = Callable[[list[int]], tuple[float, float]]  # prompt ids -> (ttft seconds, decode tokens/s)


def prompt_ids(tokenizer) -> list[int]:
    ids = tokenizer(PROMPT_TEXT * 8, add_special_tokens=False)["input_ids"]
    if len(ids) < PROMPT_TOKENS:
        raise RuntimeError("the benchmark prompt is too short")
    return ids[:PROMPT_TOKENS]


def plain_generate(model) -> Measure:
    """`model.generate` with nothing added: TTFT from a 1-token run, decode rate from the 64-token run."""
    import torch

    def measure(ids: list[int]) -> tuple[float, float]:
        input_ids = torch.tensor([ids])
        kwargs = dict(attention_mask=torch.ones_like(input_ids), do_sample=False, pad_token_id=0)
        with torch.inference_mode():
            started = time.perf_counter()
            model.generate(input_ids, max_new_tokens=1, **kwargs)
            ttft = time.perf_counter() - started
            started = time.perf_counter()
            output = model.generate(input_ids, max_new_tokens=NEW_TOKENS, **kwargs)
            total = time.perf_counter() - started
        made = output.shape[1] - input_ids.shape[1]
        if made != NEW_TOKENS:
            raise RuntimeError(f"generate made {made} tokens, not {NEW_TOKENS}")
        return ttft, (NEW_TOKENS - 1) / (total - ttft)

    return measure


def page_path(chat) -> Measure:
    """The page's streaming path; its stopping criterion times every token."""
    from spaces.prompting import logic

    settings = logic.SamplingSettings("greedy", max_new_tokens=NEW_TOKENS)

    def measure(ids: list[int]) -> tuple[float, float]:
        stats = None
        for _, stats in logic.stream_generation(chat, ids, settings, threading.Event()):
            pass
        if stats.new_tokens != NEW_TOKENS:
            raise RuntimeError(f"the page made {stats.new_tokens} tokens, not {NEW_TOKENS}")
        return stats.seconds_to_first_token, stats.decode_tokens_per_second

    return measure


def no_end_of_text(model) -> None:
    """Make every run produce all NEW_TOKENS tokens, whatever the text says."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0


def run(measure: Measure, ids: list[int], runs: int) -> tuple[float, float]:
    measure(ids)  # warm-up: first-call costs are not what a visitor sees on every run
    results = [measure(ids) for _ in range(runs)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def result_line(name: str, figure: float, unit: str, goal: str, met: bool) -> str:
    return f"RESULT {name}: {figure:.2f}{unit} (goal {goal}) {'MET' if met else 'MISSED'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="measured runs of each way (median is reported)")
    parser.add_argument("--skip-onnx", action="store_true", help="skip the ONNX Runtime export and run")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    figures: dict[str, tuple[float, float]] = {}
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        from shared.cache import get_cache
        from spaces.prompting import logic

        chat32 = logic.load_chat_model(None, dtype="float32")
        no_end_of_text(chat32.model)
        ids = prompt_ids(chat32.tokenizer)
        print(f"{chat32.source.label}: {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, batch 1, greedy; "
              f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.runs} run(s) each; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s)")
        figures["generate fp32"] = run(plain_generate(chat32.model), ids, args.runs)
        figures["page fp32"] = run(page_path(chat32), ids, args.runs)
        get_cache().evict(chat32.source.label)  # one model in memory at a time
        chat16 = logic.load_chat_model(None, dtype="bfloat16")
        no_end_of_text(chat16.model)
        figures["page bf16"] = run(page_path(chat16), ids, args.runs)
        get_cache().evict(chat16.source.label)
    except Exception as error:  # could not measure
        print(f"benchmark failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1

    onnx_note = "skipped (--skip-onnx)"
    if not args.skip_onnx:
        try:
            from optimum.onnxruntime import ORTModelForCausalLM

            with tempfile.TemporaryDirectory(prefix="playground-onnx-") as folder:
                started = time.perf_counter()
                exported = ORTModelForCausalLM.from_pretrained(chat32.source.location, export=True)
                exported.save_pretrained(folder)
                ort_model = ORTModelForCausalLM.from_pretrained(folder)
                export_s = time.perf_counter() - started
                no_end_of_text(ort_model)
                figures["onnxruntime fp32"] = run(plain_generate(ort_model), ids, args.runs)
                onnx_note = f"exported in {export_s:.0f} s"
        except Exception as error:  # ONNX is optional: say why it is missing, keep the other figures
            onnx_note = f"not measured: {type(error).__name__}: {str(error)[:300]}"

    base_ttft, base_rate = figures["generate fp32"]
    print(f"{'way':18} {'TTFT s':>8} {'decode tok/s':>13} {'TTFT ratio':>11} {'decode ratio':>13}")
    for name, (ttft, rate) in figures.items():
        print(f"{name:18} {ttft:8.3f} {rate:13.1f} {ttft / base_ttft:10.2f}x {rate / base_rate:12.2f}x")
    print(f"ONNX Runtime: {onnx_note}")
    page_ttft, page_rate = figures["page fp32"]
    print(result_line("page_default_decode_tokens_per_s", page_rate, " tok/s", f">= {DECODE_GOAL:.0f} tok/s",
                      page_rate >= DECODE_GOAL))
    decode_ratio, ttft_ratio = page_rate / base_rate, page_ttft / base_ttft
    print(result_line("page_fp32_vs_generate_decode", decode_ratio, "x", ">= 0.90x", decode_ratio >= 0.9))
    print(result_line("page_fp32_vs_generate_ttft", ttft_ratio, "x", "<= 1.10x", ttft_ratio <= 1.1))
    bf_ttft, bf_rate = figures["page bf16"]
    print(result_line("page_bf16_vs_generate_fp32_decode", bf_rate / base_rate, "x", "> 1.00x",
                      bf_rate / base_rate > 1))
    if "onnxruntime fp32" in figures:
        ort_ttft, ort_rate = figures["onnxruntime fp32"]
        print(result_line("onnxruntime_vs_generate_fp32_decode", ort_rate / base_rate, "x", "> 1.00x",
                          ort_rate / base_rate > 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
