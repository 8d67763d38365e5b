"""Roles resolve to hub ids online and to offline assets here; only allow-listed folders are loadable; saved
models survive a restart and are saved atomically."""

import json
from pathlib import Path

import pytest

from shared import registry
from shared.registry import ROLES, choices, register_local, resolve


def test_offline_roles_resolve_to_built_assets():
    lm = resolve("chat-lm")
    assert lm.origin == "offline" and lm.label == "local:smollm2-135m-instruct"
    assert (Path(lm.location) / "config.json").exists()
    encoder = resolve("encoder")
    assert encoder.label == "local:all-minilm-l6-v2" and (Path(encoder.location) / "model.safetensors").exists()


@pytest.mark.parametrize("role", ["clip", "diffusion"])
def test_roles_without_offline_weights_say_they_need_the_hub(role, models_home):
    with pytest.raises(ValueError, match="needs the Hugging Face Hub .* train one on its page"):
        resolve(role)


def test_a_role_without_shipped_weights_defaults_offline_to_its_newest_saved_model(models_home):
    import os

    older = registry.save_local_model("clip-a", "clip", config_writer(1))
    newer = registry.save_local_model("clip-b", "clip", config_writer(2))
    os.utime(models_home / "clip-a", (1, 1))  # saved long ago
    assert resolve("clip").label == newer
    os.utime(models_home / "clip-b", (0, 0))  # now the older one is the newest
    assert resolve("clip").label == older


def test_hub_choice_offline_is_refused_with_the_offline_choices():
    with pytest.raises(ValueError, match="disabled here. Offline choices: local:smollm2-135m-instruct"):
        resolve("chat-lm", "gpt2")


@pytest.mark.parametrize("choice, message", [("../../etc", "is a path or URL"), ("/root", "is a path or URL"),
                                             ("local:../../etc", "not on the local allow-list"),
                                             ("local:nothing-here", "not on the local allow-list")])
def test_paths_and_unknown_local_names_are_refused(choice, message):
    with pytest.raises(ValueError, match=message):
        resolve("encoder", choice)


def test_unknown_role():
    with pytest.raises(ValueError, match="role must be one of"):
        resolve("painter")


def test_registered_folder_becomes_a_local_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_local_models", {})
    (tmp_path / "config.json").write_text("{}")
    label = register_local("my-run", tmp_path, role="encoder")
    assert label == "local:my-run"
    assert resolve("encoder", label).location == str(tmp_path.resolve())
    assert label in choices("encoder") and label not in choices("chat-lm")


@pytest.mark.parametrize("name, message", [("../x", "local model names use"), ("a b", "local model names use"),
                                           ("", "local model names use"), ("sentiment", "name of an offline asset")])
def test_register_local_checks_its_name(tmp_path, name, message):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=message):
        register_local(name, tmp_path, role="encoder")


def test_register_local_needs_a_model_folder(tmp_path):
    with pytest.raises(ValueError, match="not a saved model folder"):
        register_local("empty", tmp_path, role="encoder")


def test_every_role_names_hub_choices():
    for role in ROLES.values():
        assert role.hub_default and len(role.hub_choices) >= 2


@pytest.fixture
def models_home(tmp_path, monkeypatch):
    """An empty PLAYGROUND_HOME whose saved models the registry has not read yet; forgotten afterwards."""
    monkeypatch.setenv("PLAYGROUND_HOME", str(tmp_path))
    monkeypatch.setattr(registry, "_local_models", {})
    monkeypatch.setattr(registry, "_restored_from", None)
    return tmp_path / "models"


def config_writer(value):
    def write(folder: Path) -> None:
        (folder / "config.json").write_text(json.dumps({"value": value}))

    return write


def test_a_saved_model_is_restored_with_its_role_after_a_restart(models_home, monkeypatch):
    import os

    label = registry.save_local_model("kept", "classifier", config_writer(1), source_run="run-7")
    manifest = json.loads((models_home / "kept" / registry.MANIFEST).read_text())
    assert label == "local:kept" and manifest["role"] == "classifier" and manifest["source_run"] == "run-7"
    (models_home / "no-manifest").mkdir()
    (models_home / "no-manifest" / "config.json").write_text("{}")
    (models_home / ".saving-crashed-1234").mkdir()
    os.utime(models_home / ".saving-crashed-1234", (0, 0))  # left long ago
    (models_home / ".saving-under-way-5678").mkdir()  # another process saving now
    # A new process: nothing in memory, only the files.
    monkeypatch.setattr(registry, "_local_models", {})
    monkeypatch.setattr(registry, "_restored_from", None)
    assert "local:kept" in choices("classifier") and "local:kept" not in choices("encoder")
    assert resolve("classifier", "local:kept").location == str((models_home / "kept").resolve())
    assert "local:no-manifest" not in registry.local_names()  # its role is unknown: not offered
    assert not (models_home / ".saving-crashed-1234").exists()  # a half-written save is cleaned up
    assert (models_home / ".saving-under-way-5678").exists()  # a live one is left alone


def test_saving_over_a_loaded_model_keeps_the_loaded_copy_and_serves_the_new_one(models_home):
    from shared.cache import LoadSpec, get_cache, register_loader

    def read_config(spec, device, dtype):
        return json.loads((Path(spec.source) / "config.json").read_text())

    register_loader("config-json", read_config)
    try:
        label = registry.save_local_model("twice", "classifier", config_writer(1))
        spec = LoadSpec("config-json", resolve("classifier", label).location)
        loaded = get_cache().get(spec)
        registry.save_local_model("twice", "classifier", config_writer(2))
        assert loaded == {"value": 1}  # the copy in use is untouched
        assert get_cache().get(spec) == {"value": 2}  # the next load reads the new files
        assert sorted(p.name for p in models_home.iterdir()) == ["twice"]  # no temporary or old folder left
    finally:
        get_cache().loaders.pop("config-json")


def test_a_failed_save_leaves_the_old_model_and_no_half_written_folder(models_home):
    registry.save_local_model("stable", "classifier", config_writer(1))

    def fail(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.save_local_model("stable", "classifier", fail)
    assert json.loads((models_home / "stable" / "config.json").read_text()) == {"value": 1}
    assert sorted(p.name for p in models_home.iterdir()) == ["stable"]
    with pytest.raises(ValueError, match="wrote no config.json"):
        registry.save_local_model("empty", "classifier", lambda folder: None)
