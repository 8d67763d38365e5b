"""Roles resolve to hub ids online and to offline assets here; only allow-listed folders are loadable."""

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
def test_roles_without_offline_weights_say_they_need_the_hub(role):
    with pytest.raises(ValueError, match="needs the Hugging Face Hub"):
        resolve(role)


def test_hub_choice_offline_is_refused_with_the_offline_choices():
    with pytest.raises(ValueError, match="disabled here. Offline choices: local:smollm2-135m-instruct"):
        resolve("chat-lm", "gpt2")


@pytest.mark.parametrize("choice", ["../../etc", "/root", "local:../../etc", "local:nothing-here"])
def test_paths_and_unknown_local_names_are_refused(choice):
    with pytest.raises(ValueError):
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


@pytest.mark.parametrize("name", ["../x", "a b", "", "sentiment"])
def test_register_local_checks_its_name(tmp_path, name):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError):
        register_local(name, tmp_path, role="encoder")


def test_register_local_needs_a_model_folder(tmp_path):
    with pytest.raises(ValueError, match="not a saved model folder"):
        register_local("empty", tmp_path, role="encoder")


def test_every_role_names_hub_choices():
    for role in ROLES.values():
        assert role.hub_default and len(role.hub_choices) >= 2
