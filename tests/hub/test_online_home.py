"""The app online against the tests' hub server: the home page says so, and every role's default is its hub id,
loaded through the cache: the first time downloaded (with progress), the second time from the local HF cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.registry import ROLES
from tests.hub import repos
from tests.hub.online import snapshot_files


def test_home_says_online_and_roles_resolve_to_hub_ids(online_client):
    environment, roles, *_ = online_client.predict(api_name="/home_environment")
    settings = {row[0]: row[1] for row in environment["data"]}
    assert settings["hugging face hub"] == "online"
    rows = {row[0]: row for row in roles["data"]}
    for role in ROLES.values():
        assert rows[role.name][2] == role.hub_default
        assert rows[role.name][3] == "hub"


@pytest.mark.parametrize("role", list(ROLES))
def test_each_role_default_downloads_then_loads_from_the_cache(online_client, online_home, role):
    hub_id = ROLES[role].hub_default
    status, *_ = online_client.predict(role, "", api_name="/home_load")
    assert status.startswith(f"{hub_id} (hub) is loaded"), status
    files = snapshot_files(online_home, hub_id)
    assert "config.json" in files or "model_index.json" in files, sorted(files)
    assert hub_id in {repos.SMOLLM2, repos.MINILM, repos.CLASSIFIER, repos.CLIP, repos.DIFFUSION}
    online_client.predict(hub_id, api_name="/home_evict")
    before = {name: path.stat().st_mtime_ns for name, path in files.items()}
    status, *_ = online_client.predict(role, "", api_name="/home_load")
    assert status.startswith(f"{hub_id} (hub) is loaded"), status
    assert {name: path.stat().st_mtime_ns for name, path in snapshot_files(online_home, hub_id).items()} == before


def test_a_first_download_shows_its_progress(online_client, hub):
    """The Load button's progress shows huggingface_hub's download bars (track_tqdm): while the weights of a
    repository served at 2 MiB/s download, the page shows a unit in bytes named after the file, of its size."""
    import time

    job = online_client.submit("classifier", repos.PROGRESS, api_name="/home_load")
    units = []
    while not job.done():
        status = job.status()
        units += [unit for unit in status.progress_data or [] if unit is not None]
        time.sleep(0.1)
    status, *_ = job.result()
    assert status.startswith(f"{repos.PROGRESS} (hub) is loaded"), status
    weights = next(Path(hub.mirrors).glob(f"models/{repos.PROGRESS}/.git/lfs/objects/*/*/*"))
    downloads = {(unit.desc, unit.length) for unit in units if unit.unit == "B"}
    assert any(desc.endswith("model.safetensors") and length == weights.stat().st_size for desc, length in downloads), (
        downloads)
