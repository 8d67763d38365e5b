"""Visitor text is accepted only as a hub id: paths, URLs and malformed ids are refused, saying why."""

import pytest

from shared.hub import check_hub_id, hub_reachable, hub_status


@pytest.mark.parametrize("text", ["../../etc", "/root", "~/.ssh", "./model", "..", "C:\\models\\x",
                                  "https://evil.example/model", "a/b/c", "org/../etc", "foo--bar", "-x", "a/"])
def test_paths_urls_and_malformed_ids_are_refused(text):
    with pytest.raises(ValueError, match="path|URL|not a Hugging Face Hub id"):
        check_hub_id(text)


def test_empty_id_is_refused():
    with pytest.raises(ValueError, match="empty"):
        check_hub_id("   ")


def test_an_id_that_names_a_local_folder_is_refused(monkeypatch, tmp_path):
    (tmp_path / "gpt2").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="folder on this machine"):
        check_hub_id("gpt2")


@pytest.mark.parametrize("text", ["gpt2", "distilgpt2", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                  "google/bert_uncased_L-4_H-256_A-4", " Qwen/Qwen2.5-0.5B-Instruct "])
def test_hub_ids_are_accepted(text, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert check_hub_id(text) == text.strip()


def test_offline_setting_disables_the_hub():
    # conftest sets PLAYGROUND_OFFLINE=1: no probe is even made.
    assert hub_reachable() is False
    assert hub_status().startswith("offline (disabled")


@pytest.mark.parametrize("endpoint, address", [
    ("https://huggingface.co", ("huggingface.co", 443)), ("http://127.0.0.1:8090", ("127.0.0.1", 8090)),
    ("http://mirror.example", ("mirror.example", 80)), ("https://hf-mirror.com:8443/", ("hf-mirror.com", 8443)),
])
def test_the_endpoints_scheme_and_port_decide_where_to_dial(endpoint, address):
    from shared.hub import endpoint_address

    assert endpoint_address(endpoint) == address


def test_a_hub_on_another_port_is_seen(monkeypatch):
    """HF_ENDPOINT with a port (a mirror, the tests' hub server): reachable when that port answers."""
    import socket

    from shared import hub

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        for name in ("PLAYGROUND_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        hub.hub_reachable.cache_clear()
        try:
            assert hub.hub_reachable() is True
        finally:
            hub.hub_reachable.cache_clear()
    hub.hub_reachable.cache_clear()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # nothing listens there now
    try:
        assert hub.hub_reachable() is False
    finally:
        hub.hub_reachable.cache_clear()
