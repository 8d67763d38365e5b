"""The retrieval page in the running app, through gradio_client: a tiny CLIPModel of the real classes (random
weights, registered as a local model, as a hub CLIP would load) embeds the sample photos, searches them by
text and by image, compares texts with images and labels an image zero-shot; a short small-CLIP training
lowers its loss, saves into the model cache, and the saved model searches."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from shared import registry
from tests.retrieval.tiny import make_tiny_clip

TINY = "tiny-clip-for-app"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    folder = make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
    saved = dict(registry._local_models)
    label = registry.register_local(TINY, folder, "clip")
    yield label
    registry._local_models.clear()
    registry._local_models.update(saved)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "query.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def embed(client, model: str, gallery: str = "sample photos", index_kind: str = "exact (flat inner product)"):
    return client.predict(model=model, gallery=gallery, uploads=None, fashion_size=100, index_kind=index_kind,
                          api_name="/retrieval_embed")


def test_embed_search_compare_and_label_with_a_tiny_clip(client, tiny_clip, photo):
    status, preview = embed(client, tiny_clip)
    assert "images** of sample photos with local:tiny-clip-for-app" in status and len(preview) == 10
    results = client.predict(query="an astronaut", k=4, api_name="/retrieval_search_text")
    scores = [float(item["caption"].split(" · ")[0]) for item in results]
    assert len(results) == 4 and scores == sorted(scores, reverse=True)
    similar = client.predict(image=handle_file(photo), k=3, api_name="/retrieval_search_image")
    assert len(similar) == 3
    heatmap, compared = client.predict(texts="a cat\na rocket", image_count=3, api_name="/retrieval_compare")
    assert heatmap["type"] == "altair" and len(compared) == 3
    best, rows = client.predict(model=tiny_clip, image=handle_file(photo), labels="cat, dog, rocket",
                                template="a photo of a {}", api_name="/retrieval_zero_shot")
    assert {c["label"] for c in best["confidences"]} == {"cat", "dog", "rocket"}
    assert sum(row[2] for row in rows["data"]) == pytest.approx(1, abs=0.01)
    # A second embedding of the same gallery reuses every stored vector.
    status, _ = embed(client, tiny_clip, index_kind="approximate (HNSW graph)")
    assert " 0 embedded now" in status and "recall@10 against exact search" in status


@pytest.mark.parametrize("call, message", [
    (dict(query="   ", k=3, api_name="/retrieval_search_text"), "query is empty"),
    (dict(texts="", image_count=3, api_name="/retrieval_compare"), "at least one"),
])
def test_bad_input_gets_a_clear_message(client, tiny_clip, call, message):
    embed(client, tiny_clip)
    with pytest.raises(AppError, match=message):
        client.predict(**call)


def test_zero_shot_needs_two_labels_and_a_template_with_braces(client, tiny_clip, photo):
    with pytest.raises(AppError, match="at least 2"):
        client.predict(model=tiny_clip, image=handle_file(photo), labels="cat", template="a photo of a {}",
                       api_name="/retrieval_zero_shot")
    with pytest.raises(AppError, match=r"\{\}"):
        client.predict(model=tiny_clip, image=handle_file(photo), labels="cat, dog", template="a photo",
                       api_name="/retrieval_zero_shot")


def test_uploads_that_are_not_images_are_refused(client, tiny_clip, tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_bytes(b"this is not a picture")
    with pytest.raises(AppError, match="notes.png"):
        client.predict(model=tiny_clip, gallery="my uploads", uploads=[handle_file(str(bogus))], fashion_size=100,
                       index_kind="exact (flat inner product)", api_name="/retrieval_embed")


def test_a_short_training_saves_a_clip_that_searches_here_and_after_a_restart(client):
    """Train a few steps on the page; the saved model searches in this app, and a freshly started app process
    (nothing in memory) offers it as the CLIP role's offline default and searches with it."""
    from gradio_client import Client

    from shared.launch import app_process
    from shared.registry import models_dir

    name = "small-clip-test"
    try:
        status, loss, scale, similarity, evaluations, model = client.predict(
            name=name, max_seconds=0, max_steps=12, api_name="/retrieval_train")
        assert "done" in status and f"local:{name}" in status
        assert loss["type"] == "altair" and similarity["type"] == "altair" and evaluations["data"]
        assert model["value"] == f"local:{name}" if isinstance(model, dict) else model == f"local:{name}"
        status, _ = embed(client, f"local:{name}", gallery="Fashion-MNIST test images")
        assert "images** of Fashion-MNIST test images" in status
        results = client.predict(query="a sneaker", k=5, api_name="/retrieval_search_text")
        assert len(results) == 5
        with app_process(["app.py"]) as (_, url, _):
            restarted = Client(url, verbose=False)
            environment, roles, *_ = restarted.predict(api_name="/home_environment")
            assert {row[0]: row[2] for row in roles["data"]}["clip"] == f"local:{name}"
            status, _ = restarted.predict(model=f"local:{name}", gallery="sample photos", uploads=None,
                                          fashion_size=100, index_kind="exact (flat inner product)",
                                          api_name="/retrieval_embed")
            assert "reused from disk" in status
            assert len(restarted.predict(query="a cat", k=3, api_name="/retrieval_search_text")) == 3
    finally:
        shutil.rmtree(models_dir() / name, ignore_errors=True)


def test_evaluation_reports_templates_paraphrases_and_unseen_wordings_side_by_side(client, tiny_clip):
    rows, note = client.predict(model=tiny_clip, test_images=50, api_name="/retrieval_evaluate")
    assert rows["headers"][1:] == ["training captions", "paraphrases (development)", "unseen wordings (frozen test)"]
    table = {row[0]: row[1:] for row in rows["data"]}
    templates, paraphrases, unseen = table["zero-shot accuracy, ensembled wordings"]
    assert all(0 <= figure <= 1 for figure in (templates, paraphrases, unseen))
    recall_1 = table["text → image recall@1 (precision of the first image)"]
    assert all(a >= b for a, b in zip(table["text → image recall@10"], recall_1))
    assert table["zero-shot accuracy, one wording at a time"][0] is None
    assert "50 Fashion-MNIST test images" in note


def test_the_image_tower_on_onnx_runtime_gives_the_same_search(client, tiny_clip, photo):
    """The ONNX export of the image tower (checked against PyTorch when built) ranks images as PyTorch does."""
    embed(client, tiny_clip)
    expected = client.predict(image=handle_file(photo), k=5, api_name="/retrieval_search_image")
    status, _ = client.predict(model=tiny_clip, gallery="sample photos", uploads=None, fashion_size=100,
                               index_kind="exact (flat inner product)", image_tower="ONNX Runtime",
                               api_name="/retrieval_embed")
    assert "reused from disk" in status
    got = client.predict(image=handle_file(photo), k=5, api_name="/retrieval_search_image")
    assert [item["caption"].split(" · ")[1] for item in got] == [item["caption"].split(" · ")[1] for item in expected]
    from shared.cache import get_cache

    assert any(e["model"] == f"{tiny_clip} (ONNX image tower)" for e in get_cache().entries())
