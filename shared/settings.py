"""Settings for the whole app, read once from environment variables.

Every tunable is an UPPER_CASE environment variable with a default that suits a free 16 GB Hugging Face
Space and a laptop alike. `app.py` turns its command-line flags into these variables before anything
else is imported, so there is one source of truth:

    PLAYGROUND_HOME            where built assets and downloads live (default: <repo>/.cache)
    PLAYGROUND_OFFLINE         1 = never touch the Hugging Face Hub (also set by `--offline`)
    PLAYGROUND_MEMORY_BUDGET_GB  models the cache may hold at once, in GiB (default 10)
    PLAYGROUND_DEVICE          force a device: cpu, cuda, cuda:1, mps (default: picked at run time)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TRUE_WORDS = ("1", "true", "yes", "on")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUE_WORDS


@dataclass(frozen=True)
class Settings:
    home: Path  # offline assets (assets/), sdists (downloads/), saved models (models/), ONNX builds (onnx/)
    offline: bool  # never touch the hub, whatever the network says
    memory_budget_bytes: int  # the model cache evicts least-recently-used models beyond this
    device: str | None  # None: chosen at run time (GPU when there is one)

    @property
    def assets_dir(self) -> Path:
        return self.home / "assets"

    @property
    def downloads_dir(self) -> Path:
        return self.home / "downloads"

    @property
    def outputs_dir(self) -> Path:  # what pages make for visitors to keep (the diffusion page's PNGs)
        return self.home / "outputs"

    @property
    def onnx_dir(self) -> Path:  # ONNX builds of models (shared/onnx_lm.py), one folder per weights and format
        return self.home / "onnx"


def read_settings() -> Settings:
    """Read the settings from the environment; raises ValueError naming a bad value."""
    budget_text = os.environ.get("PLAYGROUND_MEMORY_BUDGET_GB", "10")
    try:
        budget_gb = float(budget_text)
    except ValueError:
        raise ValueError(f"PLAYGROUND_MEMORY_BUDGET_GB must be a number of GiB, got {budget_text!r}") from None
    if budget_gb <= 0:
        raise ValueError(f"PLAYGROUND_MEMORY_BUDGET_GB must be positive, got {budget_gb}")
    offline = env_flag("PLAYGROUND_OFFLINE") or env_flag("HF_HUB_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE")
    return Settings(
        home=Path(os.environ.get("PLAYGROUND_HOME") or REPO_ROOT / ".cache").expanduser().resolve(),
        offline=offline,
        memory_budget_bytes=int(budget_gb * 2**30),
        device=os.environ.get("PLAYGROUND_DEVICE") or None,
    )


def go_offline() -> None:
    """Make this process, and the libraries it imports later, keep away from the hub."""
    for name in ("PLAYGROUND_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
