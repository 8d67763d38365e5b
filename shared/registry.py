"""The model registry: which model fills each *role* a page needs, online and offline.

A role (chat LM, encoder, CLIP, diffusion) has a hub default, other hub choices, and where possible an
offline fallback built from a pip or Debian package (see shared/assets.py). `resolve()` turns a role and
an optional visitor choice into a `ModelSource`: a hub id when the hub is reachable, else a folder on the
local allow-list. Visitor text is never used as a path.

Models a page saves (a fine-tuned classifier, later a small CLIP or Stable Diffusion) go through
`save_local_model`: written into a temporary folder, given a manifest (`playground-model.json`: name, role,
source run, time), then renamed into `PLAYGROUND_HOME/models/<name>` in one step. On the first lookup after
a start, every folder there with a manifest is offered again.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared import assets
from shared.hub import LOCAL_PREFIX, check_hub_id, hub_reachable
from shared.settings import read_settings


@dataclass(frozen=True)
class Role:
    name: str
    title: str
    kind: str  # the loader kind (shared/loaders.py) of the role's main model
    hub_default: str
    hub_choices: tuple[str, ...]
    offline_asset: str | None  # None: no weights ship in any package; the role needs the hub


ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role("chat-lm", "Chat / causal language model", "causal-lm", "HuggingFaceTB/SmolLM2-135M-Instruct",
             ("HuggingFaceTB/SmolLM2-360M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "gpt2", "distilgpt2"),
             "smollm2-135m-instruct"),
        Role("encoder", "BERT-family encoder", "encoder", "sentence-transformers/all-MiniLM-L6-v2",
             ("distilbert-base-uncased", "bert-base-uncased", "google/bert_uncased_L-4_H-256_A-4"),
             "all-minilm-l6-v2"),
        Role("classifier", "Sentence classifier (fine-tuned encoder)", "sequence-classifier",
             "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
             ("cardiffnlp/twitter-roberta-base-sentiment-latest", "textattack/bert-base-uncased-SST-2"), None),
        Role("clip", "CLIP image-text model", "clip", "openai/clip-vit-base-patch32",
             ("openai/clip-vit-large-patch14", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"), None),
        Role("diffusion", "Stable Diffusion pipeline", "diffusion", "stabilityai/sd-turbo",
             ("stable-diffusion-v1-5/stable-diffusion-v1-5", "segmind/tiny-sd", "stabilityai/sdxl-turbo"), None),
    )
}


@dataclass(frozen=True)
class ModelSource:
    label: str  # what the UI shows: a hub id or "local:<name>"
    location: str  # what from_pretrained receives: the hub id, or an absolute folder
    origin: Literal["hub", "offline", "local"]


MANIFEST = "playground-model.json"
STALE_SAVE_SECONDS = 3600  # a temporary save folder this old was left by a crash
log = logging.getLogger("playground.registry")

_local_models: dict[str, tuple[Path, str]] = {}  # name -> (folder, role): models the app saved (a fine-tuned classifier)
_local_lock = threading.RLock()
_restored_from: Path | None = None  # the models folder already read at start


def check_local_name(name: str) -> str:
    """A name for `local:<name>`: letters, digits, '-', '_', '.'; not an offline asset's name."""
    if not name or not all(ch.isalnum() or ch in "-_." for ch in name) or name.startswith("."):
        raise ValueError(f"local model names use letters, digits, '-', '_' and '.', got {name!r}")
    if name in assets.ASSETS:
        raise ValueError(f"{name!r} is the name of an offline asset; choose another")
    return name


def register_local(name: str, folder: Path, role: str) -> str:
    """Put a folder the app itself wrote on the allow-list under `local:<name>` for `role`; returns that label.

    Only code registers folders (a page saving a model it trained, a test its tiny model): never a visitor's path.
    """
    get_role(role)
    check_local_name(name)
    folder = Path(folder).resolve()
    if not is_model_folder(folder):
        raise ValueError(f"{folder} is not a saved model folder (no config.json or model_index.json)")
    with _local_lock:
        _local_models[name] = (folder, role)
    return LOCAL_PREFIX + name


def models_dir() -> Path:
    return read_settings().home / "models"


def is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").exists() or (folder / "model_index.json").exists()


def restore_saved_models() -> list[str]:
    """Register every saved model under PLAYGROUND_HOME/models that has a valid manifest (once per folder);
    returns their labels. Half-written saves left by a crash (over an hour old) are removed."""
    global _restored_from
    root = models_dir()
    with _local_lock:
        if _restored_from == root:
            return []
        _restored_from = root
        labels = []
        for folder in sorted(root.glob("*")) if root.is_dir() else []:
            if folder.name.startswith("."):  # .saving-* / .replaced-*: a save under way, or one a crash interrupted
                if time.time() - folder.stat().st_mtime > STALE_SAVE_SECONDS:  # never another process's live save
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                manifest = json.loads((folder / MANIFEST).read_text())
                labels.append(register_local(manifest["name"], folder, manifest["role"]))
            except (OSError, ValueError, KeyError, TypeError) as error:
                log.warning("not offering %s: no valid %s (%s)", folder, MANIFEST, error)
        return labels


def save_local_model(name: str, role: str, write: Callable[[Path], None], source_run: str = "") -> str:
    """Save a model the app made as `local:<name>` for `role`, so that it survives a restart; returns the label.

    1. Check the name and role. 2. `write(folder)` fills a fresh temporary folder beside the saved models.
    3. Write the manifest. 4. Move an older model of that name aside, rename the new one into place, register
    it, and remove the old files. A loaded copy of the old model keeps working (its weights are in memory);
    the model cache forgets it, so the next load reads the new files.
    """
    # 1. Check.
    get_role(role)
    check_local_name(name)
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    # 2-3. Write everything into a temporary folder: a crash leaves no half-saved model under the name.
    temporary = Path(tempfile.mkdtemp(prefix=f".saving-{name}-", dir=root))
    replaced = None
    try:
        write(temporary)
        if not is_model_folder(temporary):
            raise ValueError(f"saving {name!r} wrote no config.json or model_index.json")
        manifest = {"name": name, "role": role, "source_run": source_run,
                    "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=1))
        # 4. Swap it into place.
        target = root / name
        with _local_lock:
            if target.exists():
                replaced = root / f".replaced-{name}-{uuid.uuid4().hex[:8]}"
                target.rename(replaced)
            temporary.rename(target)
            label = register_local(name, target, role)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if replaced is not None:
        from shared.cache import get_cache

        get_cache().forget_source(str(target.resolve()))
        shutil.rmtree(replaced, ignore_errors=True)
    return label


def local_names(role: str | None = None) -> list[str]:
    """The `local:` labels a visitor may choose (for one role, or all): offline assets and registered folders."""
    restore_saved_models()
    offline = [LOCAL_PREFIX + r.offline_asset for r in ROLES.values() if r.offline_asset and role in (None, r.name)]
    with _local_lock:
        saved = [LOCAL_PREFIX + n for n, (_, r) in sorted(_local_models.items()) if role in (None, r)]
    return offline + saved


def get_role(name: str) -> Role:
    if name not in ROLES:
        raise ValueError(f"role must be one of {tuple(ROLES)}, got {name!r}")
    return ROLES[name]


def resolve_local(label: str) -> ModelSource:
    name = label[len(LOCAL_PREFIX):]
    if name in assets.ASSETS:
        try:
            folder = assets.ensure(name)
        except assets.AssetUnavailable as error:
            raise ValueError(str(error)) from None
        return ModelSource(label, str(folder), "offline")
    restore_saved_models()
    with _local_lock:
        folder, _ = _local_models.get(name, (None, None))
    if folder is None:
        raise ValueError(f"{label!r} is not on the local allow-list; known: {', '.join(local_names()) or 'none'}")
    return ModelSource(label, str(folder), "local")


def resolve(role_name: str, choice: str | None = None) -> ModelSource:
    """The model to load for a role: the visitor's `choice` (hub id or local: label) or the role's default.

    Raises ValueError with a message for the visitor when the choice is refused or cannot be had offline.
    """
    role = get_role(role_name)
    choice = (choice or "").strip()
    if choice.startswith(LOCAL_PREFIX):
        return resolve_local(choice)
    if choice:
        model_id = check_hub_id(choice)
        if not hub_reachable():
            raise ValueError(
                f"{model_id!r} is on the Hugging Face Hub, which is {'disabled' if read_settings().offline else 'not reachable'} "
                f"here. Offline choices: {', '.join(local_names(role.name)) or 'none'}."
            )
        return ModelSource(model_id, model_id, "hub")
    if hub_reachable():
        return ModelSource(role.hub_default, role.hub_default, "hub")
    if role.offline_asset is None:
        saved = newest_saved(role.name)
        if saved is None:
            raise ValueError(
                f"The {role.title} role needs the Hugging Face Hub ({role.hub_default}), and no offline weights ship "
                "for it: train one on its page, or connect to the hub."
            )
        return resolve_local(saved)
    return resolve_local(LOCAL_PREFIX + role.offline_asset)


def newest_saved(role_name: str) -> str | None:
    """The label of the most recently saved local model of a role (the offline default of a role whose weights
    ship nowhere, such as a CLIP the retrieval page trained); None when there is none."""
    restore_saved_models()
    with _local_lock:
        saved = [(folder.stat().st_mtime, name) for name, (folder, role) in _local_models.items()
                 if role == role_name and folder.exists()]
    return LOCAL_PREFIX + max(saved)[1] if saved else None


def choices(role_name: str) -> list[str]:
    """What a page's model dropdown offers: hub choices when online, local labels always."""
    role = get_role(role_name)
    hub = [role.hub_default, *role.hub_choices] if hub_reachable() else []
    return hub + local_names(role.name)
