"""Helpers for tests of the app online: its environment, and what it downloaded into its HF cache."""

from __future__ import annotations

from pathlib import Path

# What the app process must not inherit from the (offline) test process.
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "PLAYGROUND_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def online_env(endpoint: str, home: Path, **extra: str | None) -> dict[str, str | None]:
    """The environment of an app that uses the hub at `endpoint`, with its own PLAYGROUND_HOME and HF_HOME."""
    return {**{flag: None for flag in OFFLINE_FLAGS}, "HF_ENDPOINT": endpoint,
            "PLAYGROUND_HOME": str(home / "playground"), "HF_HOME": str(home / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_TEMP_DIR": str(home / "gradio"), **extra}


def hf_cache(home: Path) -> Path:
    return home / "hf-home" / "hub"


def snapshot_files(home: Path, repo_id: str, repo_type: str = "models") -> dict[str, Path]:
    """The files of `repo_id` in the app's HF cache: {relative path: file}, for the tests' assertions."""
    folder = hf_cache(home) / f"{repo_type}--{repo_id.replace('/', '--')}" / "snapshots"
    return {str(p.relative_to(snapshot)): p for snapshot in folder.glob("*") for p in snapshot.rglob("*")
            if p.is_file()} if folder.exists() else {}
