"""Whether the Hugging Face Hub can be used, and which model names a visitor may ask for.

A visitor's text never reaches `from_pretrained` as a path: it must look like a hub id
("gpt2", "org/name") or be a name on the local allow-list ("local:..."). Paths, URLs and ids that
name a folder on this machine are refused with a message that says why.
"""

from __future__ import annotations

import os
import re
import socket
from functools import lru_cache
from urllib.parse import urlparse

from shared.settings import read_settings

# The hub's own rule: letters, digits, "-", "_", "." ; at most one "/"; no "--" or ".." ; <= 96 chars each.
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
LOCAL_PREFIX = "local:"


def check_hub_id(text: str) -> str:
    """Return `text` stripped if it is a well-formed hub model id; raise ValueError saying why not."""
    model_id = text.strip()
    if not model_id:
        raise ValueError("The model id is empty: type a hub id such as 'gpt2' or 'org/name'.")
    if model_id.startswith(("/", "~", ".")) or "\\" in model_id or "://" in model_id:
        raise ValueError(f"{model_id!r} is a path or URL; only Hugging Face Hub ids such as 'org/name' are accepted.")
    if ".." in model_id or "--" in model_id or not HUB_ID.match(model_id) or model_id.endswith("."):
        raise ValueError(
            f"{model_id!r} is not a Hugging Face Hub id: use letters, digits, '-', '_', '.' and at most one '/' "
            "(like 'gpt2' or 'HuggingFaceTB/SmolLM2-135M-Instruct')."
        )
    if os.path.exists(model_id):
        # from_pretrained would read this folder instead of asking the hub.
        raise ValueError(f"{model_id!r} names a folder on this machine; only hub ids are accepted.")
    return model_id


def endpoint_address(endpoint: str) -> tuple[str, int]:
    """The host and port that `endpoint` (HF_ENDPOINT) names: its own port, else 80 for http and 443 for https."""
    url = urlparse(endpoint)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 1.5) -> bool:
    """True when the hub is not disabled and its host answers a TCP connection on the endpoint's port (a mirror
    or a local hub server may use any). Checked once a process; at most `timeout` seconds."""
    if read_settings().offline:
        return False
    address = endpoint_address(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def hub_status() -> str:
    if read_settings().offline:
        return "offline (disabled by --offline / PLAYGROUND_OFFLINE / HF_HUB_OFFLINE)"
    return "online" if hub_reachable() else "offline (the hub cannot be reached)"
