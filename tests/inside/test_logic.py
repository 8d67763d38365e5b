"""The Inside page's positions, embeddings and attention on the real offline MiniLM and SmolLM2 (loaded once per
test session through the cache), and on a tiny CLIP and the retrieval page's untrained small ViT for images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spaces.inside import attention, plots, position

SENTENCE = "The animal didn't cross the street because it was too tired."


# ---- positions -----------------------------------------------------------------------------------------------

def test_the_sinusoidal_encoding_is_the_papers_formula():
    encoding = position.sinusoidal(50, 16)
    for p in (0, 1, 17, 49):
        for i in range(8):
            angle = p / 10000 ** (2 * i / 16)
            assert encoding[p, 2 * i] == pytest.approx(math.sin(angle), abs=1e-12)
            assert encoding[p, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-12)


def test_a_fixed_offset_is_the_same_rotation_at_every_position():
    """PE(p + k) = R(k) PE(p) for each (sin, cos) pair: why the paper chose sinusoids."""
    encoding = position.sinusoidal(60, 8)
    k = 5
    for i in range(4):
        w = 1 / 10000 ** (2 * i / 8)
        rotation = np.array([[math.cos(k * w), math.sin(k * w)], [-math.sin(k * w), math.cos(k * w)]])
        for p in (0, 10, 40):
            pair = encoding[p, 2 * i:2 * i + 2]
            assert np.allclose(rotation @ pair, encoding[p + k, 2 * i:2 * i + 2], atol=1e-12)


@pytest.mark.parametrize("positions, dims, message", [(0, 16, "positions must be between"),
                                                      (10, 15, "dimensions must be even"),
                                                      (10, 10**6, "dimensions must be between"),
                                                      (2.5, 16, "whole number")])
def test_the_sinusoidal_encoding_refuses_odd_sizes(positions, dims, message):
    with pytest.raises(ValueError, match=message):
        position.sinusoidal(positions, dims)


@pytest.mark.parametrize("text, message", [("", "at least one dimension"), ("1, x", "'x' is not one"),
                                           ("0, 200", "between 0 and 127"), (",".join("012345678"), "at most 8")])
def test_curve_dimensions_are_checked(text, message):
    with pytest.raises(ValueError, match=message):
        position.parse_dimensions(text, 128)


def test_learned_positions_are_minilms_own_table(encoder):
    similarity = position.learned_similarity(encoder, 32)
    table = encoder.model.embeddings.position_embeddings.weight.detach().numpy()
    a, b = table[3], table[20]
    assert similarity[3, 20] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-6)
    assert np.allclose(np.diagonal(similarity), 1, atol=1e-6)
    # What training found: neighbours more alike than far positions.
    assert np.mean(np.diagonal(similarity, offset=1)) > np.mean(np.diagonal(similarity, offset=30))


def test_a_model_without_learned_positions_says_so(decoder):
    with pytest.raises(ValueError, match="no learned absolute position embeddings"):
        position.learned_similarity(decoder, 16)


def test_rope_rotation_is_transformers_own(decoder):
    """position.rotate gives what SmolLM2's rotary embedding and apply_rotary_pos_emb give."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    head_dim, theta = position.rope_parameters(decoder.model.config)
    frequencies = position.rope_frequencies(head_dim, theta)
    rng = np.random.default_rng(1)
    q = rng.standard_normal(head_dim)
    positions = torch.tensor([[0, 3, 250]])
    x = torch.zeros(1, 1, 3, head_dim)
    cos, sin = decoder.model.model.rotary_emb(x, positions)
    qs = torch.tensor(np.tile(q, (1, 1, 3, 1)), dtype=torch.float32)
    rotated, _ = apply_rotary_pos_emb(qs, qs, cos, sin)
    for i, p in enumerate((0, 3, 250)):
        assert np.allclose(position.rotate(q, p, frequencies), rotated[0, 0, i].numpy(), atol=1e-4)


def test_rope_scores_depend_on_the_distance_only(decoder):
    view = position.rope_scores(decoder, SENTENCE, layer=2, max_distance=256)
    assert view.shift_difference < 1e-9
    assert view.head_dim == 64 and view.theta == decoder.model.config.rope_theta
    assert len(view.scores) == 3 and all(len(s) == len(view.distances) for s in view.scores.values())
    ones = view.scores["q = k (all ones)"]
    assert ones[0] == pytest.approx(view.head_dim / math.sqrt(view.head_dim))  # no rotation at distance 0
    assert ones[0] > ones[len(ones) // 2]  # and it decays


def test_token_similarity_in_context_differs_from_the_table(encoder):
    text = "bank river bank money"
    table = position.token_similarity(encoder, text, "input")
    context = position.token_similarity(encoder, text, "last")
    assert table.tokens == context.tokens == ["0 bank", "1 river", "2 bank", "3 money"]  # specials left out
    assert table.similarity[0, 2] == pytest.approx(1.0, abs=1e-6)  # one table row for both "bank"s
    assert context.similarity[0, 2] < 0.999  # their outputs differ with the context
    assert table.points.shape == (4, 2) and 0 < sum(table.explained) <= 1 + 1e-9


@pytest.mark.parametrize("text, layer, message", [("", "input", "empty"), ("hello", "middle", "layer must be one of"),
                                                  ("hi", "input", "at least two tokens")])
def test_token_similarity_refuses(encoder, text, layer, message):
    with pytest.raises(ValueError, match=message):
        position.token_similarity(encoder, text, layer)


# ---- attention -----------------------------------------------------------------------------------------------

def test_encoder_attention_is_bidirectional_and_rows_sum_to_one(encoder):
    maps = attention.text_attention(encoder, SENTENCE)
    assert maps.tokens[0] == "[CLS]" and maps.tokens[-1] == "[SEP]"
    assert maps.weights.shape == (6, 12, len(maps.tokens), len(maps.tokens)) and not maps.causal
    assert np.allclose(maps.weights.sum(-1), 1, atol=1e-5)
    assert np.triu(maps.weights, 1).max() > 0.05  # tokens attend to later tokens


def test_decoder_attention_is_causal_with_grouped_heads(decoder):
    maps = attention.text_attention(decoder, SENTENCE)
    assert maps.causal and maps.weights.shape[:2] == (30, 9)
    assert np.allclose(maps.weights.sum(-1), 1, atol=1e-5)
    assert np.triu(maps.weights, 1).max() == 0  # the causal mask: nothing above the diagonal
    assert maps.n_kv_heads == 3 and [maps.kv_group(h) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_the_weights_are_the_models_own(decoder):
    """Recompute one head's weights from the layer's projections: what the page draws is what the model used."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    maps = attention.text_attention(decoder, "Two plus two is four")
    ids = decoder.tokenizer("Two plus two is four", return_tensors="pt")
    layer_index, head = 4, 7
    with torch.no_grad():
        hidden = decoder.model(**ids, output_hidden_states=True).hidden_states[layer_index]
        block = decoder.model.model.layers[layer_index]
        x = block.input_layernorm(hidden)
        t = x.shape[1]
        q = block.self_attn.q_proj(x).view(1, t, 9, 64).transpose(1, 2)
        k = block.self_attn.k_proj(x).view(1, t, 3, 64).transpose(1, 2)
        cos, sin = decoder.model.model.rotary_emb(x, torch.arange(t)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        scores = q[0, head] @ k[0, head // 3].T / 8 + torch.triu(torch.full((t, t), float("-inf")), 1)
        expected = scores.softmax(-1).numpy()
    assert np.allclose(maps.weights[layer_index, head], expected, atol=1e-5)


def test_long_text_is_cut_with_a_note(encoder):
    maps = attention.text_attention(encoder, "word " * 100)
    assert len(maps.tokens) == attention.MAX_ATTENTION_TOKENS and "the first 40" in maps.note


def test_across_layers_and_the_head_summary(decoder):
    maps = attention.text_attention(decoder, SENTENCE)
    rows = attention.across_layers(maps, token=-1)
    assert rows.shape == (30, len(maps.tokens)) and np.allclose(rows.sum(-1), 1, atol=1e-5)
    assert np.allclose(attention.across_layers(maps, 3, head=2), maps.weights[:, 2, 3])
    summary = attention.head_summary(maps)
    assert len(summary) == 30 * 9 and summary[0][:3] == [0, 0, 0]
    assert summary[0][5] == pytest.approx(float(np.diagonal(maps.weights[0, 0]).mean()), abs=1e-3)
    with pytest.raises(ValueError, match="token must be between 0 and"):
        attention.across_layers(maps, token=99)


def test_empty_text_is_refused(encoder):
    with pytest.raises(ValueError, match="The text is empty"):
        attention.text_attention(encoder, "  \n")


# ---- images --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from shared.clip import load_dual_encoder
    from tests.retrieval.tiny import make_tiny_clip

    folder = make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
    return load_dual_encoder(str(folder), "cpu", torch.float32, attn_implementation="eager")


@pytest.fixture(scope="module")
def small_vit(tmp_path_factory):
    """The retrieval page's own small CLIP (a grey ViT on 28x28 images, 7x7 patches), untrained, saved and loaded
    the way the page loads it."""
    from shared.assets import ensure
    from shared.clip import load_dual_encoder
    from spaces.retrieval.train import TrainConfig, create_model, create_processor

    folder = tmp_path_factory.mktemp("vit") / "small-clip"
    text = str(ensure("all-minilm-l6-v2"))
    create_model(TrainConfig(), text).save_pretrained(folder)
    create_processor(text).save_pretrained(folder)
    return load_dual_encoder(str(folder), "cpu", torch.float32, attn_implementation="eager")


@pytest.mark.parametrize("which, grid", [("tiny_clip", 4), ("small_vit", 4)])
def test_class_token_attention_over_patches(request, which, grid):
    encoder = request.getfixturevalue(which)
    image = attention.sample_images()["Fashion-MNIST: Trouser (test #2)"]
    view = attention.image_attention(encoder, image)
    assert view.grid == grid
    total = view.class_attention.reshape(view.layers, view.heads, -1).sum(-1) + view.to_class
    assert np.allclose(total, 1, atol=1e-5)  # the class token's row: patches plus itself
    shown = attention.overlay(view, layer=-1)
    assert shown.shape == (224, 224, 3) and shown.dtype == np.uint8
    one = attention.overlay(view, layer=0, head=1, side=56)
    assert one.shape == (56, 56, 3)


def test_a_missing_image_is_refused(tiny_clip):
    with pytest.raises(ValueError, match="Choose or upload an image"):
        attention.image_attention(tiny_clip, None)


def test_patch_entropy_is_zero_on_one_patch_and_log2_of_the_grid_when_uniform():
    focused = np.array([[[[0.9, 0.0], [0.0, 0.0]], [[0.225] * 2] * 2]])  # layer 0: head 0 on one patch, head 1 even
    view = attention.ImageAttention("vit", np.zeros((28, 28, 3), np.uint8), 2, focused, np.array([[0.1, 0.1]]), 1, 2)
    assert attention.patch_entropy(view) == pytest.approx([(0.0 + 2.0) / 2], abs=1e-6)


def test_the_overlay_is_bright_where_the_class_token_looks():
    view = attention.ImageAttention("vit", np.full((28, 28, 3), 200, np.uint8), 2,
                                    np.array([[[[0.9, 0.0], [0.0, 0.0]]]]), np.array([[0.1]]), 1, 1)
    shown = attention.overlay(view, 0, side=4).astype(int)
    assert shown[0, 0].sum() > 3 * shown[3, 3].sum()  # the top-left patch holds the weight


# ---- plots ---------------------------------------------------------------------------------------------------

def test_the_plots_draw(decoder):
    maps = attention.text_attention(decoder, SENTENCE)
    labels = maps.labels()
    assert len(set(labels)) == len(labels)  # unique axis labels even when a token repeats ("the")
    figure = plots.head_grid(maps.weights[0], [f"head {h}" for h in range(9)], "layer 0")
    assert len(figure.axes) == 9
    chart = plots.matrix_chart(maps.weights[0, 0], labels, labels, row_title="query", column_title="key")
    assert len(chart.data) == len(labels) ** 2
    assert plots.matrix_chart(np.zeros((0, 0)), [], [], row_title="q", column_title="k") is None
