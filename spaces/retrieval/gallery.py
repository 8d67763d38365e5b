"""Image galleries for the retrieval page, and their CLIP embeddings stored on disk.

A gallery is a list of images with captions: the bundled sample photos, Fashion-MNIST test images with their
class labels, or the visitor's uploads (image files or one zip). Every item carries a content key, the sha256
of its decoded pixels, so the same picture has the same key wherever it came from.

    gallery = photos_gallery()                      # or fashion_mnist_gallery(limit=2000), read_uploads(files)
    embedded = embed_gallery(gallery, source.location, encoder_loader(source.location, source.label),
                             progress, stop)        # EmbeddedGallery: the gallery and one unit vector per item
    bigger = embed_gallery(gallery.add(read_uploads(more)), ...)   # embeds only the new images

Embeddings live under PLAYGROUND_HOME/embeddings/<model key>/ (see `model_key`): shard files of
(content key, vector) rows, written whole and renamed into place, so a crash or a Stop leaves only complete
shards and the batches done so far are kept. Opening a gallery whose images are all stored makes no model call
at all: the encoder is asked for only when some image has no vector yet.

Uploads are untrusted: an upload is refused with a ValueError that says why (not an image, truncated, too
many pixels, zero size, a zip with too many files or too many bytes once unpacked). Names are only captions:
nothing an upload names is ever used as a path, and zip members are read into memory.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import threading
import unicodedata
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from shared.jobs import Progress, no_progress
from shared.settings import read_settings

MAX_IMAGE_PIXELS = int(os.environ.get("PLAYGROUND_MAX_IMAGE_PIXELS", 40_000_000))  # one image, width x height
MAX_UPLOAD_FILES = int(os.environ.get("PLAYGROUND_MAX_UPLOAD_FILES", 1000))  # images in one upload (zip members too)
MAX_FILE_BYTES = 50 * 2**20  # one uploaded file or zip member, as stored
MAX_UNPACKED_BYTES = 500 * 2**20  # a zip's members together, once unpacked
MAX_ZIP_RATIO = 200  # unpacked / packed size of one member: real images barely compress, bombs do a lot
KEPT_SIDE = 1024  # images are kept at most this wide or tall: CLIP sees 224 pixels, the page shows thumbnails
FASHION_MNIST_LIMIT = 2000  # Fashion-MNIST images a gallery takes unless asked for more (the test split has 10,000)
GALLERIES = {"sample photos": "photos", "Fashion-MNIST test images": "fashion-mnist", "my uploads": "uploads"}
BATCH_SIZE = 32  # images per model call
SHARD_ROWS = 512  # vectors per stored shard: a Stop loses at most one shard's worth of work
CAPTION_CHARS = 80

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members; an empty zip


@dataclass(frozen=True)
class GalleryItem:
    image: Any  # a PIL image, at most KEPT_SIDE wide or tall
    caption: str  # what the page shows under it: the photo's caption, a class name, a sanitised file name
    key: str  # sha256 of the decoded pixels (mode, size, bytes): the embedding's key on disk
    label: str = ""  # the class, where the gallery has classes (Fashion-MNIST)


@dataclass(frozen=True)
class Gallery:
    name: str  # "photos", "fashion-mnist", "uploads", or a combination
    items: tuple[GalleryItem, ...]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def keys(self) -> list[str]:
        return [item.key for item in self.items]

    @property
    def fingerprint(self) -> str:
        """sha256 of the items' keys in order: names this exact gallery (its saved search index uses it)."""
        return hashlib.sha256("\n".join(self.keys).encode()).hexdigest()

    def add(self, other: Gallery) -> Gallery:
        """This gallery followed by the other's items that it does not already hold (same pixels = same item)."""
        return make_gallery(f"{self.name}+{other.name}", [*self.items, *other.items])


def make_gallery(name: str, items: Iterable[GalleryItem]) -> Gallery:
    """A gallery of the items, the first of each content key kept: a picture appears once in search results."""
    unique: dict[str, GalleryItem] = {}
    for item in items:
        unique.setdefault(item.key, item)
    return Gallery(name, tuple(unique.values()))


def pixel_key(image: Any) -> str:
    """sha256 of an image's decoded pixels, mode and size: the same picture gets the same key from a PNG, a JPEG
    re-read or an array, and a changed pixel gets another."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def kept_copy(image: Any) -> Any:
    """The image as the gallery keeps it: loaded, and shrunk to KEPT_SIDE when larger (memory stays bounded)."""
    from PIL import Image

    if max(image.size) <= KEPT_SIDE:
        return image.copy()
    kept = image.copy()
    kept.thumbnail((KEPT_SIDE, KEPT_SIDE), Image.Resampling.LANCZOS)
    return kept


def item_from_image(image: Any, caption: str, label: str = "") -> GalleryItem:
    return GalleryItem(kept_copy(image), caption, pixel_key(image), label)


# ----------------------------------------------------------------------------------------------------------
# The bundled galleries.


def photos_gallery() -> Gallery:
    """The sample photos of scikit-image and scikit-learn (shared/assets.py), with their captions."""
    from shared.assets import read_photos

    items = []
    for photo in read_photos():
        data = Path(photo["path"]).read_bytes()
        items.append(item_from_image(decode_image(data, photo["file"]), photo["caption"]))
    return make_gallery("photos", items)


def fashion_mnist_gallery(limit: int | None = FASHION_MNIST_LIMIT) -> Gallery:
    """The first `limit` Fashion-MNIST test images (None: all 10,000) as 28x28 grey images, labelled by class."""
    from PIL import Image

    from shared.assets import ensure

    with np.load(ensure("fashion-mnist") / "fashion-mnist.npz") as data:
        images, labels, names = data["test_images"], data["test_labels"], data["label_names"]
    if limit is not None:
        if not 1 <= limit <= len(images):
            raise ValueError(f"limit must be between 1 and {len(images)} Fashion-MNIST images, got {limit}")
        images, labels = images[:limit], labels[:limit]
    items = []
    for position, (pixels, label) in enumerate(zip(images, labels)):
        name = str(names[int(label)])
        items.append(item_from_image(Image.fromarray(pixels, mode="L"), f"{name} #{position}", name))
    return make_gallery("fashion-mnist", items)


def choose_gallery(source: str, uploads: Sequence[Upload] | None, fashion_size: int | None) -> Gallery:
    """The gallery a visitor picked on the page (one of GALLERIES), checked."""
    if source not in GALLERIES:
        raise ValueError(f"gallery must be one of {list(GALLERIES)}, got {source!r}")
    if GALLERIES[source] == "photos":
        return photos_gallery()
    if GALLERIES[source] == "fashion-mnist":
        if fashion_size is None or int(fashion_size) != fashion_size or not 10 <= fashion_size <= 10_000:
            raise ValueError(f"Fashion-MNIST images must be a whole number from 10 to 10000, got {fashion_size}.")
        return fashion_mnist_gallery(int(fashion_size))
    if not uploads:
        raise ValueError("Upload images (files or a zip) first, or choose another gallery.")
    return read_uploads(list(uploads))


# ----------------------------------------------------------------------------------------------------------
# Uploads: untrusted bytes, checked before anything is decoded.


def display_name(name: str) -> str:
    """A file name fit to show as a caption: its last path part, control characters dropped, cut short.
    Only ever shown, never opened."""
    last = PurePosixPath(str(name).replace("\\", "/")).name
    printable = "".join(ch for ch in last if unicodedata.category(ch)[0] != "C")
    return printable.strip()[:CAPTION_CHARS] or "unnamed"


def decode_image(data: bytes, name: str) -> Any:
    """Bytes as a loaded PIL image; ValueError naming the file when they are no image, a truncated or corrupt
    one, a zero-size one, or one with more pixels than MAX_IMAGE_PIXELS (a decompression bomb is refused from
    its header, before any pixel is decoded)."""
    from PIL import Image, UnidentifiedImageError

    shown = display_name(name)
    # 1. Size checks that need no decoding.
    if not data:
        raise ValueError(f"{shown!r} is empty (0 bytes), not an image")
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{shown!r} is {len(data) / 2**20:.0f} MiB; files up to {MAX_FILE_BYTES // 2**20} MiB "
                         "are accepted")
    header_size = png_header_size(data)
    if header_size is not None and 0 in header_size:  # Pillow calls such a file no image at all; say what it is
        raise ValueError(f"{shown!r} is a zero-size image ({header_size[0]}x{header_size[1]} pixels)")
    # 2. Read the header only, and judge the size it claims. PIL's own bomb check stays on as a second guard,
    # its warning made an error.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ValueError(f"{shown!r} is a zero-size image ({width}x{height} pixels)")
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{shown!r} claims {width}x{height} = {width * height:,} pixels; images up to "
                                 f"{MAX_IMAGE_PIXELS:,} pixels are accepted (larger ones may be decompression bombs)")
            # 3. Verify the whole file (PNG checksums, truncation), then decode it for real from a fresh reader:
            # `verify` leaves the image unusable.
            image.verify()
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"{shown!r} is refused as a decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise ValueError(f"{shown!r} is not an image that Pillow can read (PNG, JPEG, GIF, WebP, BMP, TIFF...)") from None
    except (OSError, SyntaxError, EOFError) as error:  # what Pillow raises for truncated and corrupt files
        raise ValueError(f"{shown!r} is a truncated or corrupt image: {error}") from None
    return image


def png_header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when the bytes are no PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return struct.unpack(">II", data[16:24])


def zip_members(data: bytes, name: str) -> list[tuple[str, bytes]]:
    """The files inside a zip, read into memory as (name, bytes); ValueError when the zip has more than
    MAX_UPLOAD_FILES files, unpacks to more than MAX_UNPACKED_BYTES, or has a member that unpacks more than
    MAX_ZIP_RATIO times its packed size. Folders and macOS resource forks are skipped. Member names are kept
    for captions only: nothing is extracted to disk, so a name like ../../x.png reaches no path."""
    shown = display_name(name)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
        raise ValueError(f"{shown!r} is not a readable zip file: {error}") from None
    with archive:
        # 1. Judge the archive from its directory before unpacking anything.
        infos = [info for info in archive.infolist() if not info.is_dir() and not is_resource_fork(info.filename)]
        if len(infos) > MAX_UPLOAD_FILES:
            raise ValueError(f"{shown!r} holds {len(infos)} files; a zip may hold up to {MAX_UPLOAD_FILES}")
        unpacked = sum(info.file_size for info in infos)
        if unpacked > MAX_UNPACKED_BYTES:
            raise ValueError(f"{shown!r} unpacks to {unpacked / 2**20:.0f} MiB; zips may unpack to at most "
                             f"{MAX_UNPACKED_BYTES // 2**20} MiB")
        for info in infos:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > MAX_ZIP_RATIO:
                raise ValueError(f"{display_name(info.filename)!r} in {shown!r} unpacks {ratio:.0f} times its "
                                 f"packed size; at most {MAX_ZIP_RATIO} times is accepted (a zip bomb?)")
        # 2. Unpack into memory, never reading past what the directory declared: a directory that lies
        # about sizes cannot make us read more.
        members = []
        for info in infos:
            try:
                with archive.open(info) as member:
                    content = member.read(min(info.file_size, MAX_FILE_BYTES) + 1)
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as error:
                raise ValueError(f"{display_name(info.filename)!r} in {shown!r} cannot be read: {error}") from None
            if len(content) > info.file_size:
                raise ValueError(f"{display_name(info.filename)!r} in {shown!r} is larger than its zip entry says")
            members.append((info.filename, content))
    return members


def is_resource_fork(member_name: str) -> bool:
    """macOS Finder adds __MACOSX/ and ._name files to zips it makes: metadata, not the visitor's images."""
    return member_name.startswith("__MACOSX/") or PurePosixPath(member_name).name.startswith("._")


Upload = str | os.PathLike | tuple[str, bytes]  # a file the upload widget wrote, or (name, bytes)


def read_uploads(files: Sequence[Upload]) -> Gallery:
    """The visitor's images as a gallery: several image files, one or more zips of images, or both.

    Each file is a path the upload widget wrote (its own temporary file) or (name, bytes). The whole upload is
    refused with a ValueError naming the first bad file, so the visitor can fix it and try again.
    """
    # 1. Read every file into memory, zips unpacked: (name, bytes) pairs.
    if not files:
        raise ValueError("No file uploaded: choose image files or a zip of images.")
    named: list[tuple[str, bytes]] = []
    for upload in files:
        name, data = upload if isinstance(upload, tuple) else (str(upload), read_uploaded_file(Path(upload)))
        named += zip_members(data, name) if data[:4] in ZIP_SIGNATURES else [(name, data)]
        if len(named) > MAX_UPLOAD_FILES:
            raise ValueError(f"the upload holds more than {MAX_UPLOAD_FILES} files; upload fewer at a time")
    if not named:
        raise ValueError("The upload holds no file (an empty zip?).")
    # 2. Decode and check each one.
    items = [item_from_image(decode_image(data, name), display_name(name)) for name, data in named]
    return make_gallery("uploads", items)


def read_uploaded_file(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{display_name(path.name)!r} is {size / 2**20:.0f} MiB; files up to "
                         f"{MAX_FILE_BYTES // 2**20} MiB are accepted")
    return path.read_bytes()


# ----------------------------------------------------------------------------------------------------------
# Embeddings on disk.


def embeddings_dir() -> Path:
    return read_settings().home / "embeddings"


def model_key(location: str) -> str:
    """The folder name under embeddings/ for a model: a readable name and a hash of what defines its vectors.

    For a saved folder: its path, config.json, and the name, size and modification time of each weights file
    (a model retrained under the same name gets a new key). For a hub id: the id and its config.json from the
    hub's local cache. The model itself is never loaded here.
    """
    digest = hashlib.sha256(location.encode())
    folder = Path(location)
    if folder.is_dir():
        config = folder / "config.json"
        digest.update(config.read_bytes() if config.exists() else b"")
        for weights in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")]):
            stat = weights.stat()
            digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        readable = folder.name
    else:
        digest.update(hub_config_bytes(location))
        readable = location
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", readable).strip("-.")[:60] or "model"
    return f"{readable}-{digest.hexdigest()[:16]}"


def hub_config_bytes(model_id: str) -> bytes:
    """A hub model's config.json as the local hub cache holds it (downloaded when online); b"" when it cannot
    be had, so the key falls back to the id alone."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(model_id, "config.json")).read_bytes()
    except Exception:  # offline and not cached, or no such file: the id still names the model
        return b""


@dataclass
class EmbeddingStore:
    """The stored vectors of one model: embeddings/<model key>/shard-*.npz, each holding `keys` (content keys)
    and `vectors` (float32 rows, unit length)."""

    folder: Path
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # content key -> vector, as read so far

    @classmethod
    def open(cls, key: str) -> EmbeddingStore:
        store = cls(embeddings_dir() / key)
        for shard in sorted(store.folder.glob("shard-*.npz")):
            try:
                with np.load(shard) as data:
                    store.vectors.update(zip(data["keys"].tolist(), data["vectors"]))
            except (OSError, ValueError, KeyError) as error:  # a damaged shard: its images are embedded again
                shard.rename(shard.with_suffix(".damaged"))
                warnings.warn(f"ignoring damaged embeddings {shard}: {error}", stacklevel=2)
        return store

    def save(self, keys: list[str], vectors: np.ndarray) -> None:
        """Add one shard: written under a temporary name, then renamed, so readers never see half a file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex}"
        temporary = self.folder / f".{name}.npz"
        np.savez(temporary, keys=np.array(keys), vectors=vectors.astype(np.float32))
        os.replace(temporary, self.folder / f"{name}.npz")
        self.vectors.update(zip(keys, vectors))


@dataclass(frozen=True)
class EmbeddedGallery:
    gallery: Gallery  # the items that have vectors (all of them unless the embedding was stopped)
    vectors: np.ndarray  # (len(gallery), d) float32, unit rows, in the gallery's order
    model_key: str  # the folder under embeddings/ that holds the vectors and the saved indexes
    embedded_now: int  # how many vectors this call computed (0: all were stored)
    stopped: bool = False  # the stop event ended the embedding early

    @property
    def folder(self) -> Path:
        return embeddings_dir() / self.model_key


def encoder_loader(location: str, label: str = "", image_backend: str = "pytorch") -> Callable[[], Any]:
    """A function that returns the model cache's dual encoder for `location` (its image tower on PyTorch or ONNX
    Runtime): what `embed_gallery` calls only when some image has no stored vector. Both backends give the same
    vectors (to ~1e-5, checked when the ONNX tower is built), so they share the stored embeddings."""

    def load_encoder() -> Any:
        return dual_encoder(location, label, image_backend)

    return load_encoder


def dual_encoder(location: str, label: str = "", image_backend: str = "pytorch") -> Any:
    """The model cache's dual encoder for `location`, its image tower on `image_backend`."""
    import shared.loaders  # noqa: F401  (registers the "clip" loader)
    from shared.cache import LoadSpec, get_cache

    label = label or location
    if image_backend == "pytorch":
        return get_cache().get(LoadSpec("clip", location, label=label))
    return get_cache().get(LoadSpec("clip", location, options=(("image_backend", image_backend),),
                                    label=f"{label} (ONNX image tower)"))


_store_locks: dict[str, threading.Lock] = {}
_store_locks_guard = threading.Lock()


def store_lock(key: str) -> threading.Lock:
    """One lock per model key: two visitors embedding the same gallery at once do the work once."""
    with _store_locks_guard:
        return _store_locks.setdefault(key, threading.Lock())


def embed_gallery(gallery: Gallery, location: str, load_encoder: Callable[[], Any],
                  progress: Progress = no_progress, stop: threading.Event | None = None,
                  batch_size: int = BATCH_SIZE) -> EmbeddedGallery:
    """Unit-length embeddings of every image in the gallery for the model at `location`, reusing stored ones.

    1. Check the inputs. 2. Read the model's stored vectors. 3. Embed the images that have none, in batches,
    saving a shard every SHARD_ROWS vectors and checking `stop` between batches. 4. Return the vectors in the
    gallery's order (only the items embedded so far when stopped).
    `load_encoder()` returns a DualEncoder (see `encoder_loader`); it is called only when something is missing.
    """
    # 1. Check.
    if not len(gallery):
        raise ValueError("The gallery is empty: choose a gallery or upload images first.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    key = model_key(location)
    with store_lock(key):
        # 2. What is stored already.
        store = EmbeddingStore.open(key)
        missing = [item for item in gallery.items if item.key not in store.vectors]
        progress(0.0, f"{len(gallery) - len(missing)} of {len(gallery)} images already embedded")
        # 3. Embed what is missing.
        stopped = False
        if missing:
            encoder = load_encoder()
            pending_keys: list[str] = []
            pending_vectors: list[np.ndarray] = []
            for start in range(0, len(missing), batch_size):
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                batch = missing[start:start + batch_size]
                pending_vectors.append(encoder.embed_images([item.image for item in batch]))
                pending_keys += [item.key for item in batch]
                if len(pending_keys) >= SHARD_ROWS:
                    store.save(pending_keys, np.concatenate(pending_vectors))
                    pending_keys, pending_vectors = [], []
                done = start + len(batch)
                progress(done / len(missing), f"embedded {done} of {len(missing)} new images")
            if pending_keys:  # also when stopped: the work done is kept
                store.save(pending_keys, np.concatenate(pending_vectors))
        # 4. The vectors in the gallery's order.
        embedded_items = [item for item in gallery.items if item.key in store.vectors]
        embedded_now = sum(1 for item in missing if item.key in store.vectors)
    if not embedded_items:
        raise ValueError("Stopped before any image was embedded.")
    vectors = np.stack([store.vectors[item.key] for item in embedded_items]).astype(np.float32)
    return EmbeddedGallery(make_gallery(gallery.name, embedded_items), np.ascontiguousarray(vectors), key,
                           embedded_now, stopped)
