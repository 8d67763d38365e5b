"""Fast tests of the retrieval page's logic: galleries and their stored embeddings (spaces/retrieval/gallery.py),
faiss search and zero-shot classification (spaces/retrieval/search.py), on a tiny seeded CLIP of the real
classes (tests/retrieval/tiny.py) and on random unit vectors.

Each test was seen to fail with the code it guards broken on purpose (the breakage is named in its docstring:
"Broken: ...").
"""

from __future__ import annotations

import io
import shutil
import struct
import threading
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from spaces.retrieval import gallery as gallery_module
from spaces.retrieval import search
from spaces.retrieval.gallery import (Gallery, decode_image, embed_gallery, item_from_image, make_gallery,
                                      model_key, read_uploads)
from tests.retrieval.tiny import make_tiny_clip


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def tiny_clip(tiny_folder):
    import torch

    from shared.clip import load_dual_encoder

    return load_dual_encoder(str(tiny_folder), "cpu", torch.float32)


@pytest.fixture(autouse=True)
def embeddings_home(tmp_path, monkeypatch):
    """Embeddings and indexes go to a temporary folder; the offline assets stay where they are built."""
    folder = tmp_path / "embeddings"
    monkeypatch.setattr(gallery_module, "embeddings_dir", lambda: folder)
    return folder


class CountingEncoder:
    """The tiny CLIP, counting how often it is loaded and how many images it embeds."""

    def __init__(self, clip):
        self.clip, self.loads, self.images = clip, 0, 0

    def load(self):
        self.loads += 1
        return self

    def embed_images(self, images):
        self.images += len(images)
        return self.clip.embed_images(images)


def coloured_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(count)]


def gallery_of(images, name: str = "test") -> Gallery:
    return make_gallery(name, [item_from_image(image, f"image {i}") for i, image in enumerate(images)])


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size its (empty) data does not have: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Stored embeddings.


def test_second_open_makes_no_model_call(tiny_clip, tiny_folder):
    """Broken: the store lookup skipped (`missing = list(gallery.items)`) -> the model is loaded again."""
    counting = CountingEncoder(tiny_clip)
    photos = gallery_of(coloured_images(5))
    first = embed_gallery(photos, str(tiny_folder), counting.load, batch_size=2)
    assert (counting.loads, counting.images, first.embedded_now) == (1, 5, 5)
    again = embed_gallery(photos, str(tiny_folder), counting.load)
    assert (counting.loads, counting.images, again.embedded_now) == (1, 5, 0)
    np.testing.assert_array_equal(again.vectors, first.vectors)
    np.testing.assert_allclose(np.linalg.norm(again.vectors, axis=1), 1.0, rtol=1e-5)
    assert list((first.folder).glob("shard-*.npz")), "the vectors are stored on disk"


def test_adding_images_embeds_only_the_new_ones(tiny_clip, tiny_folder):
    """Broken: `EmbeddingStore.save` not updating the shard files (vectors kept in memory only) -> all re-embedded;
    `Gallery.add` not dropping repeats -> the repeated image is listed twice."""
    images = coloured_images(6)
    counting = CountingEncoder(tiny_clip)
    embed_gallery(gallery_of(images[:4]), str(tiny_folder), counting.load)
    bigger = gallery_of(images[:4]).add(gallery_of([images[3], *images[4:]], "uploads"))
    embedded = embed_gallery(bigger, str(tiny_folder), counting.load)
    assert len(bigger) == 6
    assert (counting.images, embedded.embedded_now) == (6, 2)
    np.testing.assert_allclose(embedded.vectors, tiny_clip.embed_images([item.image for item in bigger.items]),
                               atol=1e-5)


def test_a_different_model_has_a_different_key(tiny_clip, tiny_folder, tmp_path):
    """Broken: `model_key` ignoring the weights files -> a model retrained in place keeps its old key; ignoring
    the location (hashing the folder's name) -> a copy elsewhere shares the key."""
    other = make_tiny_clip(tmp_path / "elsewhere" / tiny_folder.name, seed=1)
    assert model_key(str(tiny_folder)) == model_key(str(tiny_folder))
    assert model_key(str(other)) != model_key(str(tiny_folder))
    copy = shutil.copytree(tiny_folder, tmp_path / "copy" / tiny_folder.name)  # same files, same times
    assert model_key(str(copy)) != model_key(str(tiny_folder))
    retrained = make_tiny_clip(tiny_folder.parent / "retrained", seed=0)
    before = model_key(str(retrained))
    make_tiny_clip(retrained, seed=2)  # same folder, same config, new weights
    assert model_key(str(retrained)) != before


def test_stop_keeps_the_batches_done(tiny_clip, tiny_folder):
    """Broken: the stop check removed -> all 6 embedded; the final save removed -> the 2 done are lost."""
    counting = CountingEncoder(tiny_clip)
    photos = gallery_of(coloured_images(6, seed=3))
    stop = threading.Event()

    def stop_after_first_batch(fraction, text):
        if fraction > 0:
            stop.set()

    partial = embed_gallery(photos, str(tiny_folder), counting.load, stop_after_first_batch, stop, batch_size=2)
    assert partial.stopped and len(partial.gallery) == 2 and counting.images == 2
    rest = embed_gallery(photos, str(tiny_folder), counting.load)
    assert (rest.stopped, len(rest.gallery), rest.embedded_now, counting.images) == (False, 6, 4, 6)


def test_bundled_galleries():
    """Broken: Fashion-MNIST labels read from the wrong array -> captions and labels disagree with the data."""
    fashion = gallery_module.fashion_mnist_gallery(limit=20)
    with np.load(gallery_module.read_settings().home / "assets" / "fashion-mnist" / "fashion-mnist.npz") as data:
        names = [str(data["label_names"][label]) for label in data["test_labels"][:20]]
    assert len(fashion) <= 20 and fashion.items[0].image.size == (28, 28) and fashion.items[0].image.mode == "L"
    assert [item.label for item in fashion.items] == [n for n in names][:len(fashion)]
    photos = gallery_module.photos_gallery()
    assert len(photos) >= 10 and "cat" in " ".join(item.caption for item in photos.items)


# ----------------------------------------------------------------------------------------------------------
# faiss.


def random_unit_vectors(count: int, dimension: int = 32, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force_top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


@pytest.mark.parametrize("kind", search.INDEX_KINDS)
def test_faiss_top_k_equals_brute_force(kind):
    """Broken: IndexFlatL2 in place of IndexFlatIP, or HNSW without METRIC_INNER_PRODUCT -> other neighbours."""
    vectors, queries = random_unit_vectors(300), random_unit_vectors(10, seed=1)
    index = search.build_index(vectors, kind)
    scores, positions = index.search(queries, 5)
    for query, found, found_scores in zip(queries, positions, scores):
        expected, expected_scores = brute_force_top_k(vectors, query, 5)
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_allclose(found_scores, expected_scores, atol=1e-5)


def test_hnsw_recall_is_reported_and_high_on_easy_data():
    """Broken: `approximate_recall` comparing the exact index with itself -> the starved index scores 1.0."""
    centres = random_unit_vectors(20, seed=2)
    noise = np.random.default_rng(3).standard_normal((1000, 32)).astype(np.float32) * 0.05
    vectors = centres[np.arange(1000) % 20] + noise  # clusters, as real embeddings form
    recall = search.approximate_recall(search.build_index(vectors, "hnsw"), vectors, k=10)
    assert 0.95 <= recall <= 1.0
    starved = search.build_index(vectors, "hnsw")
    starved.hnsw.efSearch = 1
    assert search.approximate_recall(starved, vectors, k=10) < recall


@pytest.mark.parametrize("kind", search.INDEX_KINDS)
def test_saved_index_reloads(kind, monkeypatch):
    """Broken: `open_index` not saving (or not reading) the file -> the second open builds again."""
    vectors = random_unit_vectors(50)
    embedded = gallery_module.EmbeddedGallery(gallery_of(coloured_images(50)), vectors, "some-model", 50)
    built = search.open_index(embedded, kind)
    assert search.index_path(embedded, kind).exists()

    def refuse_to_build(vectors, kind):
        raise AssertionError("the saved index should have been read, not built again")

    monkeypatch.setattr(search, "build_index", refuse_to_build)
    reloaded = search.open_index(embedded, kind)
    assert reloaded.ntotal == 50
    np.testing.assert_array_equal(reloaded.search(vectors[:3], 4)[1], built.search(vectors[:3], 4)[1])


# ----------------------------------------------------------------------------------------------------------
# Queries on the tiny CLIP.


@pytest.fixture
def embedded_tiny(tiny_clip, tiny_folder):
    return embed_gallery(gallery_of(coloured_images(8, seed=5)), str(tiny_folder), lambda: tiny_clip)


def test_text_search_returns_k_hits_best_first(tiny_clip, embedded_tiny):
    """Broken: hits in faiss's reverse order, or scores taken from another row -> order / values differ."""
    hits = search.search_by_text(tiny_clip, search.open_index(embedded_tiny), embedded_tiny, "a cat", k=3)
    assert len(hits) == 3
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    expected, expected_scores = brute_force_top_k(embedded_tiny.vectors, tiny_clip.embed_texts(["a cat"])[0], 3)
    assert [hit.position for hit in hits] == expected.tolist()
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert hits[0].item is embedded_tiny.gallery.items[hits[0].position]


def test_image_searches(tiny_clip, embedded_tiny):
    """Broken: `search_similar` not leaving out the query's own position -> it finds itself first."""
    index = search.open_index(embedded_tiny)
    same = search.search_by_image(tiny_clip, index, embedded_tiny, embedded_tiny.gallery.items[2].image, k=2)
    assert same[0].position == 2 and same[0].score == pytest.approx(1.0, abs=1e-4)
    similar = search.search_similar(index, embedded_tiny, position=2, k=3)
    assert len(similar) == 3 and 2 not in [hit.position for hit in similar]


def test_similarity_matrix(tiny_clip):
    """Broken: images and texts swapped (`images @ texts.T`) -> the shape is (images, texts)."""
    images = coloured_images(3)
    matrix = search.similarity_matrix(tiny_clip, ["a cat", "the dog"], images)
    assert matrix.shape == (2, 3)
    np.testing.assert_allclose(matrix, tiny_clip.embed_texts(["a cat", "the dog"]) @ tiny_clip.embed_images(images).T,
                               atol=1e-5)


def test_zero_shot_single_and_ensembled(tiny_clip):
    """Broken: the ensemble averaging over labels instead of templates (axis=0), or no softmax -> the sums or
    the shapes fail; the ensemble using only the single template -> both results equal."""
    result = search.zero_shot(tiny_clip, coloured_images(1)[0], ["cat", "dog", "rocket"], "a {} in {braces}")
    for probabilities in (result.single, result.ensembled):
        assert probabilities.shape == (3,) and probabilities.min() >= 0
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(result.single, result.ensembled)
    assert result.templates[0] == "a {} in {braces}" and len(result.templates) == len(search.ENSEMBLE_TEMPLATES) + 1
    assert search.parse_labels("cat, dog\nrocket,") == ["cat", "dog", "rocket"]


# ----------------------------------------------------------------------------------------------------------
# Bad input: every message names the value and the rule.


@pytest.mark.parametrize("call, match", [
    (lambda clip, embedded: search.search_by_text(clip, None, embedded, "  ", 3), "query is empty"),
    (lambda clip, embedded: search.search_by_text(clip, None, embedded, "a cat", 0), "k must be .* 1 to 8.* got 0"),
    (lambda clip, embedded: search.search_by_text(clip, None, embedded, "a cat", 9), "k must be .* 1 to 8.* got 9"),
    (lambda clip, embedded: search.zero_shot(clip, coloured_images(1)[0], ["cat"]), "at least 2 labels"),
    (lambda clip, embedded: search.zero_shot(clip, coloured_images(1)[0], ["cat", "cat"]), "must differ.*cat"),
    (lambda clip, embedded: search.zero_shot(clip, coloured_images(1)[0], ["cat", "dog"], "a photo"),
     "template needs \\{\\}.*'a photo'"),
    (lambda clip, embedded: search.similarity_matrix(clip, ["a cat", ""], coloured_images(1)), "non-empty texts"),
    (lambda clip, embedded: search.build_index(np.zeros((2, 4)), "ivf"), "one of \\('flat', 'hnsw'\\).*'ivf'"),
    (lambda clip, embedded: embed_gallery(Gallery("uploads", ()), "x", clip), "gallery is empty"),
    (lambda clip, embedded: search.check_k(1, 0), "gallery is empty"),
], ids=["empty-query", "k-zero", "k-too-big", "one-label", "repeated-label", "template-without-braces",
        "empty-text", "unknown-index", "empty-gallery-embed", "empty-gallery-search"])
def test_bad_input_is_refused(call, match, tiny_clip, embedded_tiny):
    """Broken: each check removed in turn -> no ValueError, or another message."""
    with pytest.raises(ValueError, match=match):
        call(tiny_clip, embedded_tiny)


# ----------------------------------------------------------------------------------------------------------
# Uploads.


def test_uploads_of_files_and_zips(tmp_path):
    """Broken: zip members not unpacked, or repeats kept -> other counts; names not sanitised -> a path caption."""
    images = coloured_images(3)
    on_disk = tmp_path / "first.png"
    on_disk.write_bytes(png_bytes(images[0]))
    archive = zip_bytes({"folder/second.png": png_bytes(images[1]), "__MACOSX/._second.png": b"junk",
                         "third.png": png_bytes(images[2]), "again.png": png_bytes(images[0])})
    uploaded = read_uploads([on_disk, ("photos.zip", archive)])
    assert [item.caption for item in uploaded.items] == ["first.png", "second.png", "third.png"]
    assert uploaded.items[1].key == item_from_image(images[1], "").key


def test_zip_member_names_are_never_paths(tmp_path, monkeypatch):
    """Broken: members written out under their own names (`open(name, "wb")`) -> x.png lands outside the folder."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    uploaded = read_uploads([("evil.zip", zip_bytes({"../../x.png": png_bytes(coloured_images(1)[0]),
                                                     "..\\..\\y\x07.png": png_bytes(coloured_images(1, 9)[0])}))])
    assert [item.caption for item in uploaded.items] == ["x.png", "y.png"]
    assert not (tmp_path / "x.png").exists() and list(tmp_path.rglob("*.png")) == []


def truncated_png() -> bytes:
    data = png_bytes(coloured_images(1)[0])
    return data[: len(data) // 2]


@pytest.mark.parametrize("data, match", [
    (b"just some text, not a picture", "not an image"),
    (b"", "empty \\(0 bytes\\)"),
    (truncated_png(), "truncated or corrupt"),
    (png_claiming(100_000, 100_000), "decompression bomb"),
    (png_claiming(8_000, 6_000), "8000x6000 = 48,000,000 pixels; images up to 40,000,000"),
    (png_claiming(0, 5), "zero-size image \\(0x5"),
], ids=["text", "empty", "truncated", "bomb-header", "over-pixel-limit", "zero-size"])
def test_bad_images_are_refused(data, match):
    """Broken: each guard removed in turn (the size checks, `verify`/`load`, the error translation) -> the file
    is accepted, or Pillow's own exception escapes instead of a ValueError."""
    with pytest.raises(ValueError, match=match):
        read_uploads([("upload.png", data)])


def test_pixel_limit_applies_to_real_images(monkeypatch):
    """Broken: the limit read from PIL's default instead of MAX_IMAGE_PIXELS -> a 40x30 image passes a 1000 limit."""
    monkeypatch.setattr(gallery_module, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="40x30 = 1,200 pixels; images up to 1,000"):
        decode_image(png_bytes(Image.new("RGB", (40, 30))), "big.png")


def test_zip_limits(monkeypatch):
    """Broken: each zip check removed in turn -> the zip is unpacked."""
    bomb = zip_bytes({"zeros.png": bytes(20 * 2**20)})  # 20 MiB of zeros pack to ~20 KiB
    with pytest.raises(ValueError, match="'zeros.png' in 'bomb.zip' unpacks 1\\d{3} times .* at most 200"):
        read_uploads([("bomb.zip", bomb)])
    images = {f"{i}.png": png_bytes(image) for i, image in enumerate(coloured_images(4))}
    monkeypatch.setattr(gallery_module, "MAX_UPLOAD_FILES", 3)
    with pytest.raises(ValueError, match="holds 4 files; a zip may hold up to 3"):
        read_uploads([("many.zip", zip_bytes(images))])
    monkeypatch.setattr(gallery_module, "MAX_UPLOAD_FILES", 100)
    monkeypatch.setattr(gallery_module, "MAX_UNPACKED_BYTES", 2**20)
    with pytest.raises(ValueError, match="unpacks to 2 MiB; zips may unpack to at most 1 MiB"):
        read_uploads([("big.zip", zip_bytes({"a.bin": bytes(2 * 2**20)}, zipfile.ZIP_STORED))])
