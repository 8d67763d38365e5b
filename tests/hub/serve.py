"""Serve the tests' hub repositories on a fixed port, so the app can be run "online" on a machine with no hub:

    .venv/bin/python -m tests.hub.serve --port 8090 &          # builds the repositories, then serves them
    HF_ENDPOINT=http://127.0.0.1:8090 make run                 # the app on its hub path

The server is olah from `make hub-server` (tests/hub/server.py); the repositories are those of tests/hub/repos.py,
made under PLAYGROUND_HOME/hub-server. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    os.environ.setdefault("PLAYGROUND_HOME", str(REPO_ROOT / ".cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"  # building the repositories reads the offline assets only
    from shared.settings import read_settings
    from tests.hub import repos
    from tests.hub.server import HubServer, HubServerError

    root = read_settings().home / "hub-server"
    root.mkdir(parents=True, exist_ok=True)
    repos.build_all(root / "mirrors", root / "scratch")
    server = HubServer(root, root / "mirrors", policy=repos.POLICY, port=args.port)
    try:
        server.start()
    except HubServerError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"Serving {len(list((root / 'mirrors').glob('*/*/*/.git')))} repositories: "
          f"HF_ENDPOINT={server.endpoint} make run", flush=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
