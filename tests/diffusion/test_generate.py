"""Generation on a tiny StableDiffusionPipeline of the real classes (random weights: no SD weights ship offline):
seeds reproduce to the byte, each step streams a preview and is recorded for the replay, every sampler runs,
Stop interrupts the pipeline itself, and a PNG's settings make the same image again."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from PIL import Image

from shared import assets
from spaces.diffusion.generate import GENERATE_JOB, replay_frames, stream_images
from spaces.diffusion.settings import SCHEDULER_NAMES, Settings, read_png_settings


@pytest.fixture(scope="module")
def diffuser(tmp_path_factory):
    import torch

    from shared.diffusion import load_diffuser
    from spaces.diffusion.tiny import random_pipeline

    folder = tmp_path_factory.mktemp("sd") / "tiny-random-sd"
    random_pipeline(str(assets.ensure("all-minilm-l6-v2")), seed=0).save_pretrained(folder)
    return load_diffuser(str(folder), "cpu", torch.float32)


SETTINGS = Settings(model="local:tiny-random-sd", prompt="a photo of a sneaker", steps=5, guidance=4.0, seed=11,
                    width=32, height=32, scheduler="DDIM", batch=1)


def run(diffuser, settings, out_dir, stop=None, after=None):
    """Run a generation to its end; returns (updates, generation). `after(update)` sees each step's update."""
    updates = []
    for update in stream_images(diffuser, settings, stop=stop, out_dir=out_dir):
        updates.append(update)
        if after and update.generation is None:
            after(update)
    return updates, updates[-1].generation


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def test_each_step_streams_a_preview_and_is_recorded(diffuser, tmp_path):
    updates, generation = run(diffuser, SETTINGS, tmp_path)
    steps = [u for u in updates if u.generation is None]
    assert [u.step for u in steps] == [1, 2, 3, 4, 5] and all(len(u.preview) == 1 for u in steps)
    assert steps[0].preview[0].size == (32, 32)
    assert len(generation.steps) == 5 and not generation.interrupted
    timesteps = [r.timestep for r in generation.steps]
    assert timesteps == sorted(timesteps, reverse=True)  # from noisy to clean
    for record in generation.steps:
        assert record.noisy.shape == record.predicted.shape == (1, 4, 8, 8)
        assert np.isfinite(record.predicted).all()
    # The first step starts from the seeded Gaussian noise: unit spread.
    assert 0.7 < generation.steps[0].noisy.std() < 1.3
    noisy, clean = replay_frames(diffuser, generation, step=3)
    assert noisy.size == clean.size == (32, 32)
    with pytest.raises(ValueError, match="step must be from 1 to 5"):
        replay_frames(diffuser, generation, step=6)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(diffuser, tmp_path):
    first = run(diffuser, SETTINGS, tmp_path / "a")[1]
    again = run(diffuser, SETTINGS, tmp_path / "b")[1]
    other = run(diffuser, dataclasses.replace(SETTINGS, seed=12), tmp_path / "c")[1]
    assert np.array_equal(pixels(first.paths[0]), pixels(again.paths[0]))
    assert not np.array_equal(pixels(first.paths[0]), pixels(other.paths[0]))


def test_image_i_of_a_batch_is_the_image_of_seed_plus_i(diffuser, tmp_path):
    batch = run(diffuser, dataclasses.replace(SETTINGS, batch=3), tmp_path / "batch")[1]
    alone = run(diffuser, dataclasses.replace(SETTINGS, seed=SETTINGS.seed + 2), tmp_path / "alone")[1]
    assert len(batch.paths) == 3 and read_png_settings(batch.paths[2]).seed == SETTINGS.seed + 2
    difference = np.abs(pixels(batch.paths[2]).astype(int) - pixels(alone.paths[0]))
    assert difference.max() <= 2  # batched convolutions may round differently in the last bit


def test_a_png_carries_what_makes_it_again(diffuser, tmp_path):
    made = run(diffuser, dataclasses.replace(SETTINGS, seed=-1, negative_prompt="a bag"), tmp_path / "a")[1]
    restored = read_png_settings(made.paths[0])
    assert restored == made.settings and restored.seed != -1
    remade = run(diffuser, restored, tmp_path / "b")[1]
    assert np.array_equal(pixels(made.paths[0]), pixels(remade.paths[0]))


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_sampler_runs_and_predicts_clean_latents(diffuser, tmp_path, scheduler):
    generation = run(diffuser, dataclasses.replace(SETTINGS, scheduler=scheduler, steps=4), tmp_path)[1]
    assert len(generation.steps) == 4 and len(generation.images) == 1
    # x_t is shown on the variance-preserving scale whatever the sampler (Euler's own is σ·ε with σ up to ~15).
    assert 0.7 < generation.steps[0].noisy.std() < 1.3


def test_stop_interrupts_the_pipeline_at_the_next_step(diffuser, tmp_path):
    stop = threading.Event()

    def stop_after_two(update):
        if update.step == 2:
            stop.set()

    updates, generation = run(diffuser, dataclasses.replace(SETTINGS, steps=50), tmp_path, stop=stop,
                              after=stop_after_two)
    assert generation.interrupted and len(generation.steps) <= 3
    assert len(generation.images) == 1 and generation.paths  # the last x̂₀, saved like any image
    assert "stopped after" in generation.summary()


def test_a_stopped_job_leaves_nothing_running(diffuser, tmp_path):
    from shared import jobs

    stream = stream_images(diffuser, dataclasses.replace(SETTINGS, steps=50), key="test-close", out_dir=tmp_path)
    next(stream)
    stream.close()  # what a cancelled event does
    assert jobs.active(GENERATE_JOB, key="test-close") == 0


def test_overlong_prompt_is_refused_with_the_token_limit(diffuser, tmp_path):
    with pytest.raises(ValueError, match="the text encoder reads at most 16"):
        run(diffuser, dataclasses.replace(SETTINGS, prompt="a very long prompt " * 8), tmp_path)


def test_a_turbo_pipeline_of_the_real_classes_runs_the_hub_models_path(tmp_path):
    """What sd-turbo gets from the hub, on tiny random weights of the same classes: CLIPTextModel and CLIPTokenizer
    (77 tokens), Euler with trailing timesteps, TAESD (AutoencoderTiny) for previews and the final decode, and no
    guidance whatever the visitor asks (a turbo model)."""
    import torch

    from shared.diffusion import load_diffuser
    from tests.shared.test_diffusion import make_tiny_pipeline, make_tiny_taesd

    folder = make_tiny_pipeline(tmp_path / "tiny-sd-turbo")
    diffuser = load_diffuser(str(folder), "cpu", torch.float32,
                             fast_decoder_source=str(make_tiny_taesd(tmp_path / "taesd")))
    assert diffuser.turbo and diffuser.fast_decoder is not None
    settings = Settings(model="stabilityai/sd-turbo", prompt="a cat", steps=2, guidance=7.0, seed=3, width=32,
                        height=32, scheduler="Euler", batch=2)
    updates, generation = run(diffuser, settings, tmp_path / "out")
    assert generation.settings.guidance == 0.0 and generation.decoder == "TAESD (fast)"
    assert len(updates) == 3 and len(generation.images) == 2 and generation.images[0].size == (32, 32)
    assert read_png_settings(generation.paths[1]) == dataclasses.replace(settings, guidance=0.0, seed=4, batch=1)
    # The visitor may ask for the full VAE instead.
    last = list(stream_images(diffuser, settings, out_dir=tmp_path / "full-vae", full_decoder=True))[-1]
    assert last.generation.decoder == "the full VAE"


def test_running_out_of_memory_is_a_message_and_the_next_run_works(diffuser, tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes.")

    with monkeypatch.context() as patch:
        patch.setattr(diffuser.pipe.unet, "forward", no_memory)
        with pytest.raises(ValueError, match="ran out of memory at 32x32 x 1: lower the size or the batch"):
            run(diffuser, SETTINGS, tmp_path / "a")
    assert len(run(diffuser, SETTINGS, tmp_path / "b")[1].images) == 1
