"""Loader functions for the model cache, one per kind. Each takes (spec, device, dtype) and returns the object.
Importing this module registers them with the process-wide cache (`import shared.loaders`).

They load with safetensors where the weights offer it (transformers prefers them), straight onto the
device (`device_map`) so the CPU never holds a second copy, and never with `trust_remote_code`.
"""

from __future__ import annotations

from typing import Any

from shared.cache import LoadSpec, Loader, register_loader
from shared.device import torch_dtype


def load_tokenizer(spec: LoadSpec, device: str, dtype: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False, **dict(spec.options))


def load_pretrained(auto_class_name: str) -> Loader:
    """A loader for a transformers Auto class: weights in `dtype`, placed on `device`, in eval mode."""

    def load(spec: LoadSpec, device: str, dtype: str) -> Any:
        import transformers

        auto_class = getattr(transformers, auto_class_name)
        model = auto_class.from_pretrained(
            spec.source, dtype=torch_dtype(dtype), device_map=device, low_cpu_mem_usage=True,
            trust_remote_code=False, **dict(spec.options),
        )
        return model.eval()

    load.__name__ = f"load_{auto_class_name}"
    return load


def local_folder(source: str, patterns: list[str]) -> str:
    """`source` as a local folder: itself when it is one, else the hub repository's files matching `patterns`,
    downloaded once (what an ONNX build reads and keys on)."""
    from pathlib import Path

    if Path(source).is_dir():
        return source
    from huggingface_hub import snapshot_download

    return snapshot_download(source, allow_patterns=patterns)


def load_onnx_causal_lm(spec: LoadSpec, device: str, dtype: str) -> Any:
    """A causal LM as an ONNX Runtime decoder (shared/onnx_lm.py), converted once from its transformers weights
    and stored; options: weights = "int8" (default), "int4" or "fp32". ONNX Runtime runs it on the CPU."""
    from shared.onnx_lm import OnnxCausalLM, stored_build
    from shared.settings import read_settings

    options = dict(spec.options)
    weights = options.pop("weights", "int8")
    # A hub id: its files, for the build's key and for the conversion.
    folder = local_folder(spec.source, ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model", "*.jinja"])

    def torch_model():
        return load_pretrained("AutoModelForCausalLM")(LoadSpec("causal-lm", folder, options=tuple(options.items())),
                                                       "cpu", "float32")

    name = spec.name.replace("local:", "").replace("/", "--")
    return OnnxCausalLM(stored_build(folder, weights, torch_model, read_settings().onnx_dir, name=name))


def load_clip(spec: LoadSpec, device: str, dtype: str) -> Any:
    """A CLIP-style dual encoder with its processor (shared/clip.py): CLIPModel / SiglipModel from the hub, or
    the VisionTextDualEncoderModel the retrieval page trains. Option image_backend="onnx" runs the image tower
    on ONNX Runtime (exported once, stored under PLAYGROUND_HOME/onnx/); attn_implementation="eager" makes
    the towers return attention weights."""
    from shared.clip import IMAGE_BACKENDS, load_dual_encoder, onnx_image_session
    from shared.settings import read_settings

    options = dict(spec.options)
    backend = options.get("image_backend", "pytorch")
    if backend not in IMAGE_BACKENDS:
        raise ValueError(f"image_backend must be one of {IMAGE_BACKENDS}, got {backend!r}")
    folder = spec.source
    if backend == "onnx":  # a hub id: its files, for the export's key
        folder = local_folder(spec.source, ["*.json", "*.safetensors", "*.txt", "*.model"])
    encoder = load_dual_encoder(folder, "cpu" if backend == "onnx" else device,
                                torch_dtype("float32" if backend == "onnx" else dtype),
                                attn_implementation=options.get("attn_implementation"))
    if backend == "onnx":
        name = spec.name.replace("local:", "").replace("/", "--").split(" ")[0]
        encoder.image_session = onnx_image_session(encoder, folder, read_settings().onnx_dir, name)
    return encoder


def load_diffusion(spec: LoadSpec, device: str, dtype: str) -> Any:
    """A diffusers text-to-image pipeline as a `Diffuser` (shared/diffusion.py): the pipeline with the page's
    fast path (TAESD decoder where one fits, and what benchmarks/diffusion.py chose) unless option fast=False."""
    from shared.diffusion import load_diffuser

    return load_diffuser(spec.source, device, torch_dtype(dtype), fast=dict(spec.options).get("fast", True))


STANDARD_LOADERS: dict[str, Loader] = {
    "clip": load_clip,
    "diffusion": load_diffusion,
    "onnx-causal-lm": load_onnx_causal_lm,
    "tokenizer": load_tokenizer,
    "causal-lm": load_pretrained("AutoModelForCausalLM"),
    "encoder": load_pretrained("AutoModel"),
    "sequence-classifier": load_pretrained("AutoModelForSequenceClassification"),
}

for _kind, _loader in STANDARD_LOADERS.items():
    register_loader(_kind, _loader)
