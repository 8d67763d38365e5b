"""shared/clip.py on a tiny seeded CLIPModel of the real classes: unit-length embeddings, and the image tower on
ONNX Runtime equal to PyTorch's, exported once into the store."""

from __future__ import annotations

import numpy as np
import torch

from shared import clip
from tests.retrieval.tiny import make_tiny_clip


def photos(count: int):
    from PIL import Image

    rng = np.random.default_rng(1)
    return [Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)) for _ in range(count)]


def test_embeddings_are_unit_length_and_the_onnx_image_tower_matches_pytorch(tmp_path, monkeypatch):
    from shared import onnx_lm

    folder = make_tiny_clip(tmp_path / "tiny-clip")
    encoder = clip.load_dual_encoder(str(folder), "cpu", torch.float32)
    texts, images = encoder.embed_texts(["a cat", "a rocket"]), encoder.embed_images(photos(3))
    assert texts.shape == (2, 16) and images.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    builds = []
    export = clip.export_image_tower

    def counted(*args):
        builds.append(1)
        return export(*args)

    monkeypatch.setattr(clip, "export_image_tower", counted)
    session = clip.onnx_image_session(encoder, str(folder), tmp_path / "onnx", "tiny")
    runs = []

    class CountingSession:
        def run(self, *args):
            runs.append(1)
            return session.run(*args)

    encoder.image_session = CountingSession()
    assert encoder.image_backend == "onnx"
    np.testing.assert_allclose(encoder.embed_images(photos(3)), images, atol=1e-5)
    assert runs == [1]  # ONNX Runtime made these embeddings
    clip.onnx_image_session(encoder, str(folder), tmp_path / "onnx", "tiny")  # the stored build, not a new one
    assert builds == [1] and len(list((tmp_path / "onnx").glob("tiny-image-tower-fp32-*"))) == 1
    assert (next((tmp_path / "onnx").glob("tiny-*")) / onnx_lm.INFO_FILE).exists()
