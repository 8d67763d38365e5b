"""Fast tests of the small CLIP's training (spaces/retrieval/train.py) and captions: seconds, tiny configs.

    .venv/bin/python -m pytest tests/retrieval/test_train.py

Each test was seen to fail with the code it guards broken (noted per test): the loss pairing images with
images, hard targets forced, recall's hit counted within k+1, class embeddings averaged without normalising, a
paraphrase put among the training wordings, a flag dropped from parse_args, the optimizer step removed, the
text cache taken from mean pooling, a fresh text projection saved, the stop check removed, the text tower
left frozen under --train-text.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from shared import fashion_captions as captions
from spaces.retrieval import train

# A ViT of one small layer over 14x14 patches, a few hundred images, steps rather than seconds.
TINY = dict(max_seconds=0.0, max_steps=6, batch_size=32, hidden_size=32, layers=1, heads=2, intermediate_size=64,
            projection_dim=16, patch_size=14, train_size=640, validation_size=100, test_size=100,
            eval_every_steps=3, learning_rate=3e-3, warmup=0.0)


def tiny_config(**overrides) -> train.TrainConfig:
    return train.TrainConfig(**{**TINY, **overrides})


def unit(rows) -> "torch.Tensor":  # noqa: F821
    import torch

    rows = torch.as_tensor(np.asarray(rows, dtype=np.float32))
    return rows / rows.norm(dim=-1, keepdim=True)


def test_aligned_embeddings_lose_less_than_shuffled():
    """Seen to fail with the text side of the logits replaced by the image side (loss ignores the pairing)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    images = unit(torch.randn(8, 16, generator=generator))
    texts = unit(images + 0.05 * torch.randn(8, 16, generator=generator))
    shuffled = texts[torch.roll(torch.arange(8), 1)]
    scale = torch.tensor(10.0)
    assert train.contrastive_loss(images, texts, scale) < train.contrastive_loss(images, shuffled, scale)


def test_soft_targets_treat_same_class_pairs_as_positives():
    """Swapping the captions of two images of one class changes nothing for the class-aware loss (either caption
    is a right answer), but costs the hard-target loss; swapping across classes costs both. Seen to fail with
    `labels` ignored (hard targets always)."""
    import torch

    generator = torch.Generator().manual_seed(1)
    images = unit(torch.randn(6, 8, generator=generator))
    texts = unit(images + 0.1 * torch.randn(6, 8, generator=generator))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    scale = torch.tensor(10.0)
    within = texts[[1, 0, 2, 3, 4, 5]]  # two shirts swap captions
    across = texts[[2, 1, 0, 3, 4, 5]]  # a shirt and a bag swap captions
    soft = train.contrastive_loss(images, texts, scale, labels)
    assert train.contrastive_loss(images, within, scale, labels).item() == pytest.approx(soft.item(), abs=1e-5)
    assert train.contrastive_loss(images, within, scale) > train.contrastive_loss(images, texts, scale) + 0.1
    assert train.contrastive_loss(images, across, scale, labels) > soft + 0.1


def test_recall_at_k_matches_brute_force():
    """Seen to fail with the hit counted within the top k+1."""
    rng = np.random.default_rng(0)
    images, queries = rng.normal(size=(40, 6)), rng.normal(size=(10, 6))
    image_labels, query_labels = rng.integers(0, 5, 40), np.arange(10) % 5
    got = train.recall_at_k(images, image_labels, queries, query_labels, ks=(1, 3, 7))
    for k in (1, 3, 7):
        text_hits = [any(image_labels[j] == query_labels[q] for j in sorted(range(40), key=lambda j: -queries[q] @ images[j])[:k])
                     for q in range(10)]
        image_hits = [any(query_labels[q] == image_labels[i] for q in sorted(range(10), key=lambda q: -queries[q] @ images[i])[:k])
                      for i in range(40)]
        assert got[f"text_to_image@{k}"] == pytest.approx(np.mean(text_hits))
        assert got[f"image_to_text@{k}"] == pytest.approx(np.mean(image_hits))


def test_zero_shot_accuracy_ensembles_unit_embeddings():
    """Class embedding = mean of unit embeddings: a long text vector must not outvote its class's others."""
    table = {"a": [10.0, 0.0], "b": [0.0, 1.0], "c": [0.0, 1.0], "d": [1.0, 0.0]}

    def embed_texts(texts):
        return np.array([table[t] for t in texts])

    classes = train.class_embeddings(embed_texts, [["a", "b", "c"], ["d"]])
    assert classes[0] == pytest.approx(np.array([1, 2]) / np.sqrt(5))
    assert train.zero_shot_accuracy(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([0, 1]), classes) == 1.0


def test_paraphrases_are_never_training_captions():
    training = {text.lower() for text, _ in captions.training_captions()}
    wordings = {w.lower() for words in captions.WORDINGS.values() for w in words}
    for name in captions.CLASS_NAMES:
        assert len(captions.PARAPHRASES[name]) >= 5
        for text in captions.PARAPHRASES[name]:
            assert text.lower() not in training and text.lower().removeprefix("a ").removeprefix("an ") not in wordings


def test_parse_args_round_trip():
    """Every field reachable from the command line. Seen to fail with --eval-every-steps dropped from parse_args."""
    config = tiny_config(soft_targets=False, train_text=True, lock_text_projection=False, text_pooling="pooler",
                         output_dir="runs/x", save_as="mine", seed=3)
    line = train.command_line(config)
    assert line.startswith("python -m spaces.retrieval.train")
    assert train.parse_args(line.split()[3:]) == config
    assert train.parse_args([]) == train.TrainConfig()
    with pytest.raises(ValueError, match="patch size"):
        train.parse_args(["--patch-size", "5"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny training run shared by the tests below (about 10 s on 2 cores)."""
    events = []
    config = tiny_config(output_dir=str(tmp_path_factory.mktemp("clip")))
    return train.train(config, on_event=events.append), events, config


def test_a_few_steps_lower_the_loss(tiny_run):
    """Seen to fail with `optimizer.step()` removed."""
    results, events, _ = tiny_run
    losses = results["history"]["loss"]
    assert results["steps"] == 6 and len(losses) == 6
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    kinds = [event["type"] for event in events]
    assert kinds[0] == "parameters" and kinds[-1] == "done" and {"step", "eval", "similarity", "test"} <= set(kinds)
    step = next(event for event in events if event["type"] == "step")
    assert set(step) >= {"step", "total_steps", "loss", "logit_scale", "elapsed"}
    matrix = next(event for event in events if event["type"] == "similarity")["matrix"]
    assert np.shape(matrix) == (10, 10)


def test_saved_folder_reproduces_training_text_embeddings(tiny_run):
    """The folder loads through shared.clip, and its text features give the embeddings training used (the
    locked projection of the cached mean-pooled outputs), and the run's test figures. Seen to fail with the cache
    taken from pooler_output while the saved config says mean, and with a fresh text projection written at
    saving."""
    import torch

    from shared.clip import grey_pixels, load_dual_encoder, normalise

    results, _, config = tiny_run
    model, processor = results["model"], results["processor"]
    folder = f"{config.output_dir}/model"
    encoder = load_dual_encoder(folder, "cpu", torch.float32)
    texts = [text for text, _ in captions.training_captions()]
    tokens = dict(processor.tokenizer(texts, padding=True, return_tensors="pt"))
    module = train.captioned_clip(model, tokens, train_text=False, lock_projection=True)  # training's cached path
    with torch.no_grad():
        trained = module.text_embeds(torch.arange(len(texts))).numpy()
    np.testing.assert_allclose(encoder.embed_texts(texts), trained, atol=2e-5)
    # The image side too: search embeds PIL images through pixel_values, training through grey_pixels.
    from PIL import Image

    images = (np.random.default_rng(0).random((3, 28, 28)) * 255).astype(np.uint8)
    through_pil = encoder.embed_images([Image.fromarray(image) for image in images])
    with torch.no_grad():
        direct = model.get_image_features(pixel_values=torch.from_numpy(grey_pixels(processor, images)))
    np.testing.assert_allclose(through_pil, normalise(direct.numpy()), atol=2e-5)
    # And the folder gives the figures the run measured before saving (on the same test images).
    data = train.load_fashion_mnist()
    images, labels = data["test_images"][:config.test_size], data["test_labels"][:config.test_size]
    reloaded = train.evaluate(encoder.embed_texts, train.embed_grey_images(encoder.model, encoder.processor, images),
                              labels)
    assert reloaded == pytest.approx(results["test"], abs=1e-6)
    written = json.loads((Path(config.output_dir) / "results.json").read_text())
    assert written["test"] == results["test"] and written["steps"] == 6


def test_stop_keeps_the_best_checkpoint(tmp_path):
    """Stop set after step 4 of 50: training ends there, and the model returned is the best validated one.
    Seen to fail with the stop check removed from the loop (50 steps ran)."""
    stop = threading.Event()
    states = {}

    def on_event(event):
        if event["type"] == "eval":
            states[event["step"]] = event["accuracy"]
        if event["type"] == "step" and event["step"] == 4:
            stop.set()

    config = tiny_config(max_steps=50, eval_every_steps=2, test_size=50, output_dir=str(tmp_path))
    results = train.train(config, on_event=on_event, stop=stop)
    assert results["stopped"] and results["steps"] == 4
    assert sorted(states) == [2, 4]
    assert results["best_validation_zero_shot"] == max(states.values())
    assert results["best_step"] == max(states, key=lambda step: (states[step], -step))
    assert (tmp_path / "model" / "config.json").exists() and (tmp_path / "results.json").exists()


def test_train_text_unfreezes_the_text_tower():
    """--train-text: MiniLM's weights train too. Seen to fail with
    `requires_grad_(train_text)` replaced by `requires_grad_(False)`."""
    import torch

    from shared import assets

    from transformers import AutoModel

    config = tiny_config(train_text=True, lock_text_projection=False, max_steps=2, eval_every_steps=2, test_size=20,
                         batch_size=8)
    original = AutoModel.from_pretrained(str(assets.ensure("all-minilm-l6-v2"))).encoder.layer[-1].output.dense.weight
    results = train.train(config)
    trained = results["model"].text_model.encoder.layer[-1].output.dense.weight
    assert results["trainable_parameters"] > 20_000_000
    assert not torch.equal(original, trained)


def test_the_locked_text_side_is_minilms_own_sentence_embedding(tiny_run):
    """LiT: the saved small CLIP embeds a text exactly as sentence-transformers' all-MiniLM-L6-v2 does (mean pooled,
    unit length), so unseen wordings keep MiniLM's geometry, and no text weight trained. Seen to fail with
    text_pooling "pooler" (BERT's CLS pooler) and with the identity projection left trainable."""
    import torch
    from sentence_transformers import SentenceTransformer

    from shared import assets
    from shared.clip import load_dual_encoder

    results, _, config = tiny_run
    encoder = load_dual_encoder(f"{config.output_dir}/model", "cpu", torch.float32)
    assert encoder.model.config.text_pooling == "mean"
    texts = ["cargo pants for hiking", "a photo of a sneaker.", "something to wear"]
    reference = SentenceTransformer(str(assets.ensure("all-minilm-l6-v2")), device="cpu").encode(
        texts, normalize_embeddings=True)
    np.testing.assert_allclose(encoder.embed_texts(texts), reference, atol=2e-5)
    assert torch.equal(results["model"].text_projection.weight, torch.eye(384))


def test_the_run_reports_the_three_figure_sets_and_the_word_overlap(tiny_run):
    results, events, _ = tiny_run
    test = next(event for event in events if event["type"] == "test")
    for name in train.WORDING_SETS:
        assert 0 <= test[f"zero_shot_{name}"] <= 1
    assert {"unseen_text_to_image@1", "zero_shot_single_unseen", "paraphrases_text_to_image@1"} <= set(test)
    assert 0 < results["test_word_overlap"] < 1
