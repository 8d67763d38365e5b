"""The whole app, launched on a free port and driven through gradio_client as a visitor's browser would."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from gradio_client.exceptions import AppError

from shared import registry
from shared.launch import app_process
from tests.conftest import REPO_ROOT


def table(value) -> list[list]:
    return value["data"]


def test_every_event_of_every_page_has_a_page_prefixed_api_name_and_named_parameters(client):
    import app

    demo = app.build_app(list(app.TOPIC_PAGES))
    pages = ["home", *app.available_pages(list(app.TOPIC_PAGES))]
    events = [fn for fn in demo.fns.values() if fn.fn is not None]  # not the private events `cancels=` adds
    unnamed = [fn.name for fn in events if not fn.api_name]
    assert unnamed == [], f"events without an api_name: {unnamed}"
    foreign = [fn.api_name for fn in events if fn.api_name.split("_")[0] not in pages]
    assert foreign == [], f"api_names without their page's prefix: {foreign}"
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {f"/{fn.api_name}" for fn in events} <= set(endpoints)
    positional = {name: [p["parameter_name"] for p in endpoint["parameters"]]
                  for name, endpoint in endpoints.items()
                  if any(p["parameter_name"].startswith("param_") for p in endpoint["parameters"])}
    assert positional == {}, f"endpoints whose parameters have no names: {positional}"


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


def test_a_model_that_fails_to_load_leaves_the_app_up(client, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_local_models", dict(registry._local_models))  # forgotten after the test
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    label = registry.register_local("broken-model", tmp_path, role="encoder")
    with pytest.raises(AppError, match="Could not load local:broken-model"):
        client.predict("encoder", label, api_name="/home_load")
    environment, _, loaded, _, _ = client.predict(api_name="/home_environment")
    assert table(environment) and not any(row[0] == label for row in table(loaded))


@pytest.mark.parametrize("command", [["app.py"], ["-m", "spaces.home"]], ids=["app", "home-alone"])
def test_the_app_and_a_page_alone_start_offline(command):
    """`python app.py` (behind `make run`) and `python -m spaces.<page>` serve their first page."""
    with app_process(command) as (_, url, _):
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "Transformer Playground" in page
        config = json.loads(urllib.request.urlopen(f"{url}config", timeout=5).read())
        assert config["title"] == "Transformer Playground"


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
