"""Logic of the home page (no Gradio): the environment, the roles and what fills them, the model cache panel."""

from __future__ import annotations

import time

import shared.loaders  # noqa: F401  (registers the standard loader kinds with the cache)
from shared import assets
from shared.cache import LoadSpec, get_cache, loader_kinds
from shared.device import describe_device
from shared.hub import LOCAL_PREFIX, hub_reachable, hub_status
from shared.registry import ROLES, get_role, newest_saved, resolve
from shared.settings import read_settings

LOADED_COLUMNS = ["model", "kind", "dtype", "device", "MiB", "load s", "last used"]


def environment_rows() -> list[list[str]]:
    settings = read_settings()
    rows = [[key, value] for key, value in describe_device().items()]
    rows += [
        ["hugging face hub", hub_status()],
        ["model cache budget", f"{settings.memory_budget_bytes / 2**30:.1f} GiB (PLAYGROUND_MEMORY_BUDGET_GB)"],
        ["offline assets", f"{sum(assets.is_built(n) for n in assets.ASSETS)} of {len(assets.ASSETS)} built in {settings.assets_dir}"],
    ]
    return rows


def role_rows() -> list[list[str]]:
    """Each role, the model that fills it now, and whether that comes from the hub or an offline package."""
    online = hub_reachable()
    rows = []
    for role in ROLES.values():
        if online:
            model, origin = role.hub_default, "hub"
        elif role.offline_asset:
            built = "built" if assets.is_built(role.offline_asset) else "built on first use"
            model, origin = LOCAL_PREFIX + role.offline_asset, f"offline package ({built})"
        elif saved := newest_saved(role.name):
            model, origin = saved, "saved by a page (local)"
        else:
            model, origin = role.hub_default, "unavailable offline: needs the hub"
        rows.append([role.name, role.title, model, origin])
    return rows


def loadable_roles() -> list[str]:
    """Roles whose loader kind exists: a role whose page has not added its loader yet cannot be loaded."""
    kinds = loader_kinds()
    return [role.name for role in ROLES.values() if role.kind in kinds]


def loaded_rows() -> list[list[object]]:
    """One row per cache entry. An entry whose memory is not measured (a tokenizer holds no tensors: the cache
    reads 0 bytes and dtype "-") shows "-" for MiB too, not a 0 it never measured."""
    return [[entry[c] if c != "MiB" or entry["dtype"] != "-" else "-" for c in LOADED_COLUMNS]
            for entry in get_cache().entries()]


def loaded_names() -> list[str]:
    return sorted({entry["model"] for entry in get_cache().entries()})


def cache_usage() -> str:
    cache = get_cache()
    return (f"Holding {cache.total_bytes / 2**20:,.0f} MiB of a {cache.budget_bytes / 2**30:.1f} GiB budget "
            f"in {len(loaded_names())} model(s).")


def load_model(role_name: str, choice: str | None) -> str:
    """Load a role's model (the default, or a hub id / local: label) through the cache; returns a status line."""
    role = get_role(role_name)
    if role.name not in loadable_roles():
        raise ValueError(f"The {role.name} role cannot be loaded yet: no page has added a {role.kind!r} loader.")
    source = resolve(role.name, choice)
    started = time.perf_counter()
    cache = get_cache()
    if role.kind in ("causal-lm", "encoder", "sequence-classifier"):
        cache.get(LoadSpec("tokenizer", source.location, label=source.label))
    cache.get(LoadSpec(role.kind, source.location, label=source.label))
    seconds = time.perf_counter() - started
    return f"{source.label} ({source.origin}) is loaded for the {role.name} role, in {seconds:.1f} s."


def evict(name: str | None) -> str:
    """Evict one model by its shown name, or every model when `name` is empty."""
    dropped = get_cache().evict(name or None)
    if not dropped:
        return f"{name!r} is not loaded." if name else "Nothing was loaded."
    return "Evicted: " + ", ".join(sorted(set(dropped)))
