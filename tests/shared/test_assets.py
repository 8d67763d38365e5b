"""Offline assets: built once, atomically, under a lock; and the real ones hold what they promise."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shared import assets
from shared.assets import Asset, AssetUnavailable


@pytest.fixture
def scratch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PLAYGROUND_HOME", str(tmp_path))
    return tmp_path


def add_asset(monkeypatch, build, source: Path | None) -> str:
    asset = Asset("toy", "a toy asset", "pip install toy", lambda: source, build)
    monkeypatch.setitem(assets.ASSETS, "toy", asset)
    return "toy"


def test_a_build_that_fails_halfway_leaves_nothing_built(scratch_home, monkeypatch):
    def half_build(source: Path, into: Path) -> None:
        (into / "part-1").write_text("written")
        raise RuntimeError("crashed halfway")

    name = add_asset(monkeypatch, half_build, scratch_home)
    with pytest.raises(RuntimeError, match="crashed halfway"):
        assets.ensure(name)
    assert not assets.is_built(name)
    leftovers = [p.name for p in (scratch_home / "assets").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_built_once_and_reused_even_when_asked_at_once(scratch_home, monkeypatch):
    builds = []

    def slow_build(source: Path, into: Path) -> None:
        builds.append(1)
        threading.Event().wait(0.3)
        (into / "data.txt").write_text("complete")

    name = add_asset(monkeypatch, slow_build, scratch_home)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(assets.ensure(name))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert len(set(paths)) == 1 and (paths[0] / "data.txt").read_text() == "complete"
    assets.ensure(name)
    assert len(builds) == 1


def test_missing_source_package_says_how_to_install_it(scratch_home, monkeypatch):
    name = add_asset(monkeypatch, lambda s, i: None, None)
    with pytest.raises(AssetUnavailable, match="pip install toy"):
        assets.ensure(name)


def test_unknown_asset():
    with pytest.raises(ValueError, match="unknown asset"):
        assets.ensure("nope")


def test_movie_sentences_are_labeled_by_valence():
    movies = assets.read_sentiment("movies")
    assert len(movies) == 10605
    assert all(row["label"] == int(row["valence"] > 0) for row in movies)
    assert sum(row["label"] for row in movies) == 5242
    assert movies[2]["text"] == "Effective but too tepid biopic"
    for domain in ("tweets", "amazon", "nyt"):
        assert len(assets.read_sentiment(domain)) > 3000
    assert "Hutto" in (assets.ensure("sentiment") / "CITATION.txt").read_text()
    with pytest.raises(ValueError, match="domain must be one of"):
        assets.read_sentiment("poems")


def test_photos_have_captions_and_files():
    photos = assets.read_photos()
    names = {Path(p["path"]).name for p in photos}
    assert {"astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png"} <= names
    assert all(Path(p["path"]).stat().st_size > 1000 and p["caption"] for p in photos)


def test_fashion_mnist():
    if assets.locate_fashion_mnist() is None:
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    import numpy as np

    data = np.load(assets.ensure("fashion-mnist") / "fashion-mnist.npz")
    assert data["train_images"].shape == (60000, 28, 28) and data["test_images"].shape == (10000, 28, 28)
    assert set(np.unique(data["test_labels"])) == set(range(10))
    assert list(data["label_names"])[9] == "Ankle boot"


def test_smollm2_is_an_ordinary_hf_folder_that_answers():
    """The GGUF file became safetensors + config + tokenizer with its chat template, and the model works."""
    import shared.loaders  # noqa: F401  (registers the causal-lm and tokenizer kinds)
    from shared.cache import LoadSpec, get_cache

    folder = assets.ensure("smollm2-135m-instruct")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    cache = get_cache()
    tokenizer = cache.get(LoadSpec("tokenizer", str(folder)))
    model = cache.get(LoadSpec("causal-lm", str(folder)))
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
    cache.evict(str(folder))
