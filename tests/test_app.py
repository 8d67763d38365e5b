"""The whole app, launched on a free port and driven through gradio_client as a visitor's browser would."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from gradio_client.exceptions import AppError

from shared import registry
from tests.conftest import REPO_ROOT, free_port


def table(value) -> list[list]:
    return value["data"]


def test_every_event_has_an_api_name(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/home_environment", "/home_refresh", "/home_load", "/home_evict"} <= set(endpoints)


def test_heavy_events_share_one_group_and_light_ones_do_not():
    import app

    demo = app.build_app(list(app.TOPIC_PAGES))
    groups = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in demo.fns.values() if fn.api_name}
    assert groups["home_load"] == ("heavy", 1)
    assert groups["home_environment"][0] != "heavy" and groups["home_environment"][1] is None


def test_home_reports_the_offline_environment(client):
    environment, roles, _, _, usage = client.predict(api_name="/home_environment")
    assert usage.startswith("Holding")
    settings = dict(table(environment))
    assert settings["hugging face hub"].startswith("offline") and settings["device"] == "cpu"
    assert {row[0]: row[2] for row in table(roles)}["encoder"] == "local:all-minilm-l6-v2"


def test_load_show_and_evict_a_model(client):
    status, loaded, _, usage = client.predict("encoder", "", api_name="/home_load")
    assert "local:all-minilm-l6-v2 (offline) is loaded" in status
    rows = table(loaded)
    assert ["local:all-minilm-l6-v2", "encoder", "float32", "cpu"] == rows[0][:4] and rows[0][4] > 80
    assert "MiB of a 10.0 GiB budget" in usage
    status, loaded, _, _ = client.predict("local:all-minilm-l6-v2", api_name="/home_evict")
    assert status == "Evicted: local:all-minilm-l6-v2"
    assert not any(row[0] == "local:all-minilm-l6-v2" for row in table(loaded))


@pytest.mark.parametrize("typed", ["../../etc", "/root"])
def test_paths_typed_as_model_ids_are_refused(client, typed):
    with pytest.raises(AppError, match="is a path or URL; only Hugging Face Hub ids"):
        client.predict("chat-lm", typed, api_name="/home_load")


def test_hub_model_offline_gets_a_clear_message(client):
    with pytest.raises(AppError, match="'gpt2' is on the Hugging Face Hub, which is disabled here"):
        client.predict("chat-lm", "gpt2", api_name="/home_load")


def test_a_model_that_fails_to_load_leaves_the_app_up(client, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    label = registry.register_local("broken-model", tmp_path, role="encoder")
    with pytest.raises(AppError, match="Could not load local:broken-model"):
        client.predict("encoder", label, api_name="/home_load")
    environment, _, loaded, _, _ = client.predict(api_name="/home_environment")
    assert table(environment) and not any(row[0] == label for row in table(loaded))


@pytest.mark.parametrize("command", [["app.py"], ["-m", "spaces.home"]], ids=["app", "home-alone"])
def test_the_app_and_a_page_alone_start_offline(command):
    """`python app.py` (behind `make run`) and `python -m spaces.<page>` serve their first page."""
    port = free_port()
    process = subprocess.Popen([sys.executable, *command, "--offline", "--port", str(port)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                assert time.time() < deadline, "the app did not serve its first page"
                time.sleep(0.2)
        assert "Transformer Playground" in page
        config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read())
        assert config["title"] == "Transformer Playground"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_no_model_and_no_torch_at_build_time():
    code = ("import sys, app; app.build_app(list(app.TOPIC_PAGES)); "
            "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_bad_flags_are_refused():
    result = subprocess.run([sys.executable, "app.py", "--pages", "painting"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown page(s) ['painting']" in result.stderr
