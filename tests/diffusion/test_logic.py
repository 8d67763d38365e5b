"""The Stable Diffusion page's logic without a server: noise schedules against their formulas and diffusers,
the forward process, settings checks, and settings round-tripping through a PNG."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from PIL import Image

from spaces.diffusion import forward
from spaces.diffusion.settings import (MAX_PIXELS_PER_CALL, Limits, Settings, check_settings, parameters_text,
                                       parse_parameters, read_png_settings, write_png)

LIMITS = Limits(max_tokens=16, turbo=False, native_size=32)
TURBO = Limits(max_tokens=77, turbo=True, native_size=512)


def words(text: str) -> int:  # a stand-in token counter: start + end + one per word
    return 2 + len(text.split())


# ---- schedules and the forward process -------------------------------------------------------------------


@pytest.mark.parametrize("schedule", list(forward.SCHEDULES))
def test_schedules_match_diffusers(schedule):
    from diffusers import DDPMScheduler

    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=forward.SCHEDULES[schedule],
                           beta_start=1e-4 if schedule == "linear" else 0.00085,
                           beta_end=0.02 if schedule == "linear" else 0.012)
    np.testing.assert_allclose(forward.alphas_cumprod(schedule), theirs.alphas_cumprod.double().numpy(), rtol=1e-4)  # theirs: float32


def test_cosine_schedule_follows_its_closed_form():
    alpha_bar = forward.alphas_cumprod("cosine")
    s = 0.008

    def f(t):
        return math.cos((t / 1000 + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 10, 250, 500, 900):  # ᾱ_t = f(t+1)/f(0) while no β is clipped
        assert alpha_bar[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_schedules_lose_signal_monotonically_and_at_different_speeds():
    for schedule in forward.SCHEDULES:
        alpha_bar = forward.alphas_cumprod(schedule)
        assert np.all(np.diff(alpha_bar) < 0) and 0 < alpha_bar[-1] < 0.01
    # The cosine schedule keeps more of the image in the middle of the process than DDPM's linear one.
    assert forward.alphas_cumprod("cosine")[300] > forward.alphas_cumprod("linear")[300]
    assert forward.half_signal_step("linear") < forward.half_signal_step("cosine")


def test_add_noise_is_the_closed_form_and_seeded():
    image = np.random.default_rng(1).uniform(-1, 1, (8, 8, 3))
    noisy, noise = forward.add_noise(image, 400, "scaled_linear", seed=3)
    alpha_bar = forward.alphas_cumprod("scaled_linear")[400]
    np.testing.assert_allclose(noisy, math.sqrt(alpha_bar) * image + math.sqrt(1 - alpha_bar) * noise)
    np.testing.assert_array_equal(noisy, forward.add_noise(image, 400, "scaled_linear", seed=3)[0])
    assert not np.array_equal(noisy, forward.add_noise(image, 400, "scaled_linear", seed=4)[0])
    # Near the end only noise is left: unit variance, no trace of the image.
    late, late_noise = forward.add_noise(np.ones((64, 64)), 999, "linear", seed=0)
    assert abs(late.std() - 1) < 0.05 and np.corrcoef(late.ravel(), late_noise.ravel())[0, 1] > 0.99


def test_noise_strip_starts_near_the_photo_and_ends_in_noise():
    photo = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    first, last = forward.noise_strip(photo, "cosine", [0, 999])
    assert np.abs(first.astype(int) - photo).mean() < 3
    assert np.abs(last.astype(int) - photo).mean() > 40


@pytest.mark.parametrize("bad", [-1, 1000, 2.5, None])
def test_timestep_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="timestep must be a whole number from 0 to 999"):
        forward.add_noise(np.zeros((2, 2)), bad, "linear")


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule must be one of"):
        forward.betas("quadratic")


# ---- settings -------------------------------------------------------------------------------------------------

GOOD = Settings(model="local:tiny", prompt="a photo of a sneaker", steps=25, guidance=4.0, seed=7, width=32,
                height=32, scheduler="DDIM", batch=2)


def test_good_settings_pass_and_a_random_seed_is_drawn_and_shown():
    assert check_settings(GOOD, LIMITS, words) == GOOD
    drawn = check_settings(dataclasses.replace(GOOD, seed=-1), LIMITS, words)
    assert 0 <= drawn.seed < 2**32 and drawn.seed != -1


def test_turbo_model_runs_without_guidance():
    assert check_settings(GOOD, TURBO, words).guidance == 0.0


@pytest.mark.parametrize("change, message", [
    ({"prompt": "   "}, "Write a prompt"),
    ({"prompt": "word " * 20}, "22 tokens long, and the text encoder reads at most 16"),
    ({"negative_prompt": "blurry " * 30}, "negative prompt is 32 tokens long"),
    ({"prompt": "x" * 3000}, "3,000 characters; the limit is 2,000"),
    ({"width": 30}, "width must be a multiple of 8 .* try 24 or 32"),
    ({"height": 0}, "height must be a whole number from 8 to 2048"),
    ({"width": 1024, "height": 1024, "batch": 2}, "more than this machine's memory allows"),
    ({"steps": 0}, "steps must be a whole number from 1 to 100"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"batch": 9}, "batch size must be a whole number from 1 to 8"),
    ({"guidance": -1.0}, "guidance scale must be from 0 to 30"),
    ({"scheduler": "LMS"}, "scheduler must be one of"),
    ({"seed": 2**40}, "seed must be a whole number"),
])
def test_bad_settings_are_refused_with_the_rule(change, message):
    with pytest.raises(ValueError, match=message):
        check_settings(dataclasses.replace(GOOD, **change), LIMITS, words)


def test_the_memory_rule_allows_four_images_of_512():
    check_settings(dataclasses.replace(GOOD, width=512, height=512, batch=4, prompt="a cat"), TURBO, words)
    assert 4 * 512 * 512 == MAX_PIXELS_PER_CALL


def test_each_image_of_a_batch_has_its_own_seed():
    assert GOOD.for_image(1) == dataclasses.replace(GOOD, seed=8, batch=1)


# ---- settings in a PNG ----------------------------------------------------------------------------------------


def test_png_round_trip_keeps_every_setting(tmp_path):
    settings = dataclasses.replace(GOOD, negative_prompt="blurry, low quality", prompt="a cat, in the rain\nat night")
    path = write_png(Image.new("RGB", (32, 32), "grey"), settings, tmp_path / "cat.png")
    assert read_png_settings(path) == settings
    with Image.open(path) as image:
        assert image.text["parameters"].startswith("a cat, in the rain\nat night\nNegative prompt: blurry")


def test_automatic1111_parameters_are_read(tmp_path):
    text = ("a castle on a hill, oil painting\nNegative prompt: people\nSteps: 30, Sampler: DPM++ 2M, "
            "CFG scale: 6.5, Seed: 1234, Size: 512x768, Model hash: abc123, Model: v1-5-pruned")
    settings = parse_parameters(text)
    assert (settings.prompt, settings.negative_prompt, settings.steps, settings.scheduler, settings.guidance,
            settings.seed, settings.width, settings.height, settings.model) == (
        "a castle on a hill, oil painting", "people", 30, "DPM-Solver++", 6.5, 1234, 512, 768, "v1-5-pruned")
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    assert read_png_settings(tmp_path / "a1111.png") == settings
    assert parse_parameters(parameters_text(GOOD)) == dataclasses.replace(GOOD, batch=1)


def test_files_without_settings_are_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="carries no generation settings"):
        read_png_settings(tmp_path / "plain.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    with pytest.raises(ValueError, match="is a JPEG, not a PNG"):
        read_png_settings(tmp_path / "photo.jpg")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="is not an image"):
        read_png_settings(tmp_path / "notes.png")
