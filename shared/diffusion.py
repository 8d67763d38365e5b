"""Text-to-image pipelines for the Stable Diffusion page, and their fast path on a CPU.

    diffuser = load_diffuser("stabilityai/sd-turbo", "cpu", torch.float32)      # or a local folder
    out = diffuser.pipe("a cat", num_inference_steps=1, guidance_scale=0.0, output_type="latent")
    images = diffuser.decode(out.images)             # TAESD on the fast path; full=True: the pipeline's own VAE
    frames = diffuser.preview(latents)               # cheap per-step previews (callback_on_step_end)

It wraps diffusers' StableDiffusionPipeline (sd-turbo, v1.5, tiny-sd, the page's own tiny model) and
StableDiffusionXLPipeline (sdxl-turbo), loaded with `DiffusionPipeline.from_pretrained` (never remote code),
safety checker off, progress bar off.

The fast path (`fast=True`), chosen by measurement (benchmarks/diffusion.py --part speed: random weights of the
sd-turbo configuration, 512x512, 2 busy AVX2 cores; seconds for one part alone):
- the final decode goes through TAESD (madebyollin/taesd, or taesdxl for SDXL: diffusers' AutoencoderTiny) in
  channels-last memory format instead of the full VAE: 3.3 s against 46 s (TAESD contiguous: 4.5 s);
- on a CPU, the UNet and the CLIP text encoder of an SD-family pipeline run on ONNX Runtime in float32
  (exported once with torch.onnx, checked against PyTorch, stored under `read_settings().onnx_dir` keyed by
  the model folder's files, like shared/onnx_lm.py): UNet step 13.1 s against 22.3 s, text encoder 1.1 s
  against 3.7 s. Small models (the page's tiny one) stay on PyTorch: operator overhead dominates them.
Whole images: 1 step 3.7x faster than plain float32 diffusers with the full VAE, 4 steps 2.3x.
Measured and not taken: channels-last for the UNet (21.5 s: no gain) and the full VAE (slower), OpenVINO
(UNet step 1.5x PyTorch, the ONNX Runtime figure, with one more package and a slower conversion), ONNX
Runtime's transformer optimizer for UNets (no attention fusion on a CPU). int8 was not measured (no VNNI
here). SDXL keeps PyTorch for its UNet and text encoders.

Latent scales: pipeline latents are the VAE's latents times `vae.config.scaling_factor` (0.18215 for SD,
0.13025 for SDXL). The full VAE decodes `latents / scaling_factor`; TAESD (AutoencoderTiny,
scaling_factor 1.0) was trained on the scaled latents and decodes them as they are; both give [-1, 1].
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FAMILIES = ("sd", "sdxl")
PIPELINE_CLASSES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}
TAESD_SOURCES = {"sd": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}
SMALL_VAE_PARAMETERS = 5_000_000  # a VAE this small (the page's tiny model) is cheap enough to preview with
ONNX_MIN_PARAMETERS = 50_000_000  # smaller UNets / text encoders stay on PyTorch (operator overhead dominates)
EXPORT_TOLERANCE = 1e-3  # an ONNX export must match PyTorch this closely (relative to the output's scale)
# The well-known linear maps from scaled latents to RGB in [-1, 1] (ComfyUI's latent_formats.py: SD15, SDXL).
LATENT_RGB_FACTORS = {
    "sd": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
            [-0.2120, -0.2616, -0.7177]], [0.0, 0.0, 0.0]),
    "sdxl": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
              [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011]),
}


@dataclass
class Diffuser:
    pipe: Any  # StableDiffusionPipeline or StableDiffusionXLPipeline; safety checker off; progress bar disabled
    source: str  # hub id or local folder it came from
    family: str  # "sd" | "sdxl"
    turbo: bool  # distilled for 1-4 steps without guidance (sd-turbo, sdxl-turbo): the page disables guidance
    native_size: int  # the size it was trained at: unet.config.sample_size * the VAE's scale factor
    fast_decoder: Any | None  # AutoencoderTiny (TAESD) when one fits the family, else None
    notes: tuple[str, ...]  # what the fast path did, for the UI

    @property
    def components(self) -> dict[str, Any]:
        parts = {name: module for name, module in self.pipe.components.items() if isinstance(module, torch.nn.Module)}
        if self.fast_decoder is not None:
            parts["fast_decoder"] = self.fast_decoder
        return parts

    @property
    def nbytes(self) -> int:
        """What the model cache counts: the torch modules' tensors, plus the weights ONNX Runtime holds for the
        parts that run there (they have no torch parameters)."""
        from shared.cache import measure_bytes

        total = 0
        for module in self.components.values():
            total += getattr(module, "onnx_bytes", 0) or measure_bytes(module)
        return total

    def preview(self, latents: torch.Tensor, cheap: bool = False) -> list:
        """RGB previews of (scaled, as the pipeline holds them) latents, one PIL image per latent, at the output
        size: the pipeline's own VAE when it is small (the page's tiny model); else TAESD when there is one, unless
        `cheap`; else the fixed linear latent->RGB map, upscaled. `cheap` is for a preview after every step: TAESD
        takes ~3 s for a 512x512 image on 2 CPU cores, the linear map a few milliseconds."""
        if count_parameters(self.pipe.vae) <= SMALL_VAE_PARAMETERS:
            return self._vae_decode(latents)
        if self.fast_decoder is not None and not cheap:
            return self._fast_decode(latents)
        factors, bias = LATENT_RGB_FACTORS[self.family]
        with torch.inference_mode():
            matrix = torch.tensor(factors, dtype=torch.float32)
            rgb = torch.einsum("bchw,cr->brhw", latents.float().cpu(), matrix)
            rgb = rgb + torch.tensor(bias).view(1, 3, 1, 1)
            rgb = torch.nn.functional.interpolate(rgb, scale_factor=self.pipe.vae_scale_factor, mode="bilinear")
        return self.pipe.image_processor.postprocess(rgb.clamp(-1, 1), output_type="pil")

    def decode(self, latents: torch.Tensor, full: bool = False) -> list:
        """Final images of (scaled) latents: the fast decoder on the default path; the pipeline's own VAE with
        `full=True` or when there is no fast decoder (then the same pixels as the pipeline's own output)."""
        if full or self.fast_decoder is None:
            return self._vae_decode(latents)
        return self._fast_decode(latents)

    def _fast_decode(self, latents: torch.Tensor) -> list:
        decoder = self.fast_decoder
        with torch.inference_mode():
            # AutoencoderTiny's scaling_factor is 1.0: TAESD takes the pipeline's scaled latents as they are.
            scaled = latents.to(decoder.device, decoder.dtype) / decoder.config.scaling_factor
            image = decoder.decode(scaled, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image.float().clamp(-1, 1), output_type="pil")

    def _vae_decode(self, latents: torch.Tensor) -> list:
        """What the pipeline itself does after its loop (StableDiffusion[XL]Pipeline.__call__, output_type="pil")."""
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:  # SDXL's VAE overflows in float16; the pipeline decodes in float32 too
            vae.to(torch.float32)
        try:
            with torch.inference_mode():
                latents = latents.to(vae.device, vae.dtype)
                mean = getattr(vae.config, "latents_mean", None)
                std = getattr(vae.config, "latents_std", None)
                if mean is not None and std is not None:
                    shape = (1, len(mean), 1, 1)
                    mean = torch.tensor(mean).view(shape).to(latents.device, latents.dtype)
                    std = torch.tensor(std).view(shape).to(latents.device, latents.dtype)
                    latents = latents * std / vae.config.scaling_factor + mean
                else:
                    latents = latents / vae.config.scaling_factor
                image = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
        return self.pipe.image_processor.postprocess(image, output_type="pil")


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if isinstance(module, torch.nn.Module) else 0


def pipeline_folder(source: str) -> Path:
    """`source` as a local folder: itself when it is one, else the hub repository's files, downloaded once
    (diffusers picks the files a pipeline needs; offline, only what is already cached)."""
    if Path(source).is_dir():
        return Path(source)
    from diffusers import DiffusionPipeline

    return Path(DiffusionPipeline.download(source))


def read_model_index(folder: Path) -> dict:
    path = folder / "model_index.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no model_index.json: it is not a diffusers pipeline")
    return json.loads(path.read_text())


def is_turbo(source: str, model_index: dict) -> bool:
    """Distilled for 1-4 steps without guidance: a `"turbo": true` field in model_index.json (what a folder can
    say for itself), else the source's name containing "turbo" (stabilityai/sd-turbo, stabilityai/sdxl-turbo)."""
    if isinstance(model_index.get("turbo"), bool):
        return model_index["turbo"]
    return "turbo" in str(source).rstrip("/").split("/")[-1].lower()


def load_diffuser(source: str, device: str, dtype: torch.dtype, fast: bool = True,
                  fast_decoder_source: str | None = None) -> Diffuser:
    """A text-to-image pipeline from a hub id or a local folder, with the fast path when `fast` (see the module
    docstring); `fast_decoder_source` overrides the TAESD hub id or folder."""
    from diffusers import DiffusionPipeline

    # 1. Check the source: a diffusers pipeline of a class the page runs, before loading any weights.
    folder = pipeline_folder(source)
    model_index = read_model_index(folder)
    class_name = model_index.get("_class_name")
    if class_name not in PIPELINE_CLASSES:
        raise ValueError(f"{source} is a {class_name}; the page runs {', '.join(PIPELINE_CLASSES)}")
    family = PIPELINE_CLASSES[class_name]
    # 2. Load the pipeline: no safety checker, no progress bar.
    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd" else {}
    onnx = fast and str(device) == "cpu" and family == "sd"
    if onnx:  # ONNX Runtime runs float32: the whole pipeline does, so its tensors agree
        dtype = torch.float32
    pipe = DiffusionPipeline.from_pretrained(str(folder), torch_dtype=dtype, trust_remote_code=False, **extra)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    native_size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    diffuser = Diffuser(pipe=pipe, source=source, family=family, turbo=is_turbo(source, model_index),
                        native_size=native_size, fast_decoder=None, notes=())
    if not fast:
        diffuser.notes = ("plain diffusers pipeline (fast path off)",)
        return diffuser
    # 3. The fast path: TAESD for the final decode and the previews (not for a tiny VAE: it is cheap already).
    notes = []
    if count_parameters(pipe.vae) <= SMALL_VAE_PARAMETERS and fast_decoder_source is None:
        notes.append("decoder: the model's own small VAE")
    else:
        diffuser.fast_decoder, note = load_fast_decoder(fast_decoder_source or TAESD_SOURCES[family], device, dtype)
        notes.append(note)
    # 4. On a CPU, the SD family's big UNet and CLIP text encoder on ONNX Runtime, exported once and stored.
    if onnx:
        notes.extend(accelerate_with_onnx(pipe, folder, source))
    elif family == "sdxl":
        notes.append("UNet: PyTorch (the ONNX Runtime path is for SD-family pipelines)")
    else:
        notes.append(f"UNet: PyTorch on {device}")
    diffuser.notes = tuple(notes)
    return diffuser


def load_fast_decoder(source: str, device: str, dtype: torch.dtype) -> tuple[Any | None, str]:
    """(AutoencoderTiny in channels-last, note) or (None, a note saying why not: offline, missing...)."""
    from diffusers import AutoencoderTiny

    try:
        decoder = AutoencoderTiny.from_pretrained(source, torch_dtype=dtype)
    except Exception as error:  # offline, not cached, or not an AutoencoderTiny: the full VAE decodes instead
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        return None, f"decoder: full VAE (TAESD {source} could not load: {reason})"
    decoder = decoder.to(device).eval()
    decoder.to(memory_format=torch.channels_last)  # measured 1.35-1.7x faster for its 3x3 convs on a CPU
    return decoder, f"decoder: TAESD ({source}), channels-last"


# --------------------------------------------------------------------------------------------------------
# ONNX Runtime for the UNet and the text encoder
# --------------------------------------------------------------------------------------------------------


class _UNetForExport(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class _TextEncoderForExport(torch.nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        output = self.text_encoder(input_ids, return_dict=True)
        return output.last_hidden_state, output.pooler_output


def _example_inputs(part: str, model: Any) -> tuple[tuple, list[str], list[str], dict]:
    """(example inputs, input names, output names, dynamic axes) of the UNet or the text encoder."""
    if part == "unet":
        config = model.config
        latent = int(config.sample_size) if isinstance(config.sample_size, int) else int(config.sample_size[0])
        example = (torch.randn(1, int(config.in_channels), latent, latent), torch.tensor([999.0]),
                   torch.randn(1, 77, int(config.cross_attention_dim)))
        axes = {"sample": {0: "batch", 2: "height", 3: "width"}, "encoder_hidden_states": {0: "batch", 1: "tokens"},
                "noise": {0: "batch", 2: "height", 3: "width"}}
        return example, ["sample", "timestep", "encoder_hidden_states"], ["noise"], axes
    length = int(model.config.max_position_embeddings)
    example = (torch.randint(0, int(model.config.vocab_size), (1, length)),)
    axes = {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}, "pooler_output": {0: "batch"}}
    return example, ["input_ids"], ["last_hidden_state", "pooler_output"], axes


def export_part(part: str):
    """A `build(model, folder, weights)` for shared/onnx_lm.py `stored_build`: torch.onnx export (weights in
    one external file), checked against PyTorch before it counts as built."""

    def build(model: Any, folder: Path, weights: str = "fp32") -> Path:
        import onnxruntime

        from shared.onnx_lm import INFO_FILE

        if weights != "fp32":
            raise ValueError(f"the {part} is exported in fp32 only, got {weights!r}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        wrapper = (_UNetForExport if part == "unet" else _TextEncoderForExport)(model.float().eval())
        example, inputs, outputs, axes = _example_inputs(part, model)
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(wrapper, example, str(folder / "model.onnx"), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=17, dynamo=False, external_data=True)
            expected = wrapper(*example)
        expected = expected[0] if isinstance(expected, tuple) else expected
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {name: value.numpy() for name, value in zip(inputs, example)})[0]
        error = float(np.abs(got - expected.numpy()).max())
        scale = max(float(np.abs(expected.numpy()).max()), 1.0)
        if error > EXPORT_TOLERANCE * scale:
            raise RuntimeError(f"the ONNX {part} differs from PyTorch by up to {error:.2g}")
        (folder / INFO_FILE).write_text(json.dumps({"kind": f"diffusion-{part}", "weights": weights,
                                                     "config": dict(model.config.to_dict() if hasattr(
                                                         model.config, "to_dict") else model.config)}, default=str))
        return folder

    build.__name__ = f"export_{part}"
    return build


def onnx_session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxStandIn(torch.nn.Module):
    """A pipeline part run by an ONNX Runtime session on the CPU in float32: what the pipeline reads of it
    (config, dtype, device) besides the forward each subclass defines."""

    def __init__(self, session: Any, config: Any):
        super().__init__()
        self.session = session
        self.config = config

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


class OnnxUNet(OnnxStandIn):
    """Stands in for UNet2DConditionModel inside the pipeline: the same config and call, run by ONNX Runtime
    in float32 (what the pipeline reads: config, dtype, device; and the forward it calls each step)."""

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, cross_attention_kwargs=None,
                added_cond_kwargs=None, return_dict=True, **unused):
        if timestep_cond is not None or cross_attention_kwargs or added_cond_kwargs:
            raise ValueError("the ONNX Runtime UNet takes sample, timestep and encoder_hidden_states only; "
                             "load the model with fast=False for LCM guidance, IP-adapters or LoRA scales")
        multiple = 2 ** (len(self.config.block_out_channels) - 1)  # the graph was traced without odd upsampling
        if sample.shape[-1] % multiple or sample.shape[-2] % multiple:
            raise ValueError(f"the ONNX Runtime UNet needs latents whose sides are multiples of {multiple} (images "
                             f"whose sides are multiples of {multiple * 8}), got {tuple(sample.shape[-2:])}")
        steps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)[:1]
        noise = self.session.run(None, {"sample": sample.detach().float().cpu().numpy(), "timestep": steps.numpy(),
                                        "encoder_hidden_states": encoder_hidden_states.detach().float().cpu().numpy()})[0]
        noise = torch.from_numpy(noise)
        return (noise,) if not return_dict else _Output(sample=noise)


class OnnxTextEncoder(OnnxStandIn):
    """Stands in for CLIPTextModel inside the pipeline: (last_hidden_state, pooler_output) from ONNX Runtime."""

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, **unused):
        if output_hidden_states:
            raise ValueError("clip_skip needs the PyTorch text encoder: load the model with fast=False")
        hidden, pooled = self.session.run(None, {"input_ids": input_ids.detach().cpu().long().numpy()})
        return torch.from_numpy(hidden), torch.from_numpy(pooled)


@dataclass
class _Output:
    sample: torch.Tensor


def accelerate_with_onnx(pipe: Any, folder: Path, source: str) -> list[str]:
    """Swap the pipeline's UNet and CLIP text encoder for ONNX Runtime sessions (exported once, stored);
    returns the notes. A model too small to gain stays on PyTorch."""
    from shared.onnx_lm import stored_build
    from shared.settings import read_settings

    notes = []
    name = str(source).replace("local:", "").replace("/", "--").strip("-") or "pipeline"
    parts = [("unet", "UNet", pipe.unet)]
    if type(pipe.text_encoder).__name__ == "CLIPTextModel":
        parts.append(("text_encoder", "text encoder", pipe.text_encoder))
    for part, label, model in parts:
        if count_parameters(model) < ONNX_MIN_PARAMETERS:
            notes.append(f"{label}: PyTorch (small)")
            continue
        if not (folder / part).is_dir():
            notes.append(f"{label}: PyTorch (no {part}/ folder to key an ONNX build on)")
            continue
        built = stored_build(folder / part, "fp32", lambda model=model: model, read_settings().onnx_dir,
                             name=f"{name}-{part}", build=export_part("unet" if part == "unet" else "text"))
        wrapper = (OnnxUNet if part == "unet" else OnnxTextEncoder)(onnx_session(built / "model.onnx"),
                                                                     model.config)
        wrapper.onnx_bytes = sum(f.stat().st_size for f in built.iterdir() if f.is_file())  # for the model cache
        setattr(pipe, part, wrapper)
        del model
        notes.append(f"{label}: ONNX Runtime fp32")
    gc.collect()
    return notes
