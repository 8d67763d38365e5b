"""CLIP-style dual encoders, as the model cache holds them: one object that embeds texts and images.

    clip = get_cache().get(LoadSpec("clip", source.location, label=source.label))
    texts = clip.embed_texts(["a photo of a cat", "a sneaker"])       # (2, d) float32, unit length
    images = clip.embed_images([Image.open(...), ...])                 # (n, d) float32, unit length
    scores = clip.logit_scale * texts @ images.T                       # what the model's softmax sees

It wraps transformers' CLIPModel / SiglipModel (hub checkpoints) and VisionTextDualEncoderModel (the small
CLIP trained on the retrieval page, whose image tower reads 28x28 grey images). Images are prepared here,
once, the same way for training and for search: `pixel_values`.

The image tower can run on ONNX Runtime instead (`image_backend="onnx"`): exported once through the shared ONNX
store (shared/onnx_lm.py `stored_build`), checked against PyTorch when built, then used for every image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_TEXT_TOKENS = 77  # CLIP's context; longer queries are cut
IMAGE_BACKENDS = ("pytorch", "onnx")


@dataclass
class DualEncoder:
    model: Any  # CLIPModel, SiglipModel or VisionTextDualEncoderModel, in eval mode
    processor: Any  # its processor: a tokenizer and an image processor
    image_session: Any = None  # an ONNX Runtime session of the image tower; None: PyTorch runs it

    @property
    def image_backend(self) -> str:
        return "pytorch" if self.image_session is None else "onnx"

    @property
    def components(self) -> dict[str, Any]:  # what the model cache measures
        return {"model": self.model}

    @property
    def image_channels(self) -> int:
        return int(getattr(self.model.config.vision_config, "num_channels", 3))

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def dimension(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit-length text embeddings, one row per text."""
        import torch

        if not texts:
            raise ValueError("No text to embed: type at least one.")
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True,
                                          max_length=min(MAX_TEXT_TOKENS, self.processor.tokenizer.model_max_length),
                                          return_tensors="pt")
        device = self.model.device
        with torch.inference_mode():
            features = text_features(self.model, {k: v.to(device) for k, v in tokens.items()})
        return normalise(features.float().cpu().numpy())

    def embed_images(self, images: list) -> np.ndarray:
        """Unit-length image embeddings, one row per PIL image."""
        import torch

        if not images:
            raise ValueError("No image to embed.")
        pixels = pixel_values(self.processor, images, self.image_channels, self.image_size)
        if self.image_session is not None:
            features = self.image_session.run(None, {"pixel_values": pixels.float().numpy()})[0]
            return normalise(features)
        with torch.inference_mode():
            features = self.model.get_image_features(pixel_values=pixels.to(self.model.device, self.model.dtype))
        return normalise(features.float().cpu().numpy())


TEXT_POOLINGS = ("pooler", "mean")  # what a dual encoder's text tower hands its projection


def text_pooling(model: Any) -> str:
    """How `model` pools its text tower: "mean" (the small CLIP, whose text side is MiniLM's own sentence
    embedding, as sentence-transformers computes it) or "pooler" (every hub CLIP: the class's own
    `get_text_features`). Saved in the model's config.json as `text_pooling`."""
    pooling = getattr(model.config, "text_pooling", "pooler")
    if pooling not in TEXT_POOLINGS:
        raise ValueError(f"text_pooling must be one of {TEXT_POOLINGS}, got {pooling!r}")
    return pooling


def pooled_text(model: Any, tokens: dict) -> Any:
    """The text tower's output that the projection reads: the masked mean of the token states ("mean"), or the
    tower's pooler output ("pooler")."""
    output = model.text_model(**tokens)
    if text_pooling(model) == "pooler":
        return output.pooler_output
    mask = tokens["attention_mask"].unsqueeze(-1).to(output.last_hidden_state.dtype)
    return (output.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def text_features(model: Any, tokens: dict) -> Any:
    """Projected text features: `get_text_features` for hub CLIPs, the projection of the mean-pooled tower for
    a dual encoder saved with text_pooling "mean" (VisionTextDualEncoderModel itself projects the pooler)."""
    if text_pooling(model) == "pooler":
        return model.get_text_features(**tokens)
    return model.text_projection(pooled_text(model, tokens))


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (inner product = cosine similarity), float32, contiguous (what faiss takes)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12))


def pixel_values(processor: Any, images: list, channels: int, size: int):
    """The image tower's input for PIL images: the processor's own resizing and normalisation for RGB models;
    for grey models (the small CLIP) a grey resize to `size` and the processor's mean and std, which is exactly
    what the training set (Fashion-MNIST, 28x28 grey) goes through in `grey_pixels`."""
    import torch

    if channels == 3:
        return processor.image_processor(images=[image.convert("RGB") for image in images],
                                          return_tensors="pt")["pixel_values"]
    from PIL import Image

    grey = np.stack([np.asarray(image.convert("L").resize((size, size), Image.BILINEAR)) for image in images])
    return torch.from_numpy(grey_pixels(processor, grey))


def grey_pixels(processor: Any, images: np.ndarray) -> np.ndarray:
    """uint8 grey images (n, h, w) as the small CLIP's float32 input (n, 1, h, w), normalised like its
    image processor says (image_mean / image_std)."""
    mean = float(np.ravel(processor.image_processor.image_mean)[0])
    std = float(np.ravel(processor.image_processor.image_std)[0])
    return ((images.astype(np.float32) / 255.0 - mean) / std)[:, None, :, :]


def load_dual_encoder(location: str, device: str, torch_dtype: Any, attn_implementation: str | None = None
                      ) -> DualEncoder:
    """A dual encoder from a hub id or a saved folder; never with remote code. `attn_implementation`: None for
    the library's choice, "eager" for towers that return their attention weights."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(location, trust_remote_code=False)
    if config.model_type == "vision-text-dual-encoder":
        model_class = transformers.VisionTextDualEncoderModel
        processor = transformers.VisionTextDualEncoderProcessor.from_pretrained(location)
    elif config.model_type in ("clip", "siglip", "chinese_clip"):
        model_class = transformers.AutoModel
        processor = transformers.AutoProcessor.from_pretrained(location, trust_remote_code=False)
    else:
        raise ValueError(f"{location} is a {config.model_type!r} model, not a CLIP-style dual encoder "
                         "(clip, siglip or vision-text-dual-encoder).")
    model = model_class.from_pretrained(location, dtype=torch_dtype, device_map=device, low_cpu_mem_usage=True,
                                        trust_remote_code=False)
    if attn_implementation:
        # from_pretrained(attn_implementation=...) reaches only the top config of a dual encoder (transformers
        # 4.57), not its towers; set_attn_implementation sets the towers' configs too. Its warning that it
        # "could not check" a sub-model is about models it cannot find; the towers are plain modules here.
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            model.set_attn_implementation(attn_implementation)
        finally:
            transformers.logging.set_verbosity(verbosity)
    return DualEncoder(model.eval(), processor)


def export_image_tower(model: Any, folder: Path, weights: str = "fp32") -> Path:
    """Write `model`'s image tower (pixel values -> image features) to `folder` as model.onnx with a dynamic
    batch, and the store's info file; the export is checked against PyTorch before it counts as built."""
    import numpy as np
    import onnxruntime
    import torch

    from shared.onnx_lm import INFO_FILE

    if weights != "fp32":
        raise ValueError(f"the image tower is exported in fp32 only, got {weights!r}")

    class ImageFeatures(torch.nn.Module):
        def __init__(self, dual_encoder):
            super().__init__()
            self.dual_encoder = dual_encoder

        def forward(self, pixel_values):
            return self.dual_encoder.get_image_features(pixel_values=pixel_values)

    vision = model.config.vision_config
    example = torch.randn(2, int(getattr(vision, "num_channels", 3)), int(vision.image_size), int(vision.image_size))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = ImageFeatures(model.float().eval())
    torch.onnx.export(wrapper, (example,), str(folder / "model.onnx"), input_names=["pixel_values"],
                      output_names=["image_features"], opset_version=17, dynamo=False,
                      dynamic_axes={"pixel_values": {0: "batch"}, "image_features": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = wrapper(example).numpy()
    got = session.run(None, {"pixel_values": example.numpy()})[0]
    if not np.allclose(got, expected, atol=1e-3, rtol=1e-3):
        raise RuntimeError(f"the ONNX image tower differs from PyTorch by up to {np.abs(got - expected).max():.2g}")
    (folder / INFO_FILE).write_text(json.dumps({"kind": "clip-image-tower", "weights": weights}))
    return folder


def onnx_image_session(encoder: DualEncoder, location: str, store: Path, name: str):
    """An ONNX Runtime session of `encoder`'s image tower, exported once into `store` (keyed by the model
    folder's files) and reused after."""
    import onnxruntime

    from shared.onnx_lm import stored_build

    folder = stored_build(location, "fp32", lambda: encoder.model, store, name=f"{name}-image-tower",
                          build=export_image_tower)
    return onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
