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


# ---- what a failed hub request means, in one line for the visitor ----------------------------------------

_REPO_IN_URL = re.compile(r"/api/(?:models|datasets|spaces)/([^/?#]+(?:/[^/?#]+)?)(?:/|$)"
                          r"|^/(?:(?:datasets|spaces)/)?([^/?#]+(?:/[^/?#]+)?)/resolve/")


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from or during (__cause__, then __context__), outermost first."""
    seen, chain = set(), []
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _repo_of(chain: list[BaseException]) -> str | None:
    """The repository a hub request in `chain` was for, read from the request's URL."""
    for error in chain:
        for holder in (getattr(error, "response", None), getattr(error, "request", None)):
            url = getattr(holder, "url", None) or getattr(getattr(holder, "request", None), "url", None)
            if url:
                match = _REPO_IN_URL.search(urlparse(str(url)).path)
                if match:
                    return match.group(1) or match.group(2)
    return None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a hub connection that failed or broke off (refused, reset, timed out, cut short)."""
    import requests
    import urllib3.exceptions

    types: list[type[BaseException]] = [requests.ConnectionError, requests.Timeout,
                                        requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError,
                                        urllib3.exceptions.TimeoutError, urllib3.exceptions.NewConnectionError]
    try:
        import httpx

        types.append(httpx.TransportError)
    except ImportError:
        pass
    return tuple(types)


def hub_page(repo_id: str) -> str:
    return f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/{repo_id}"


def hub_error_message(error: BaseException, repo_id: str | None = None) -> str | None:
    """One line for the visitor when `error` (or what it was raised from) is a hub failure, else None.

    Gated (401/403) and missing or private repositories, a missing revision, a repository that needs its own
    Python code (never run: trust_remote_code stays off), a hub that answers with a server error, and a hub that
    stopped answering (refused, reset, timed out, cut off mid-download: huggingface_hub keeps the partial file
    as *.incomplete and never uses it; the next load resumes it). `repo_id` names the repository when known."""
    from huggingface_hub import errors as hf

    chain = _chain(error)
    repo = repo_id or _repo_of(chain)
    name = repo or "The repository"

    def first(kind) -> BaseException | None:
        return next((e for e in chain if isinstance(e, kind)), None)

    if (gated := first(hf.GatedRepoError)) is not None:
        status = getattr(getattr(gated, "response", None), "status_code", None)
        why = " and this account is not on its access list" if status == 403 else ""
        page = hub_page(repo) if repo else "its hub page"
        return (f"{name} is a gated model{why}: ask for access on {page}, then set HF_TOKEN to a token of the "
                "account that has it.")
    if first(hf.RevisionNotFoundError) is not None:
        return f"{name} has no such revision (branch, tag or commit) on the Hugging Face Hub."
    if first(hf.RepositoryNotFoundError) is not None:
        return (f"{name} is not on the Hugging Face Hub, or is private (for a private repository, set HF_TOKEN to "
                "a token that can read it).")
    if any(isinstance(e, ValueError) and ("trust_remote_code" in str(e) or "contains custom code" in str(e))
           for e in chain):
        return (f"{name} needs its own Python code to load (custom code), which the playground never runs "
                "(trust_remote_code is never enabled): choose a model transformers supports natively.")
    if first(hf.OfflineModeIsEnabled) is not None:
        return f"{name} is not in the local cache and the Hugging Face Hub is disabled here (offline)."
    transport = _transport_errors()
    if any(isinstance(e, transport) for e in chain) or any(
            isinstance(e, hf.LocalEntryNotFoundError) and "outgoing traffic has been disabled" not in str(e)
            for e in chain):
        what = f"while downloading {repo}" if repo else "during a download"
        return (f"The Hugging Face Hub stopped answering {what}: nothing partial is used; load again to resume "
                "the download.")
    http = first(hf.HfHubHTTPError)
    status = getattr(getattr(http, "response", None), "status_code", None)
    if status is not None and (status == 429 or status >= 500):
        return f"The Hugging Face Hub could not serve {name} just now (HTTP {status}): try again in a while."
    return None
