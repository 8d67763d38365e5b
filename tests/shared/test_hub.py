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


# ---- hub_reachable dials the endpoint's own scheme and port ------------------------------------------------

@pytest.fixture
def online_settings(monkeypatch):
    """The hub not disabled (conftest disables it), and hub_reachable's once-a-process answer forgotten."""
    from shared import hub

    for name in ("PLAYGROUND_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    hub.hub_reachable.cache_clear()
    yield monkeypatch
    hub.hub_reachable.cache_clear()


@pytest.mark.parametrize("endpoint, address", [
    ("https://hub.example", ("hub.example", 443)), ("https://hub.example:8443", ("hub.example", 8443)),
    ("http://hub.example", ("hub.example", 80)), ("http://hub.example:8090/", ("hub.example", 8090)),
])
def test_hub_reachable_dials_the_endpoints_host_and_port(online_settings, endpoint, address):
    from shared import hub

    dialled = []

    def refuse(where, timeout=None):
        dialled.append(where)
        raise ConnectionRefusedError(where)

    online_settings.setenv("HF_ENDPOINT", endpoint)
    online_settings.setattr(hub.socket, "create_connection", refuse)
    assert hub.hub_reachable() is False
    assert dialled == [address]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_listening_port_is_reachable_whatever_the_scheme(online_settings, scheme):
    import socket

    from shared import hub

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        online_settings.setenv("HF_ENDPOINT", f"{scheme}://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_reachable() is True


# ---- hub failures in one line (hub_error_message) ----------------------------------------------------------

def hub_http_error(kind, status: int, url: str, code: str = ""):
    """A huggingface_hub HTTP error as it raises one: with the response that carried it."""
    import requests

    response = requests.Response()
    response.status_code = status
    response.url = url
    response.headers["X-Error-Code"] = code
    response.request = requests.Request("GET", url).prepare()
    return kind(f"{status} Client Error", response=response)


def raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    """`outer`, raised from `inner`, as transformers wraps a hub error in an OSError."""
    try:
        try:
            raise inner
        except BaseException as error:
            raise outer from error
    except BaseException as error:
        return error


REPO = "org/some-model"


@pytest.mark.parametrize("status, extra", [(401, ""), (403, " and this account is not on its access list")])
def test_a_gated_repo_says_ask_for_access_and_set_hf_token(status, extra):
    from huggingface_hub.errors import GatedRepoError

    from shared.hub import hub_error_message

    gated = hub_http_error(GatedRepoError, status, f"https://huggingface.co/{REPO}/resolve/main/config.json",
                           "GatedRepo")
    message = hub_error_message(raised_from(OSError("You are trying to access a gated repo."), gated))
    assert message == (f"{REPO} is a gated model{extra}: ask for access on https://huggingface.co/{REPO}, then set "
                       "HF_TOKEN to a token of the account that has it.")


def test_a_missing_or_private_repo_and_a_missing_revision():
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from shared.hub import hub_error_message

    missing = hub_http_error(RepositoryNotFoundError, 401, f"https://huggingface.co/api/models/{REPO}/revision/main")
    assert hub_error_message(raised_from(OSError("not a valid model identifier"), missing)) == (
        f"{REPO} is not on the Hugging Face Hub, or is private (for a private repository, set HF_TOKEN to a token "
        "that can read it).")
    revision = hub_http_error(RevisionNotFoundError, 404, f"https://huggingface.co/{REPO}/resolve/v9/config.json")
    assert hub_error_message(revision, "other/name") == (
        "other/name has no such revision (branch, tag or commit) on the Hugging Face Hub.")


def test_custom_code_is_refused_in_words():
    from shared.hub import hub_error_message

    refusal = ValueError(f"The repository {REPO} contains custom code which must be executed to correctly load the "
                         "model. Please pass the argument `trust_remote_code=True` to allow custom code to be run.")
    message = hub_error_message(refusal, REPO)
    assert message.startswith(f"{REPO} needs its own Python code") and "trust_remote_code is never enabled" in message


@pytest.mark.parametrize("make", ["chunked", "connection", "timeout", "local-entry"])
def test_a_hub_that_stopped_answering_says_load_again(make):
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError

    from shared.hub import hub_error_message

    error = {"chunked": lambda: requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"),
             "connection": lambda: requests.ConnectionError("Connection refused"),
             "timeout": lambda: requests.ReadTimeout("Read timed out"),
             "local-entry": lambda: LocalEntryNotFoundError("An error happened while trying to locate the file on "
                                                            "the Hub and we cannot find the requested files")}[make]()
    assert hub_error_message(raised_from(OSError("We couldn't connect"), error), REPO) == (
        f"The Hugging Face Hub stopped answering while downloading {REPO}: nothing partial is used; load again to "
        "resume the download.")


def test_other_errors_are_not_hub_failures():
    from huggingface_hub.errors import LocalEntryNotFoundError

    from shared.hub import hub_error_message

    assert hub_error_message(ValueError("the prompt is empty")) is None
    assert hub_error_message(raised_from(RuntimeError("shape mismatch"), KeyError("x"))) is None
    offline = LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic has "
                                      "been disabled.")
    assert "stopped answering" not in (hub_error_message(offline, REPO) or "")


def test_the_cache_and_the_ui_say_a_hub_failure_in_one_line():
    import requests

    from shared.cache import LoadSpec, ModelCache, ModelLoadError
    from shared.ui import to_gradio_error

    def cut_off(spec, device, dtype):
        raise OSError("We couldn't connect") from requests.exceptions.ChunkedEncodingError("IncompleteRead")

    cache = ModelCache(budget_bytes=1 << 30, loaders={"broken": cut_off})
    with pytest.raises(ModelLoadError) as caught:
        cache.get(LoadSpec("broken", REPO))
    assert str(caught.value).startswith(f"The Hugging Face Hub stopped answering while downloading {REPO}")
    assert to_gradio_error(caught.value).message == str(caught.value)
    assert not cache.entries()
    bare = raised_from(OSError("wrapped"), requests.ConnectionError("refused"))
    assert to_gradio_error(bare).message.startswith("The Hugging Face Hub stopped answering during a download")
