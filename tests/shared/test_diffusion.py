"""shared/diffusion.py on a tiny, seeded Stable Diffusion pipeline of the real classes (CLIPTextModel with a
byte-level CLIPTokenizer, UNet2DConditionModel, AutoencoderKL) and a tiny random AutoencoderTiny standing in for
TAESD: latents decoded by `Diffuser.decode(full=True)` give the pipeline's own pixels; the fast decoder gets the
latent scaling diffusers uses for AutoencoderTiny; the ONNX Runtime UNet and text encoder give the PyTorch
pipeline's image and are built once; previews have the output's size; turbo is detected; a fast decoder that
cannot load leaves a note.

Seen to fail when the code it guards was broken: decoding without dividing by the VAE's scaling_factor, dividing
TAESD's input by the SD VAE's scaling_factor, and an ONNX UNet fed the wrong timestep all failed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import diffusion
from shared.settings import read_settings
from tests.retrieval.tiny import write_tokenizer_files

PROMPT = "a cat"
SIZE = 32  # pixels: 16x16 latents through a VAE with two blocks (scale factor 2)


def make_tiny_pipeline(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random StableDiffusionPipeline (EulerDiscreteScheduler, trailing spacing as sd-turbo's)."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder.parent / f"{folder.name}-tokenizer"
    scratch.mkdir(exist_ok=True)
    write_tokenizer_files(scratch)
    tokenizer = CLIPTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"), model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32, scaling_factor=0.18215)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def make_tiny_taesd(folder: Path, seed: int = 1) -> Path:
    """A tiny random AutoencoderTiny with TAESD's conventions (4 latent channels, scaling_factor 1.0)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                    num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-sd")
    return {"pipeline": make_tiny_pipeline(root / "tiny-sd"), "taesd": make_tiny_taesd(root / "tiny-taesd")}


@pytest.fixture(autouse=True)
def onnx_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PLAYGROUND_HOME", str(tmp_path / "home"))


def run(diffuser, output_type: str, steps: int = 2, guidance: float = 0.0, seed: int = 0):
    generator = torch.Generator("cpu").manual_seed(seed)
    return diffuser.pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=SIZE, width=SIZE,
                         generator=generator, output_type=output_type).images


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float64) for image in images])


def test_full_decode_of_latents_is_the_pipelines_own_image(tiny):
    diffuser = diffusion.load_diffuser(str(tiny["pipeline"]), "cpu", torch.float32, fast=False)
    assert diffuser.family == "sd" and diffuser.fast_decoder is None
    assert diffuser.pipe.safety_checker is None
    assert diffuser.native_size == SIZE
    expected = pixels(run(diffuser, "pil"))
    got = pixels(diffuser.decode(run(diffuser, "latent"), full=True))
    assert got.shape == expected.shape == (1, SIZE, SIZE, 3)
    assert np.abs(got - expected).max() <= 1  # same pixels, up to rounding
    assert pixels(diffuser.decode(run(diffuser, "latent"))).tolist() == got.tolist()  # no fast decoder: the VAE


def test_fast_decoder_takes_latents_as_diffusers_feeds_autoencoder_tiny(tiny):
    """TAESD decodes the pipeline's scaled latents as they are: the same image as a pipeline whose VAE is the
    AutoencoderTiny itself (diffusers divides by its scaling_factor, 1.0)."""
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    diffuser = diffusion.load_diffuser(str(tiny["pipeline"]), "cpu", torch.float32, fast=True,
                                       fast_decoder_source=str(tiny["taesd"]))
    assert isinstance(diffuser.fast_decoder, AutoencoderTiny)
    assert any("TAESD" in note for note in diffuser.notes)
    reference = StableDiffusionPipeline(**{**diffuser.pipe.components, "vae": AutoencoderTiny.from_pretrained(
        tiny["taesd"])})
    reference.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(0)
    expected = pixels(reference(PROMPT, num_inference_steps=2, guidance_scale=0.0, height=SIZE, width=SIZE,
                                generator=generator).images)
    got = pixels(diffuser.decode(run(diffuser, "latent")))
    assert np.abs(got - expected).max() <= 1
    previews = diffuser.preview(run(diffuser, "latent"))
    assert [image.size for image in previews] == [(SIZE, SIZE)]


def test_previews_have_the_output_size(tiny, monkeypatch):
    latents = run(diffusion.load_diffuser(str(tiny["pipeline"]), "cpu", torch.float32, fast=False), "latent")
    # The tiny model's own VAE is small: it previews with it, and the preview is the final image.
    diffuser = diffusion.load_diffuser(str(tiny["pipeline"]), "cpu", torch.float32, fast=False)
    small = diffuser.preview(latents)
    assert [image.size for image in small] == [(SIZE, SIZE)]
    assert pixels(small).tolist() == pixels(diffuser.decode(latents, full=True)).tolist()
    # A big VAE and no TAESD: the linear latent->RGB map, upscaled to the output size.
    monkeypatch.setattr(diffusion, "SMALL_VAE_PARAMETERS", 0)
    linear = diffuser.preview(latents)
    assert [image.size for image in linear] == [(SIZE, SIZE)] and linear[0].mode == "RGB"
    assert pixels(linear).tolist() != pixels(small).tolist()
    # With TAESD: previews through it, except cheap ones (one after every step), which take the linear map.
    fast = diffusion.load_diffuser(str(tiny["pipeline"]), "cpu", torch.float32, fast=True,
                                   fast_decoder_source=str(tiny["taesd"]))
    assert pixels(fast.preview(latents)).tolist() == pixels(fast.decode(latents)).tolist()
    assert pixels(fast.preview(latents, cheap=True)).tolist() == pixels(linear).tolist()


def test_a_fast_decoder_that_cannot_load_leaves_a_note(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(diffusion, "SMALL_VAE_PARAMETERS", 0)  # as if the VAE were SD's: it wants TAESD
    diffuser = diffusion.load_diffuser(str(tiny["pipeline"]), "cpu", torch.float32, fast=True)  # hub offline
    assert diffuser.fast_decoder is None
    assert any(note.startswith("decoder: full VAE (TAESD madebyollin/taesd could not load") for note in diffuser.notes)
    images = diffuser.decode(run(diffuser, "latent"))
    assert [image.size for image in images] == [(SIZE, SIZE)]


def test_onnx_unet_and_text_encoder_give_the_pytorch_image_and_are_built_once(tiny, monkeypatch):
    plain = diffusion.load_diffuser(str(tiny["pipeline"]), "cpu", torch.float32, fast=False)
    monkeypatch.setattr(diffusion, "ONNX_MIN_PARAMETERS", 0)  # the tiny model is too small to gain otherwise
    fast = diffusion.load_diffuser(str(tiny["pipeline"]), "cpu", torch.float32, fast=True)
    assert isinstance(fast.pipe.unet, diffusion.OnnxUNet)
    assert isinstance(fast.pipe.text_encoder, diffusion.OnnxTextEncoder)
    assert "UNet: ONNX Runtime fp32" in fast.notes and "text encoder: ONNX Runtime fp32" in fast.notes
    for guidance in (0.0, 5.0):  # 5.0: classifier-free guidance runs the UNet on a batch of 2
        expected = run(plain, "latent", steps=3, guidance=guidance)
        got = run(fast, "latent", steps=3, guidance=guidance)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    store = read_settings().onnx_dir
    builds = sorted(path.name for path in store.iterdir() if not path.name.startswith("."))
    assert len(builds) == 2 and any("-unet-fp32-" in name for name in builds)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(diffusion, "export_part", lambda part: no_export)
    again = diffusion.load_diffuser(str(tiny["pipeline"]), "cpu", torch.float32, fast=True)
    assert isinstance(again.pipe.unet, diffusion.OnnxUNet)


def test_turbo_detection(tiny, tmp_path):
    assert diffusion.is_turbo("stabilityai/sd-turbo", {})
    assert diffusion.is_turbo("stabilityai/sdxl-turbo", {})
    assert not diffusion.is_turbo("stable-diffusion-v1-5/stable-diffusion-v1-5", {})
    assert not diffusion.is_turbo("segmind/tiny-sd", {})
    assert diffusion.is_turbo("local-model", {"turbo": True})
    assert not diffusion.is_turbo("my-turbo-model", {"turbo": False})  # the folder's own word wins
    assert not diffusion.load_diffuser(str(tiny["pipeline"]), "cpu", torch.float32, fast=False).turbo
    folder = tmp_path / "tiny-sd-turbo"
    make_tiny_pipeline(folder)
    assert diffusion.load_diffuser(str(folder), "cpu", torch.float32, fast=False).turbo


def test_refuses_pipelines_the_page_does_not_run(tmp_path):
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="FluxPipeline; the page runs StableDiffusionPipeline"):
        diffusion.load_diffuser(str(folder), "cpu", torch.float32)
    with pytest.raises(ValueError, match="no model_index.json"):
        diffusion.load_diffuser(str(tmp_path), "cpu", torch.float32)
