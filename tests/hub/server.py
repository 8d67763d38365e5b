"""The tests' hub server: olah in its own virtual environment (make hub-server), started and stopped like a
database, serving the repositories of tests/hub/repos.py under their hub ids.

    server = HubServer(root).start()     # raises HubServerError, with the reason and olah's log, if it cannot
    os.environ["HF_ENDPOINT"] = server.endpoint
    server.kill(); server.start()        # the same port again: a hub that went away and came back
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from shared.launch import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("olah_launch.py")
OLAH_PYTHON = Path(os.environ.get("PLAYGROUND_OLAH_PYTHON", REPO_ROOT / ".venv-olah" / "bin" / "python"))


class HubServerError(RuntimeError):
    pass


class HubServer:
    def __init__(self, root: Path, mirrors: Path | None = None, policy: dict | None = None, port: int | None = None):
        self.root = Path(root)
        self.mirrors = Path(mirrors or self.root / "mirrors")
        self.port = port or free_port()
        self.policy_path = self.root / "policy.json"
        self.policy_path.write_text(json.dumps(policy or {}))
        self.log_path = self.root / "olah.log"
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{self.root / "cache"}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            f'mirror-scheme = "http"\nmirror-netloc = "127.0.0.1:{self.port}"\n'
            f'mirror-lfs-netloc = "127.0.0.1:{self.port}"\n'
            "[accessibility]\noffline = true\n")
        return config

    def start(self, timeout: float = 60) -> "HubServer":
        if not OLAH_PYTHON.exists():
            raise HubServerError(f"olah's virtual environment is missing ({OLAH_PYTHON}): run `make hub-server`, "
                                 "which makes it with `pip install olah`.")
        config = self.write_config()
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(OLAH_PYTHON), str(LAUNCHER), "--config", str(config), "--policy", str(self.policy_path),
             "--log-path", str(self.root / "logs")],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHON", "VIRTUAL_ENV"))})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HubServerError(f"olah exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                ready = f"{self.endpoint}/api/models/{_any_repo(self.mirrors)}/revision/main"
                with urllib.request.urlopen(ready, timeout=2):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        self.kill()
        raise HubServerError(f"olah did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """Stop at once (SIGKILL, the whole process group): a hub that goes away mid-answer."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _any_repo(mirrors: Path) -> str:
    for git_dir in sorted(mirrors.glob("models/*/*/.git")):
        return f"{git_dir.parent.parent.name}/{git_dir.parent.name}"
    raise HubServerError(f"no model repository under {mirrors}")
