"""Command-line flags, process configuration and the one `launch()`: for app.py, a page served alone, tests
and benchmarks alike.

    python app.py [--host H] [--port N] [--share] [--offline] [--pages a,b]
    python -m spaces.<page> [--host H] [--port N] [--share] [--offline]

Flags become environment settings (shared/settings.py) before any model library is imported, so the
whole process sees the same values. Page modules never import app.py: `serve_page` lives here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: Sequence[str] | None = None, pages: Sequence[str] = ()) -> argparse.Namespace:
    """The flags; `--pages` (a subset of `pages`) only where the app composes several pages."""
    parser = argparse.ArgumentParser(description="Transformer Playground")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live share link")
    parser.add_argument("--offline", action="store_true",
                        help="never touch the Hugging Face Hub: use the offline assets only")
    if pages:
        parser.add_argument("--pages", default=",".join(pages),
                            help="comma-separated topic pages to serve (default: every page that exists)")
    args = parser.parse_args(argv)
    if pages:
        args.pages = [p.strip() for p in args.pages.split(",") if p.strip()]
        unknown = [p for p in args.pages if p not in pages]
        if unknown:
            parser.error(f"unknown page(s) {unknown}; choose from {', '.join(pages)}")
    return args


def configure(args: argparse.Namespace) -> None:
    """Logging, no analytics pings, and --offline as settings, before gradio or transformers load models."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage pings from a learner's machine
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own startup requests, not ours
    if args.offline:
        from shared.settings import go_offline

        go_offline()


def launch(demo, args: argparse.Namespace, **kwargs: Any):
    """`demo.launch` with the app's theme, CSS and flags; without a tunnel, `--share` falls back to local."""
    from shared.ui import launch_kwargs

    options = dict(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(), **kwargs)
    try:
        return demo.launch(**options)
    except Exception as error:
        if not args.share:
            raise
        # A share link needs gradio's tunnel server; without it, serve locally rather than not at all.
        logging.getLogger("playground").warning("could not open a share link (%s); serving locally only", error)
        options["share"] = False
        return demo.launch(**options)


def serve_page(name: str, argv: Sequence[str] | None = None):
    """Serve one page alone, as the root of its own app: what `python -m spaces.<name>` runs."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    configure(args)
    module = importlib.import_module(f"spaces.{name}.ui")
    return launch(module.build(), args)


def free_port() -> int:
    """A port nothing listens on now (for tests and benchmarks that start the app)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_in_background(demo, offline: bool = True) -> str:
    """Launch `demo` on a free local port without blocking; returns its URL. The caller closes it
    (`demo.close()`)."""
    args = parse_args(["--port", str(free_port())] + (["--offline"] if offline else []))
    configure(args)
    launch(demo, args, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{args.port}/"


@contextlib.contextmanager
def app_process(args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120.0,
                offline: bool = True, python: str | None = None, log: Path | None = None,
                ) -> Iterator[tuple[subprocess.Popen, str, float]]:
    """Start `python <args> [--offline] --port <free>` from the repo root (app.py, or `-m spaces.<page>`), wait
    until it serves its first page, and yield (process, url, seconds it took); stopped on leaving.
    `env` entries set to None are removed from the environment; `log` takes the output (else a pipe, read only
    when the process fails: keep such runs short). Raises RuntimeError with the process's output when it exits
    or does not serve within `timeout`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    environment = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    output = open(log, "ab") if log else subprocess.PIPE
    process = subprocess.Popen([python or sys.executable, *args, *(["--offline"] if offline else []),
                                "--port", str(port)], cwd=REPO_ROOT, env=environment, stdout=output,
                               stderr=subprocess.STDOUT)

    def tail() -> str:
        text = Path(log).read_bytes() if log else process.stdout.read()
        return text[-4000:].decode(errors="replace")

    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).read()
                break
            except OSError:
                if process.poll() is not None or time.perf_counter() - started > timeout:
                    process.kill()
                    process.wait()
                    raise RuntimeError(f"{' '.join(args)} did not serve {url}:\n{tail()}")
                time.sleep(0.05)
        yield process, url, time.perf_counter() - started
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        if log:
            output.close()
