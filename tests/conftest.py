"""Shared fixtures: offline settings, a temporary Gradio folder, a running app on a free port.

The hub is never reached in tests: HF_HUB_OFFLINE is set before anything imports huggingface_hub.
Models load for real from the offline assets that `make test` builds (shared/assets.py).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PLAYGROUND_HOME", str(REPO_ROOT / ".cache"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PLAYGROUND_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="playground-gradio-"))
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pytest  # noqa: E402

TEST_OUTPUT = Path(os.environ.get("PLAYGROUND_TEST_OUTPUT", REPO_ROOT / "test-output"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url():
    """The whole app, launched once for the session on a free port, closed at the end."""
    import app

    demo = app.build_app(list(app.TOPIC_PAGES))
    args = app.parse_args(["--port", str(free_port()), "--offline"])
    app.configure(args)
    app.launch(demo, args, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{args.port}/"
    finally:
        demo.close()


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture
def test_output(request) -> Path:
    folder = TEST_OUTPUT / request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
