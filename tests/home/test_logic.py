"""The home page's logic, without a server."""

from shared.cache import get_cache
from spaces.home import logic


def test_environment_names_device_hub_and_budget():
    rows = dict(logic.environment_rows())
    assert rows["device"] == "cpu" and rows["default dtype"] == "float32"
    assert rows["hugging face hub"].startswith("offline")
    assert "GiB" in rows["model cache budget"]


def test_roles_say_where_each_model_comes_from():
    rows = {r[0]: r for r in logic.role_rows()}
    assert rows["chat-lm"][2] == "local:smollm2-135m-instruct" and rows["chat-lm"][3].startswith("offline package")
    assert rows["clip"][3] == "unavailable offline: needs the hub"


def test_load_list_and_evict_through_the_cache():
    message = logic.load_model("encoder", "")
    assert message.startswith("local:all-minilm-l6-v2 (offline) is loaded for the encoder role")
    kinds = {(row[0], row[1]) for row in logic.loaded_rows()}
    assert {("local:all-minilm-l6-v2", "encoder"), ("local:all-minilm-l6-v2", "tokenizer")} <= kinds
    assert logic.evict("local:all-minilm-l6-v2") == "Evicted: local:all-minilm-l6-v2"
    assert logic.evict("local:all-minilm-l6-v2") == "'local:all-minilm-l6-v2' is not loaded."
    assert not any(row["model"] == "local:all-minilm-l6-v2" for row in get_cache().entries())


def test_only_roles_with_a_loader_kind_are_offered_for_loading(monkeypatch):
    import dataclasses

    import pytest

    from shared import registry

    assert logic.loadable_roles() == ["chat-lm", "encoder", "classifier", "clip", "diffusion"]
    # A role whose page has not added its loader kind yet is not offered, and loading it says why.
    video = dataclasses.replace(registry.ROLES["clip"], name="video", kind="video-pipeline")
    monkeypatch.setitem(registry.ROLES, "video", video)
    assert "video" not in logic.loadable_roles()
    with pytest.raises(ValueError, match="The video role cannot be loaded yet: no page has added a 'video-pipeline'"):
        logic.load_model("video", "")


def test_a_tokenizer_shows_no_memory_figure_it_never_measured():
    """A tokenizer holds no tensors, so the cache reads 0 bytes for it: its row says "-" (as its dtype does),
    not "0.0 MiB". Seen to fail before issue 22: the row showed 0.0, as if a tokenizer took no memory."""
    from shared.cache import LoadSpec
    from shared.registry import resolve

    source = resolve("encoder")
    get_cache().get(LoadSpec("tokenizer", source.location, label=source.label))
    rows = [dict(zip(logic.LOADED_COLUMNS, row)) for row in logic.loaded_rows()]
    (row,) = [r for r in rows if r["model"] == source.label and r["kind"] == "tokenizer"]
    assert row["dtype"] == "-" and row["MiB"] == "-"
