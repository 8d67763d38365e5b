"""The hub path, tested against a running hub server (tests/hub/server.py: olah, in its own virtual environment).

`hub` starts the server once for the session, serving the repositories of tests/hub/repos.py; if it cannot start,
every test here fails with the reason (no skip). `online_app` runs `python app.py` (not --offline) in a process of
its own with HF_ENDPOINT pointing at the server, a fresh PLAYGROUND_HOME and an empty HF_HOME, as a Space starts;
`online_client` drives it with gradio_client. The test process itself stays offline (tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hub import repos
from tests.hub.online import online_env
from tests.hub.server import HubServer, HubServerError

@pytest.fixture(scope="session")
def hub_mirrors(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub-repos")
    repos.build_all(root / "mirrors", root / "scratch")
    return root / "mirrors"


@pytest.fixture(scope="session")
def hub(tmp_path_factory, hub_mirrors) -> HubServer:
    server = HubServer(tmp_path_factory.mktemp("hub-server"), hub_mirrors, policy=repos.POLICY)
    try:
        server.start()
    except HubServerError as error:
        pytest.fail(f"the tests' hub server could not start: {error}", pytrace=False)
    yield server
    server.kill()


@pytest.fixture(scope="session")
def online_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("online-app")


@pytest.fixture(scope="session")
def online_app(hub, online_home):
    """(process, url, log path) of `python app.py` online against the hub server, for the session."""
    from shared.launch import app_process

    log = online_home / "app.log"
    with app_process(["app.py"], env=online_env(hub.endpoint, online_home), offline=False, log=log,
                     timeout=180) as (process, url, _):
        yield process, url, log


@pytest.fixture(scope="session")
def online_client(online_app):
    from gradio_client import Client

    return Client(online_app[1], verbose=False)


@pytest.fixture
def own_online_client(online_app):
    from gradio_client import Client

    return Client(online_app[1], verbose=False)
