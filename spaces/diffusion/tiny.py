"""The tiny Stable Diffusion: its architecture, its noise schedules, and its assembly into a real pipeline.

    from spaces.diffusion import tiny
    pipe = tiny.assemble(vae, unet, text_folder)          # a diffusers StableDiffusionPipeline
    pipe = tiny.random_pipeline(text_folder, seed=0)      # the same architecture, seeded random weights (tests)
    images = pipe("a photo of a sneaker.", num_inference_steps=25, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").images   # (1, 32, 32, 1)

Stable Diffusion's three parts at a scale two CPU cores train in ten minutes (spaces/diffusion/train.py):

- an `AutoencoderKL` for 1-channel 32x32 images (Fashion-MNIST's 28x28 padded with black), latents 4x8x8;
- a `UNet2DConditionModel` over those latents, with cross-attention on the 4x4 and 2x2 levels only (at the 8x8
  level it cost 1.7x per step in the reference run), attending to MiniLM's token states (384-d);
- the offline all-MiniLM-L6-v2 (a `BertModel`) as the frozen text encoder, at most TEXT_MAX_LENGTH tokens, with
  its attention mask: `config.use_attention_mask = True` is what makes diffusers' `encode_prompt` pass the mask,
  so the pipeline encodes prompts exactly as training did.

The pipeline is an ordinary `StableDiffusionPipeline`: `save_pretrained` writes it and
`StableDiffusionPipeline.from_pretrained(folder)` reloads it (model_index.json names BertModel and
BertTokenizerFast for the text parts). Its VAE outputs one channel, so `output_type="np"` gives (n, 32, 32, 1)
floats in [0, 1] and `output_type="pil"` gives mode "L" (grey) PIL images: the page shows grey images as they are.
"""

from __future__ import annotations

TEXT_MAX_LENGTH = 16  # tokens: the longest training caption is 15 with [CLS] and [SEP]
IMAGE_SIZE = 32  # Fashion-MNIST's 28x28, padded by 2 black pixels a side: three halvings give 4x4 at the bottom
LATENT_SIZE = 8  # the VAE halves twice (three blocks, the last one does not downsample): 32 -> 8
LATENT_CHANNELS = 4


def vae_config() -> dict:
    """AutoencoderKL: 1 -> 4x8x8 -> 1 (681k parameters). Wider blocks (32, 64, 64) were 2.2x slower per step."""
    return dict(
        in_channels=1, out_channels=1, latent_channels=LATENT_CHANNELS, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=16,
    )


def unet_config() -> dict:
    """UNet2DConditionModel over 4x8x8 latents (4.6M parameters), conditioned on MiniLM token states."""
    return dict(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=32,
        cross_attention_dim=384,  # MiniLM's hidden size: its last_hidden_state is the conditioning
        attention_head_dim=8,  # diffusers reads this as the number of heads: 8 heads of 8 and 16 channels
    )


# Stable Diffusion's schedule. The diffusers default (linear 1e-4 to 0.02) failed on these latents in the
# reference run: DDIM samples blew up (latent std 9.8) and 31% were recognised instead of 80%.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", clip_sample=False)  # latents are not in [-1, 1]: never clip them


def training_scheduler():
    """DDPMScheduler: adds noise at training time (1000 steps, scaled_linear 0.00085-0.012)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE)


def sampling_scheduler():
    """DDIMScheduler on the same betas, set as Stable Diffusion v1 sets it (steps_offset 1, no alpha forced to 1)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULE, set_alpha_to_one=False, steps_offset=1)


def load_text_encoder(text_folder: str):
    """MiniLM as the pipeline's text encoder and tokenizer: eval mode, attention mask on, TEXT_MAX_LENGTH tokens."""
    from transformers import AutoTokenizer, BertModel

    text_encoder = BertModel.from_pretrained(str(text_folder)).eval()  # pooler kept: unused, but reloads cleanly
    # encode_prompt passes the mask only when this is set; training encodes captions with their mask too.
    text_encoder.config.use_attention_mask = True
    tokenizer = AutoTokenizer.from_pretrained(str(text_folder), model_max_length=TEXT_MAX_LENGTH)
    return text_encoder, tokenizer


def create_vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**vae_config())


def create_unet(seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**unet_config())


def assemble(vae, unet, text_folder: str, text_parts: tuple | None = None):
    """A StableDiffusionPipeline from a trained VAE and UNet, MiniLM and the DDIM scheduler.

    The VAE's `config.scaling_factor` must already be 1/std of the training latents: the pipeline divides the
    UNet's latents by it before decoding. `text_parts` = (text_encoder, tokenizer) from `load_text_encoder`,
    to reuse a loaded MiniLM; by default it is loaded from `text_folder`.
    """
    from diffusers import StableDiffusionPipeline

    text_encoder, tokenizer = text_parts or load_text_encoder(text_folder)
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet.eval(),
        scheduler=sampling_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_pipeline(text_folder: str, seed: int = 0, scaling_factor: float = 1.0):
    """The same architecture with seeded random VAE and UNet weights: fast tests of the page's plumbing."""
    vae, unet = create_vae(seed), create_unet(seed + 1)
    vae.register_to_config(scaling_factor=scaling_factor)
    return assemble(vae, unet, text_folder)


def pad_images(images) -> "torch.Tensor":  # noqa: F821
    """uint8 (n, 28, 28) -> float (n, 1, 32, 32) in [-1, 1], padded with black (-1) as Fashion-MNIST's border is."""
    import torch
    import torch.nn.functional as F

    pixels = torch.as_tensor(images).float().div(127.5).sub(1.0).unsqueeze(1)
    margin = (IMAGE_SIZE - pixels.shape[-1]) // 2
    return F.pad(pixels, (margin, margin, margin, margin), value=-1.0)


def to_uint8(pixels) -> "np.ndarray":  # noqa: F821
    """float (n, 1, H, W) in [-1, 1] -> uint8 (n, H, W): what events carry and grids show."""
    import numpy as np

    array = pixels.detach().float().cpu().numpy()[:, 0]
    return np.clip((array + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
