"""Measure one variant in this process and report on stdout: the quantization runner's worker.

    echo '{"module": "spaces.quantization.classifier", "variant": "onnx-int8-dynamic", "params": {...},
           "work_dir": "..."}' | python -m spaces.quantization.worker

Protocol: `PROGRESS {"fraction": f, "text": t}` lines while it works, then one `RESULT {"status": ..., "figures":
{...}, "reason": ...}` line. Whatever the libraries print (exporters are chatty) goes to stderr: file descriptor 1
is pointed at stderr before anything is imported, and the protocol writes to a copy of the original stdout.
"""

from __future__ import annotations

import json
import os
import sys
import threading


def busy_note() -> str:
    """A warning when other work shared the CPU during the measurement (the 1-minute load average above the
    cores): its timings are then inflated, and only ratios taken on a quiet machine are fair."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load <= cores + 0.5:  # this worker itself keeps the load near the cores it uses
        return ""
    return f"the machine was busy (load {load:.1f} on {cores} cores): timings are inflated"


def main() -> int:
    # 1. Keep the protocol channel apart from the libraries' output.
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    request = json.loads(sys.stdin.read())

    def send(kind: str, message: dict) -> None:
        channel.write(f"{kind} {json.dumps(message)}\n")
        channel.flush()

    def progress(fraction: float, text: str) -> None:
        send("PROGRESS", {"fraction": float(fraction), "text": str(text)})

    # 2. Measure, and say what happened whatever it was.
    import logging
    import traceback

    from shared.cache import short_reason
    from spaces.quantization.common import Stopped, Unavailable, peak_rss_bytes

    logging.basicConfig(level=logging.WARNING)
    from pathlib import Path

    try:
        import importlib

        module = importlib.import_module(request["module"])  # a family module named by the runner
        figures = module.measure(request["variant"], request["params"], Path(request["work_dir"]), progress,
                                 threading.Event())
        figures["peak RSS MB"] = peak_rss_bytes() / 2**20
        busy = busy_note()
        if busy:
            figures["notes"] = "; ".join(n for n in (busy, figures.get("notes", "")) if n)
        send("RESULT", {"status": "measured", "figures": figures})
    except Unavailable as error:
        send("RESULT", {"status": "unavailable", "reason": str(error)})
    except Stopped:
        send("RESULT", {"status": "stopped", "reason": "stopped"})
    except BaseException as error:  # reported, with the trace on stderr for the server log
        traceback.print_exc()
        send("RESULT", {"status": "failed", "reason": short_reason(error)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
