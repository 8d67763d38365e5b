"""Every way the hub can fail a load, through the app online against the tests' hub server: the visitor gets one
clear line (never a trace), the app stays up, and nothing half-downloaded is ever used as a model.

- a repository the hub does not have, a gated one (401 without a token, 403 without access), one that needs its
  own Python code (refused: trust_remote_code is never enabled, and its code never runs);
- the hub going away in the middle of a download (the server is killed), then coming back on the same port: the
  next load resumes and the weights are byte for byte the repository's;
- a hub that accepts connections but never answers does not stall the app's start.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.hub import repos
from tests.hub.online import hf_cache, online_env, snapshot_files

WAIT = 180  # s: a bound on waiting for a download to show up or a job to end (not a timing assertion)


def assert_app_up(client: Client) -> None:
    environment, *_ = client.predict(api_name="/home_environment")
    assert {row[0] for row in environment["data"]} >= {"hugging face hub", "model cache budget"}


def lfs_object(mirrors, repo_id: str, name: str):
    """The bytes of `name` in `repo_id` as the hub server holds them (its LFS object, named by its sha256)."""
    folder = mirrors / "models" / repo_id
    pointer = (folder / name).read_text()
    oid = pointer.split("oid sha256:")[1].split()[0]
    return folder / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid


def test_a_missing_repository_is_said_plainly(online_client):
    with pytest.raises(AppError) as caught:
        online_client.predict("classifier", repos.MISSING, api_name="/home_load")
    message = str(caught.value)
    assert f"{repos.MISSING} is not on the Hugging Face Hub, or is private" in message
    assert "HF_TOKEN" in message and "Traceback" not in message and "\n" not in message.strip()
    assert_app_up(online_client)


@pytest.mark.parametrize("repo_id, status", [(repos.GATED, 401), (repos.RESTRICTED, 403)], ids=["401", "403"])
def test_a_gated_repository_says_to_ask_for_access_and_set_hf_token(online_client, online_home, repo_id, status):
    with pytest.raises(AppError) as caught:
        online_client.predict("classifier", repo_id, api_name="/home_load")
    message = str(caught.value)
    assert f"{repo_id} is a gated model" in message
    assert "ask for access on" in message and f"/{repo_id}" in message and "HF_TOKEN" in message
    assert ("not on its access list" in message) == (status == 403)
    assert "Traceback" not in message and "\n" not in message.strip()
    assert not snapshot_files(online_home, repo_id)
    assert_app_up(online_client)


def test_a_repository_with_custom_code_is_refused_and_its_code_never_runs(online_client, online_home):
    with pytest.raises(AppError) as caught:
        online_client.predict("chat-lm", repos.CUSTOM_CODE, api_name="/home_load")
    message = str(caught.value)
    assert f"{repos.CUSTOM_CODE} needs its own Python code" in message
    assert "never runs" in message and "trust_remote_code is never enabled" in message
    # modeling_custom.py raises SystemExit: it was never fetched, let alone imported, and the app is still up.
    assert not list(online_home.rglob("modeling_custom.py"))
    assert "modeling_custom.py" not in snapshot_files(online_home, repos.CUSTOM_CODE)
    assert_app_up(online_client)


def test_the_hub_going_away_mid_download_then_coming_back(hub, hub_mirrors, online_home, own_online_client):
    client = own_online_client
    source = lfs_object(hub_mirrors, repos.SLOW, "model.safetensors")
    blobs = hf_cache(online_home) / f"models--{repos.SLOW.replace('/', '--')}" / "blobs"
    job = client.submit("classifier", repos.SLOW, api_name="/home_load")
    try:
        deadline = time.monotonic() + WAIT
        while not list(blobs.glob(f"{source.name}*.incomplete")):  # the weights (served at 1 MiB/s) are coming
            assert not job.done(), f"the load ended before the weights were being downloaded: {job.result()}"
            assert time.monotonic() < deadline, f"no download of {repos.SLOW}'s weights began under {blobs}"
            time.sleep(0.05)
        hub.kill()
        with pytest.raises(AppError) as caught:
            job.result(timeout=WAIT)
        message = str(caught.value)
        assert f"The Hugging Face Hub stopped answering while downloading {repos.SLOW}" in message
        assert "nothing partial is used; load again to resume" in message and "Traceback" not in message
        # The partial weights stay a *.incomplete blob: never in the snapshot, never loaded.
        assert "model.safetensors" not in snapshot_files(online_home, repos.SLOW)
        assert list(blobs.glob(f"{source.name}*.incomplete"))
        assert_app_up(client)
        _, _, loaded, *_ = client.predict(api_name="/home_environment")
        # Its tokenizer (whole files, downloaded before the weights) may be held; the model is not.
        assert [repos.SLOW, "sequence-classifier"] not in [row[:2] for row in loaded["data"]]
    finally:
        if hub.process is None:  # the session's hub server, back on its own port for the tests after this one
            hub.start()
    status, *_ = client.predict("classifier", repos.SLOW, api_name="/home_load")
    assert status.startswith(f"{repos.SLOW} (hub) is loaded"), status
    weights = snapshot_files(online_home, repos.SLOW)["model.safetensors"]
    assert repos.sha256(weights) == repos.sha256(source) == source.name
    assert not list(blobs.glob("*.incomplete"))
    client.predict(repos.SLOW, api_name="/home_evict")


class SilentHub:
    """A TCP listener that accepts connections and never answers a byte: a hub that hangs."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.accept, daemon=True)

    def accept(self):
        while not self.stopping.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                continue
            self.held.append(connection)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join(5)
        for connection in [*self.held, self.server]:
            connection.close()


def test_a_hub_that_never_answers_does_not_stall_the_apps_start(tmp_path):
    from shared.launch import app_process

    with SilentHub() as silent:
        env = online_env(f"http://127.0.0.1:{silent.port}", tmp_path, HF_HUB_ETAG_TIMEOUT="1",
                         HF_HUB_DOWNLOAD_TIMEOUT="1")
        with app_process(["app.py"], env=env, offline=False, log=tmp_path / "app.log", timeout=180) as (_, url, _):
            client = Client(url, verbose=False)
            environment, *_ = client.predict(api_name="/home_environment")
            settings = {row[0]: row[1] for row in environment["data"]}
            assert settings["hugging face hub"] == "online"  # it takes connections: the hub is there, but mute
            with pytest.raises(AppError) as caught:
                client.predict("classifier", repos.CLASSIFIER, api_name="/home_load")
            message = str(caught.value)
            assert f"The Hugging Face Hub stopped answering while downloading {repos.CLASSIFIER}" in message
            assert_app_up(client)
