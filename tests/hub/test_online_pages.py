"""Each page on its hub path, against the tests' hub server: the app runs online (tests/hub/conftest.py) with a fresh
PLAYGROUND_HOME and an empty HF cache, and every model and data set below comes from the hub under its hub id.

- prompting: a typed hub id loads (PyTorch), and the ONNX Runtime backend builds from the repository's
  snapshot_download folder in the app's HF cache, keyed on it, stored under PLAYGROUND_HOME/onnx;
- fine-tuning: the hub encoder trains on a hub data set (parquet splits, a ClassLabel column);
- retrieval, diffusion, quantization: their hub defaults (CLIP, sd-turbo, the SST-2 DistilBERT) load and run.

Everything is tiny (the hub's repositories are tiny random models, except MiniLM) and no assertion is about time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from gradio_client import handle_file

from tests.hub import repos
from tests.hub.online import hf_cache, snapshot_files

# ---- prompting -------------------------------------------------------------------------------------------------


def generate_inputs(model: str, backend: str) -> dict:
    """/prompting_generate's inputs by name: the sentiment preset, greedy, a few tokens."""
    from spaces.prompting import prompts

    preset = prompts.PRESETS["sentiment"]
    return dict(model=model, backend=backend, instruction=preset["instruction"],
                examples={"headers": prompts.EXAMPLE_COLUMNS, "data": preset["examples"]}, shots=2,
                query=preset["query"], mode="greedy", temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=4,
                repetition_penalty=1.0, seed=0)


def new_tokens(stats: str) -> int:
    found = re.search(r"(\d+) new tokens after a (\d+)-token prompt", stats)
    assert found, stats
    return int(found.group(1))


def test_a_typed_hub_id_loads_from_the_hub(online_client, online_home):
    status, *_ = online_client.predict("chat-lm", repos.TINY_LLAMA, api_name="/home_load")
    assert status.startswith(f"{repos.TINY_LLAMA} (hub) is loaded"), status
    files = snapshot_files(online_home, repos.TINY_LLAMA)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files), sorted(files)

    prompt, info, text, stats, seed, python_recipe, client_recipe = online_client.predict(
        **generate_inputs(repos.TINY_LLAMA, "pytorch"), api_name="/prompting_generate")
    # SmolLM2's chat template, read from the hub repository's tokenizer files.
    assert prompt.startswith("<|im_start|>system\n") and "chat template applied" in info
    assert "Ran on PyTorch" in stats and 1 <= new_tokens(stats) <= 4
    assert f"model_id = {repos.TINY_LLAMA!r}" in python_recipe
    assert f"model={repos.TINY_LLAMA!r}" in client_recipe


def test_the_onnx_backend_builds_from_the_hub_snapshot(online_client, online_home):
    from shared.onnx_lm import INFO_FILE, MODEL_FILE, fingerprint

    prompt, info, text, stats, *_ = online_client.predict(**generate_inputs(repos.TINY_LLAMA, "onnx-int8"),
                                                          api_name="/prompting_generate")
    assert "Ran on ONNX Runtime, int8 weights" in stats and 1 <= new_tokens(stats) <= 4
    assert "chat template applied" in info
    # The repository's files, downloaded into the app's HF cache (snapshot_download), one snapshot.
    files = snapshot_files(online_home, repos.TINY_LLAMA)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files), sorted(files)
    snapshots = {path.parent for name, path in files.items() if "/" not in name}
    assert len(snapshots) == 1, snapshots
    snapshot = snapshots.pop()
    # The build: under PLAYGROUND_HOME/onnx, named after the hub id, keyed on that snapshot folder.
    store = online_home / "playground" / "onnx"
    builds = [b for b in store.glob(f"{repos.TINY_LLAMA.replace('/', '--')}*-int8-*")
              if (b / INFO_FILE).is_file()] if store.is_dir() else []
    assert len(builds) == 1, sorted(p.name for p in store.iterdir()) if store.is_dir() else "no onnx folder"
    build = builds[0]
    assert (build / MODEL_FILE).is_file()
    assert build.name.endswith(f"-int8-{fingerprint(snapshot, 'int8')}")
    converted_from = Path(json.loads((build / INFO_FILE).read_text())["config"]["_name_or_path"])
    assert converted_from.resolve() == snapshot.resolve()
    assert hf_cache(online_home).resolve() in converted_from.resolve().parents


# ---- fine-tuning ----------------------------------------------------------------------------------------------


def test_fine_tuning_trains_the_hub_encoder_on_a_hub_data_set(online_client, online_home):
    outputs = online_client.predict(
        model=repos.MINILM, data_source="hub data set", upload=None, hub_name=repos.MOVIES, method="full",
        freeze_layers=0, lora_r=8, lora_alpha=16, lora_dropout=0.1, lora_targets=["query", "value"],
        learning_rate=1e-4, epochs=1.0, max_steps=2, batch_size=8, max_length=32, seed=0, bf16=False,
        train_size=16, validation_size=8, test_size=16, other_domain_size=0, api_name="/finetune_train")
    progress, _, _, table, _, run_choice = outputs  # the session's run list (a gr.State) is not returned
    run_id = run_choice["value"]
    assert [value for _, value in run_choice["choices"]] == [run_id]
    assert f"**{run_id}** — done: step 2 of 2" in progress, progress
    row = dict(zip(table["headers"], table["data"][-1]))
    assert row["run"] == run_id and row["status"] == "done" and row["steps"] == 2
    assert 0 <= row[f"test {repos.MOVIES}"] <= 1  # the test split of the hub data set, by its name
    assert 0 <= row["best val acc"] <= 1
    # The data set and the encoder came from the hub, into the app's HF cache.
    data = snapshot_files(online_home, repos.MOVIES, "datasets")
    assert {f"data/{split}-00000-of-00001.parquet" for split in ("train", "validation", "test")} <= set(data)
    assert "config.json" in snapshot_files(online_home, repos.MINILM)
    # The classifier's labels are the data set's ClassLabel names.
    probabilities = online_client.predict(run_id, "A gorgeous, witty, seductive movie.",
                                          api_name="/finetune_classify")
    assert {c["label"] for c in probabilities["confidences"]} == {"negative", "positive"}


# ---- retrieval ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "query.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_retrieval_embeds_searches_and_labels_with_the_hub_clip(online_client, online_home, photo):
    def embed(image_tower: str):
        return online_client.predict(model=repos.CLIP, gallery="sample photos", uploads=None, fashion_size=100,
                                     index_kind="exact (flat inner product)", image_tower=image_tower,
                                     api_name="/retrieval_embed")

    status, preview = embed("PyTorch")
    assert f"images** of sample photos with {repos.CLIP}: " in status and preview
    assert "config.json" in snapshot_files(online_home, repos.CLIP)
    results = online_client.predict(query="an astronaut", k=3, api_name="/retrieval_search_text")
    scores = [float(item["caption"].split(" · ")[0]) for item in results]
    assert len(results) == 3 and scores == sorted(scores, reverse=True)
    best, rows = online_client.predict(model=repos.CLIP, image=handle_file(photo), labels="cat, dog, rocket",
                                       template="a photo of a {}", api_name="/retrieval_zero_shot")
    assert {c["label"] for c in best["confidences"]} == {"cat", "dog", "rocket"}
    assert sum(row[2] for row in rows["data"]) == pytest.approx(1, abs=0.01)
    # The image tower on ONNX Runtime: the gallery's vectors are reused, so nothing is embedded again...
    status, _ = embed("ONNX Runtime")
    assert "(image tower on ONNX Runtime)" in status and " 0 embedded now" in status
    # The query image goes through that tower: exported once (on first use) from the hub snapshot.
    similar = online_client.predict(image=handle_file(photo), k=2, api_name="/retrieval_search_image")
    assert len(similar) == 2
    exports = list((online_home / "playground" / "onnx").glob(f"{repos.CLIP.replace('/', '--')}-image-tower-*"))
    assert len(exports) == 1 and any(exports[0].glob("*.onnx")), exports


# ---- diffusion ------------------------------------------------------------------------------------------------


def test_diffusion_loads_sd_turbo_from_the_hub_and_generates_in_one_step(online_client, online_home):
    note, guidance, negative, steps, width, height, scheduler = online_client.predict(
        model=repos.DIFFUSION, api_name="/diffusion_load")
    assert f"**{repos.DIFFUSION}**" in note and "distilled for 1-4 steps" in note, note
    assert guidance["interactive"] is False and guidance["value"] == 0.0 and steps["value"] == 4
    assert "model_index.json" in snapshot_files(online_home, repos.DIFFUSION)
    # One step, as sd-turbo is meant to run; the tiny random pipeline's native size.
    images, status, seed, replay_step, pngs, history, plot = online_client.predict(
        model=repos.DIFFUSION, prompt="a photo of a sneaker", negative_prompt="", steps=1, guidance=0.0, seed=3,
        width=width["value"], height=height["value"], scheduler=scheduler["value"], batch=1, decoder="full VAE",
        api_name="/diffusion_generate")
    assert "1 image(s) made in 1 of 1 steps" in status and "seed 3" in status, status
    assert len(images) == 1 and len(pngs) == 1 and seed == 3 and Path(pngs[0]).suffix == ".png"
    assert replay_step["value"] == 1 and replay_step["interactive"] is False  # one step: nothing to scrub


# ---- quantization ---------------------------------------------------------------------------------------------


def test_quantization_measures_the_hub_classifier(online_client, online_home):
    """The classifier is measured on the movie sentences: a fresh home has no vaderSentiment sdist, so the app
    fetches it with pip (shared/assets.py locate_vader_sdist), as on a Space."""
    status, table, scatter, bars, _ = online_client.predict(
        family_label="Sentence classifier", model=repos.CLASSIFIER, variants=["pytorch-fp32"], test_size=10,
        other_domain_size=4, repeats=3, text_tokens=32, new_tokens=4, prompt="What is the capital of France?",
        fresh=True, api_name="/quantization_compare")
    rows = {row[0]: dict(zip(table["headers"], row)) for row in table["data"]}
    assert list(rows) == ["PyTorch fp32"], status
    fp32 = rows["PyTorch fp32"]
    assert fp32["status"] == "measured", fp32.get("notes")
    assert fp32["speed × fp32"] == 1.0 and 0 <= fp32["accuracy"] <= 1 and fp32["agreement"] == 1.0
    assert status.startswith(f"**{repos.CLASSIFIER}**: 1 of 1 variants (1 measured)"), status
    assert scatter is not None and bars is not None
    assert "config.json" in snapshot_files(online_home, repos.CLASSIFIER)
