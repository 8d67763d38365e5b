"""Search over an embedded gallery with faiss, and the other questions a CLIP answers: which images match a
text, which images look like an image, how several texts score against several images, and which of the
visitor's labels fits an image (zero-shot classification).

    index = open_index(embedded)                                  # built once, saved beside the embeddings
    hits = search_by_text(clip, index, embedded, "a cat", k=5)    # [Hit(position, score, item), ...] best first
    hits = search_by_image(clip, index, embedded, image, k=5)
    hits = search_similar(index, embedded, position=3, k=5)       # no model call: the stored vector
    scores = similarity_matrix(clip, ["a cat", "a rocket"], images)   # (texts, images) cosine similarities
    result = zero_shot(clip, image, ["cat", "dog"], template="a photo of a {}")   # single and ensembled

Vectors are unit length, so inner product = cosine similarity. The exact index is faiss's IndexFlatIP (the
default, and the reference); past APPROXIMATE_FROM vectors an HNSW graph (IndexHNSWFlat, inner-product
metric) is offered, and `approximate_recall` says how many of the exact top-k it finds. Indexes are written
with faiss.write_index into embeddings/<model key>/indexes/<gallery fingerprint>-<kind>.faiss and read back
on the next start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.clip import normalise
from spaces.retrieval.gallery import EmbeddedGallery, GalleryItem

INDEX_KINDS = ("flat", "hnsw")  # flat: exact; hnsw: approximate, for large galleries
# Measured on 2 CPU cores, 512-d unit vectors, one query at a time, top-10: flat costs ~0.07-0.15 ms per 1,000
# vectors (0.07 ms at 1k, 0.33 ms at 5k, 1.6 ms at 10k, 15 ms at 100k) and HNSW 0.15-0.9 ms whatever the size,
# with recall@10 >= 0.999 on clustered data; they break even near 5,000 vectors. HNSW costs a build (2 s at
# 5k, 5 s at 10k, ~110 s at 100k), paid once: the index is saved.
APPROXIMATE_FROM = int(os.environ.get("PLAYGROUND_APPROXIMATE_FROM", 5_000))
HNSW_NEIGHBOURS = 32  # M: links per node; more = better recall, more memory
HNSW_BUILD_DEPTH = 80  # efConstruction
HNSW_SEARCH_DEPTH = 128  # efSearch: candidates examined per query; recall against speed
MAX_K = 100
MAX_MATRIX_SIDE = 32  # texts or images in one similarity matrix: a heatmap, not a bulk job
MAX_LABELS = 50
DEFAULT_TEMPLATE = "a photo of a {}"
# Prompt ensembling (Radford et al. 2021, section 3.1.4): a label's text vector is the mean of its vectors
# under several templates, which smooths out any one phrasing. A few of CLIP's ImageNet templates.
ENSEMBLE_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a black and white photo of a {}.",
    "a drawing of a {}.",
    "itap of a {}.",
)


@dataclass(frozen=True)
class Hit:
    position: int  # the item's place in the embedded gallery
    score: float  # cosine similarity, in [-1, 1]
    item: GalleryItem


@dataclass(frozen=True)
class ZeroShotResult:
    labels: list[str]
    single: np.ndarray  # probabilities over the labels with the one template
    ensembled: np.ndarray  # probabilities with the templates averaged
    template: str
    templates: tuple[str, ...]  # those averaged


# ----------------------------------------------------------------------------------------------------------
# Building, saving and opening indexes.


def build_index(vectors: np.ndarray, kind: str = "flat") -> Any:
    """A faiss index over unit-length rows: "flat" (IndexFlatIP, exact) or "hnsw" (IndexHNSWFlat with the
    inner-product metric, approximate)."""
    import faiss

    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    vectors = normalise(vectors)
    if vectors.ndim != 2 or not len(vectors):
        raise ValueError(f"an index needs a non-empty (n, d) array of vectors, got shape {vectors.shape}")
    dimension = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dimension)
    else:
        index = faiss.IndexHNSWFlat(dimension, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_BUILD_DEPTH
        index.hnsw.efSearch = HNSW_SEARCH_DEPTH
    index.add(vectors)
    return index


def index_kinds_for(count: int) -> tuple[str, ...]:
    """The index kinds worth offering for a gallery of `count` images: HNSW only where it is faster."""
    return INDEX_KINDS if count >= APPROXIMATE_FROM else ("flat",)


def index_path(embedded: EmbeddedGallery, kind: str) -> Path:
    return embedded.folder / "indexes" / f"{embedded.gallery.fingerprint[:32]}-{kind}.faiss"


def save_index(index: Any, path: Path) -> None:
    """faiss.write_index to a temporary name, then renamed: a reader never opens half an index."""
    import faiss

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    faiss.write_index(index, str(temporary))
    os.replace(temporary, path)


def load_index(path: Path) -> Any:
    import faiss

    index = faiss.read_index(str(path))
    if hasattr(index, "hnsw"):  # efSearch is not part of the saved file
        index.hnsw.efSearch = HNSW_SEARCH_DEPTH
    return index


def open_index(embedded: EmbeddedGallery, kind: str = "flat") -> Any:
    """The gallery's index of that kind: read from disk when saved before, else built and saved."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
    path = index_path(embedded, kind)
    if path.exists():
        try:
            index = load_index(path)
            if index.ntotal == len(embedded.vectors) and index.d == embedded.vectors.shape[1]:
                return index
        except RuntimeError:  # a damaged file: built again below
            pass
    index = build_index(embedded.vectors, kind)
    save_index(index, path)
    return index


def approximate_recall(index: Any, vectors: np.ndarray, k: int = 10, queries: np.ndarray | None = None,
                       sample: int = 200, seed: int = 0) -> float:
    """recall@k of `index` against exact search on the same vectors: the share of the exact top-k that the
    index returns, averaged over queries (default: a seeded sample of `sample` of the vectors themselves)."""
    vectors = normalise(vectors)
    check_k(k, len(vectors))
    if queries is None:
        chosen = np.random.default_rng(seed).choice(len(vectors), size=min(sample, len(vectors)), replace=False)
        queries = vectors[chosen]
    queries = normalise(queries)
    _, exact = build_index(vectors, "flat").search(queries, k)
    _, found = index.search(queries, k)
    return float(np.mean([len(set(e) & set(f)) / k for e, f in zip(exact.tolist(), found.tolist())]))


# ----------------------------------------------------------------------------------------------------------
# Queries.


def check_k(k: int, count: int) -> int:
    if count < 1:
        raise ValueError("The gallery is empty: choose a gallery or upload images first.")
    limit = min(MAX_K, count)
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= limit:
        raise ValueError(f"k must be a whole number from 1 to {limit} (the gallery has {count} images), got {k!r}")
    return int(k)


def check_query(query: str) -> str:
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"The query is empty: type what to look for, got {query!r}")
    return query.strip()


def search_vectors(index: Any, embedded: EmbeddedGallery, queries: np.ndarray, k: int,
                   skip: int | None = None) -> list[Hit]:
    """The k best items for one query vector, best first; `skip` leaves out one position (the query itself)."""
    count = len(embedded.gallery)
    check_k(k, count)
    if index.ntotal != count:
        raise ValueError(f"the index holds {index.ntotal} vectors but the gallery {count} images: open its index again")
    wanted = min(k + (skip is not None), count)
    scores, positions = index.search(normalise(queries.reshape(1, -1)), wanted)
    hits = [Hit(int(p), float(s), embedded.gallery.items[int(p)])
            for s, p in zip(scores[0], positions[0]) if p >= 0 and p != skip]  # -1: HNSW found too few
    return hits[:k]


def search_by_text(clip: Any, index: Any, embedded: EmbeddedGallery, query: str, k: int = 5) -> list[Hit]:
    """The k gallery images closest to a text, best first."""
    query = check_query(query)
    check_k(k, len(embedded.gallery))
    return search_vectors(index, embedded, clip.embed_texts([query])[0], k)


def search_by_image(clip: Any, index: Any, embedded: EmbeddedGallery, image: Any, k: int = 5) -> list[Hit]:
    """The k gallery images closest to an image (a PIL image the visitor gave), best first."""
    if image is None:
        raise ValueError("No query image: upload or choose one.")
    check_k(k, len(embedded.gallery))
    return search_vectors(index, embedded, clip.embed_images([image])[0], k)


def search_similar(index: Any, embedded: EmbeddedGallery, position: int, k: int = 5) -> list[Hit]:
    """The k images most like the gallery's own image at `position`, itself left out; no model call."""
    count = len(embedded.gallery)
    if not isinstance(position, (int, np.integer)) or not 0 <= position < count:
        raise ValueError(f"position must be from 0 to {count - 1}, got {position!r}")
    check_k(k, max(count - 1, 0))
    return search_vectors(index, embedded, embedded.vectors[position], k, skip=int(position))


def check_texts(texts: list[str], what: str, limit: int) -> list[str]:
    cleaned = [text.strip() for text in texts if isinstance(text, str)]
    if not cleaned:
        raise ValueError(f"Give at least one of the {what}.")
    if len(cleaned) != len(texts) or not all(cleaned):
        raise ValueError(f"{what} must be non-empty texts, got {texts!r}")
    if len(cleaned) > limit:
        raise ValueError(f"at most {limit} {what}, got {len(cleaned)}")
    duplicates = sorted({text for text in cleaned if cleaned.count(text) > 1})
    if duplicates:
        raise ValueError(f"{what} must differ; repeated: {duplicates}")
    return cleaned


def similarity_matrix(clip: Any, texts: list[str], images: list[Any]) -> np.ndarray:
    """Cosine similarities of each text (rows) with each image (columns): a (texts, images) float32 array."""
    texts = check_texts(list(texts), "texts", MAX_MATRIX_SIDE)
    if not images:
        raise ValueError("No images to compare with: choose at least one.")
    if len(images) > MAX_MATRIX_SIDE:
        raise ValueError(f"at most {MAX_MATRIX_SIDE} images, got {len(images)}")
    return clip.embed_texts(texts) @ clip.embed_images(list(images)).T


def parse_labels(text: str) -> list[str]:
    """Labels as a visitor types them: separated by commas or new lines."""
    return [label.strip() for label in text.replace("\n", ",").split(",") if label.strip()]


def check_template(template: str) -> str:
    if not isinstance(template, str) or "{}" not in template:
        raise ValueError(f"a template needs {{}} where the label goes (e.g. {DEFAULT_TEMPLATE!r}), got {template!r}")
    return template


def fill(template: str, label: str) -> str:
    """The template with the label in place of {}: plain replacement, so other braces in visitor text are text."""
    return template.replace("{}", label)


def label_probabilities(clip: Any, image_vector: np.ndarray, label_vectors: np.ndarray) -> np.ndarray:
    """softmax over labels of the model's scaled cosine similarities, as CLIP's zero-shot classifier does."""
    logits = clip.logit_scale * (normalise(label_vectors) @ image_vector)
    logits = logits - logits.max()
    return (np.exp(logits) / np.exp(logits).sum()).astype(np.float32)


def zero_shot(clip: Any, image: Any, labels: list[str], template: str = DEFAULT_TEMPLATE,
              templates: tuple[str, ...] = ENSEMBLE_TEMPLATES) -> ZeroShotResult:
    """Probabilities of each label for one image, two ways: with the one `template`, and with the label's text
    vectors averaged over `templates` and `template` (prompt ensembling), so the page can show the difference.

    1. Check the inputs. 2. Embed the image once. 3. One template: one text per label. 4. Ensemble: every
    template per label, averaged and renormalised. 5. softmax of the scaled similarities, each way.
    """
    # 1. Check.
    if image is None:
        raise ValueError("No image to classify: upload or choose one.")
    labels = check_texts(list(labels), "labels", MAX_LABELS)
    if len(labels) < 2:
        raise ValueError(f"zero-shot classification needs at least 2 labels to choose between, got {labels!r}")
    template = check_template(template)
    ensemble = tuple(dict.fromkeys([template, *(check_template(t) for t in templates)]))
    # 2. The image.
    image_vector = clip.embed_images([image])[0]
    # 3. One template.
    single = label_probabilities(clip, image_vector, clip.embed_texts([fill(template, label) for label in labels]))
    # 4. Ensemble: all prompts in one call, (labels x templates) rows, averaged per label.
    prompts = [fill(t, label) for label in labels for t in ensemble]
    averaged = clip.embed_texts(prompts).reshape(len(labels), len(ensemble), -1).mean(axis=1)
    # 5. Probabilities.
    ensembled = label_probabilities(clip, image_vector, averaged)
    return ZeroShotResult(labels, single, ensembled, template, ensemble)
