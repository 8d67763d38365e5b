"""The Stable Diffusion page in the running app, through gradio_client: a tiny StableDiffusionPipeline of the real
classes (random weights, registered as a local model, loading through the same code a hub pipeline does)
generates with per-step previews, replays, restores its settings from its PNG, and stops; a short training of
each stage saves a pipeline that a restarted app offers and generates with."""

from __future__ import annotations

import shutil
import time

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from shared import assets, jobs, registry
from spaces.diffusion.train import DEFAULT_GUIDANCE

TINY = "tiny-random-sd-for-app"


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> str:
    from spaces.diffusion.tiny import random_pipeline

    folder = tmp_path_factory.mktemp("sd") / TINY
    random_pipeline(str(assets.ensure("all-minilm-l6-v2")), seed=0).save_pretrained(folder)
    saved = dict(registry._local_models)
    label = registry.register_local(TINY, folder, "diffusion")
    yield label
    registry._local_models.clear()
    registry._local_models.update(saved)


def value(output):
    """A component update's value (gradio_client returns updates as dicts)."""
    return output["value"] if isinstance(output, dict) else output


def form(model: str, **change) -> dict:
    values = dict(model=model, prompt="a photo of a sneaker", negative_prompt="", steps=6, guidance=4.0, seed=21,
                  width=32, height=32, scheduler="DDIM", batch=2, decoder="full VAE")
    return {**values, **change}


def test_load_sets_the_controls_for_the_model(client, tiny_sd):
    note, guidance, negative, steps, width, height, scheduler = client.predict(model=tiny_sd,
                                                                               api_name="/diffusion_load")
    assert f"**{tiny_sd}**" in note and "trained at 32×32" in note and "reads 16 tokens" in note
    assert [value(v) for v in (steps, width, height, scheduler)] == [25, 32, 32, "DDIM"]
    assert guidance["interactive"] is True and value(guidance) == DEFAULT_GUIDANCE
    assert "5 tokens of 16" in client.predict(model=tiny_sd, prompt="a sneaker", api_name="/diffusion_tokens")


def test_generate_streams_previews_then_pngs_that_restore_their_settings(client, tiny_sd):
    job = client.submit(**form(tiny_sd), api_name="/diffusion_generate")
    outputs = list(job)  # every streamed update
    assert len(outputs) >= 1 + 6 or job.status().code.name == "FINISHED"
    images, status, seed, replay_step, pngs, history, plot = outputs[-1]
    assert len(images) == 2 and "2 image(s) made in 6 of 6 steps" in status and "seed 21" in status
    assert seed == 21 and len(pngs) == 2 and len(history) == 2 and plot["type"] == "altair"
    # The replay shows the noisy latent and x̂₀ of any step.
    noisy, clean, note = client.predict(step=3, image=1, api_name="/diffusion_replay")
    assert noisy and clean and "Step 3 of 6" in note
    # The second PNG restores every setting, its own seed included.
    restored = client.predict(png=handle_file(pngs[1]), api_name="/diffusion_restore")
    model, prompt, negative, steps, guidance, seed, width, height, scheduler, note = restored
    assert (model, prompt, steps, guidance, seed, width, height, scheduler) == (
        tiny_sd, "a photo of a sneaker", 6, 4.0, 22, 32, 32, "DDIM")


@pytest.mark.parametrize("change, message", [
    (dict(prompt=""), "Write a prompt"),
    (dict(prompt="a photo of a sneaker " * 6), "the text encoder reads at most 16"),
    (dict(width=30), "width must be a multiple of 8"),
    (dict(width=2048, height=2048, batch=1), "more than this machine's memory allows"),
    (dict(steps=2.5), "steps must be a whole number from 1 to 100"),
    (dict(steps=0), "less than minimum value 1"),  # Gradio's own check of the slider's range
    (dict(model=""), "No Stable Diffusion model here yet"),
    (dict(model="local:not-a-model"), "not on the local allow-list"),
])
def test_bad_input_gets_a_clear_message(client, tiny_sd, change, message):
    with pytest.raises(AppError, match=message):
        client.predict(**{**form(tiny_sd), **change}, api_name="/diffusion_generate")


def test_a_png_without_settings_is_refused(client, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(AppError, match="carries no generation settings"):
        client.predict(png=handle_file(str(tmp_path / "plain.png")), api_name="/diffusion_restore")


def test_stop_interrupts_the_generation(own_client, tiny_sd):
    """A long run (100 steps, 4 images of 256x256) is stopped after its first preview: Stop answers once the
    pipeline has ended, well before its 100 steps."""
    client = own_client
    job = client.submit(**form(tiny_sd, steps=100, width=256, height=256, batch=4), api_name="/diffusion_generate")
    deadline = time.monotonic() + 120
    while not job.outputs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.outputs(), "no preview came"
    assert "Stopped" in client.predict(api_name="/diffusion_stop")
    assert jobs.active("diffusion-generate", key=client.session_hash) == 0
    assert len(job.outputs()) < 100
    assert client.predict(api_name="/diffusion_stop") == "Nothing is running."


def test_the_forward_process_and_its_schedules(client):
    noisy, strip, note, alpha, snr = client.predict(photo="astronaut", schedule="linear", timestep=500, seed=0,
                                                    api_name="/diffusion_forward")
    assert noisy and len(strip) == 6 and "t = 500" in note and alpha["type"] == snr["type"] == "altair"
    with pytest.raises(AppError, match="timestep must be a whole number"):
        client.predict(photo="astronaut", schedule="linear", timestep=10.5, seed=0, api_name="/diffusion_forward")
    with pytest.raises(AppError, match="nope is not in the list of choices"):  # Gradio checks the dropdown
        client.predict(photo="nope", schedule="linear", timestep=10, seed=0, api_name="/diffusion_forward")


def test_a_short_training_saves_a_pipeline_that_generates_here_and_after_a_restart(client):
    from gradio_client import Client

    from shared.launch import app_process
    from shared.registry import models_dir

    name = "tiny-sd-test"
    try:
        status, vae_loss, unet_loss, reconstructions, samples, model = client.predict(
            name=name, stages="both", vae_seconds=0, vae_steps=30, unet_seconds=0, unet_steps=30, train_size=500,
            api_name="/diffusion_train")
        assert "done" in status and f"local:{name}" in status
        assert vae_loss["type"] == unet_loss["type"] == "altair" and reconstructions and len(samples) == 3
        label = value(model)
        assert label == f"local:{name}"
        outputs = client.predict(**form(label, batch=1), api_name="/diffusion_generate")
        assert len(outputs[0]) == 1
        with app_process(["app.py", "--pages", "diffusion"]) as (_, url, _):
            restarted = Client(url, verbose=False)
            images, status, *_ = restarted.predict(**form(label, batch=1), api_name="/diffusion_generate")
            assert len(images) == 1 and "made in 6 of 6 steps" in status
    finally:
        shutil.rmtree(models_dir() / name, ignore_errors=True)


def test_the_vae_alone_trains_shows_reconstructions_and_saves_nothing(client):
    status, vae_loss, unet_loss, reconstructions, samples, model = client.predict(
        name="tiny-vae-test", stages="vae", vae_seconds=0, vae_steps=8, unet_seconds=0, unet_steps=0,
        train_size=100, api_name="/diffusion_train")
    assert "done" in status and "No pipeline saved" in status
    assert vae_loss["type"] == "altair" and unet_loss is None and reconstructions and not samples
    assert "local:tiny-vae-test" not in registry.choices("diffusion")
