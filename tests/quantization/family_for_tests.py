"""A model family for the runner's own tests: variants that behave in each way a real one can end (measured, a
Python error, a crash of the whole process, unavailable, still working when Stop comes). No model is involved:
these test the process per variant, not a model."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from spaces.quantization.common import Unavailable, Variant, report

FAMILY = "test"
REFERENCE = "reference"
VARIANTS = (
    Variant("reference", "Reference", "Python", "fp32"),
    Variant("raises", "Raises an error", "Python", "int8"),
    Variant("crashes", "Crashes its process", "Python", "int8"),
    Variant("unavailable", "Needs a GPU", "Python", "int4", needs="gpu"),
    Variant("slow", "Works until stopped", "Python", "int4"),
    Variant("after", "Measured after the others", "Python", "int4"),
)
QUALITY = ("score", "higher")


def default_params(**overrides) -> dict:
    return {"source": "", "label": "test", "score": 1.0, **overrides}


def measure(variant: str, params: dict, work_dir: Path, progress, stop: threading.Event) -> dict:
    report(progress, 0.5, f"measuring {variant}")
    calls = work_dir / "calls.txt"  # every measurement leaves a line: the tests count them
    with open(calls, "a") as handle:
        handle.write(variant + "\n")
    if variant == "raises":
        raise RuntimeError("this variant cannot be built")
    if variant == "crashes":
        os.abort()  # the whole process dies, as a segfault in a runtime would
    if variant == "unavailable":
        raise Unavailable("needs a GPU")
    if variant == "slow":
        (work_dir / "slow.pid").write_text(str(os.getpid()))
        time.sleep(600)
    reference = work_dir / "reference.json"
    if variant == "reference":
        reference.write_text(json.dumps({"score": params["score"]}))
    base = json.loads(reference.read_text())["score"]
    return {"p50 ms": 10.0 if variant == "reference" else 5.0, "score": base * (1.0 if variant == "reference" else 0.9),
            "disk MB": 1.0, "notes": ""}
