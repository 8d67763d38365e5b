"""What every benchmark shares: the repo on sys.path, offline settings, and the RESULT line.

Each script ends with one `RESULT <name>: <figure> (goal <goal>) MET|MISSED` line per target and exits 0
either way (1 only when it could not measure).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PLAYGROUND_OFFLINE", "1")


def result_line(name: str, figure: float | str, goal: str, met: bool, unit: str = "") -> str:
    """`RESULT name: figure (goal goal) MET|MISSED`; a float is printed with two decimals, then `unit`."""
    shown = f"{figure:.2f}" if isinstance(figure, float) else str(figure)
    return f"RESULT {name}: {shown}{unit} (goal {goal}) {'MET' if met else 'MISSED'}"
