"""The Inside page in the running app, through gradio_client, on the real offline MiniLM and SmolLM2 and on the
retrieval page's small ViT (untrained, saved as a local model as the page saves a trained one)."""

from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError

from shared import registry

ENCODER, DECODER = "encoder (MiniLM: bidirectional)", "causal LM (SmolLM2: masked)"
OFFLINE = ["local:all-minilm-l6-v2", "local:smollm2-135m-instruct"]
SENTENCE = "The animal didn't cross the street because it was too tired."
SMALL_VIT = "small-vit-for-inside"


def data(table) -> list[list]:
    return table["data"]


def test_two_tokenizers_side_by_side_with_the_chat_template(client):
    view, words, ids, notes = client.predict(text="Tokenization of naïve café 🤖", tokenizers=OFFLINE,
                                             chat_template=True, api_name="/inside_tokenize")
    assert view.count('class="token-view"') == 2 and "data-token-id" in view
    assert words["headers"] == ["word", *OFFLINE]
    assert data(words)[0][0] == "Tokenization" and data(words)[-1][0] == "tokens per word"
    assert data(ids)[0][2] == "[CLS]" and data(ids)[2][2] == "##ization"
    assert "no chat template" in notes and "[UNK]" in notes


@pytest.mark.parametrize("inputs, message", [({"text": "   ", "tokenizers": OFFLINE}, "only whitespace"),
                                             ({"text": "hello", "tokenizers": []}, "Choose between 1 and 4"),
                                             ({"text": "hello", "tokenizers": ["../etc"]}, "is a path or URL")])
def test_tokenizing_refuses_bad_input(client, inputs, message):
    with pytest.raises(AppError, match=message):
        client.predict(**inputs, chat_template=False, api_name="/inside_tokenize")


def test_positions_learned_rotary_and_sinusoidal(client):
    image, curves = client.predict(positions=64, dimensions=32, curves="0, 1, 30", api_name="/inside_sinusoidal")
    assert image["type"] == "matplotlib" and curves["type"] == "altair"
    with pytest.raises(AppError, match="between 0 and 31"):
        client.predict(positions=64, dimensions=32, curves="40", api_name="/inside_sinusoidal")
    image, note = client.predict(choice="", positions=64, api_name="/inside_learned_positions")
    assert image["type"] == "matplotlib" and "learned 512 position vectors" in note
    chart, note = client.predict(choice="", text=SENTENCE, layer=2, distance=256, api_name="/inside_rope")
    assert chart["type"] == "altair" and "100000^(−2i/64)" in note


def test_token_embeddings_in_context(client):
    matrix, scatter, note = client.predict(which=DECODER, choice="", text="bank river bank money", layer="last",
                                           api_name="/inside_embeddings")
    assert matrix["type"] == scatter["type"] == "altair"
    assert note == "**local:smollm2-135m-instruct**: the last layer's outputs of 4 tokens (special tokens left out)."


@pytest.mark.parametrize("which, layers, heads", [(ENCODER, 6, 12), (DECODER, 30, 9)])
def test_attention_of_every_head_and_one_token_across_layers(own_client, which, layers, heads):
    """(A client of its own: a run narrows its session's sliders to the model, and Gradio then checks the next
    call's layer against that range.)"""
    client = own_client
    grid, one, across, entropy, summary, note, layer, head, token = client.predict(
        which=which, choice="", text=SENTENCE, layer=99, head=3, token=4, api_name="/inside_attention")
    assert grid["type"] == "matplotlib" and one["type"] == across["type"] == entropy["type"] == "altair"
    assert [row[:2] for row in data(summary)] == [[layers - 1, h] for h in range(heads)]  # the layer shown
    assert layer["maximum"] == layers - 1 and layer["value"] == layers - 1  # a layer past the end is the last
    assert head["maximum"] == heads - 1 and head["value"] == 3 and token["value"] == 4
    assert ("upper triangle is empty" in note) == (which == DECODER)
    assert ("Grouped-query attention: 9 query heads share 3" in note) == (which == DECODER)


def test_attention_refuses_empty_text(client):
    with pytest.raises(AppError, match="The text is empty"):
        client.predict(which=ENCODER, choice="", text="", layer=0, head=0, token=0, api_name="/inside_attention")


@pytest.fixture(scope="module")
def small_vit(tmp_path_factory) -> str:
    from shared.assets import ensure
    from spaces.retrieval.train import TrainConfig, create_model, create_processor

    folder = tmp_path_factory.mktemp("vit") / SMALL_VIT
    text = str(ensure("all-minilm-l6-v2"))
    create_model(TrainConfig(), text).save_pretrained(folder)
    create_processor(text).save_pretrained(folder)
    saved = dict(registry._local_models)
    label = registry.register_local(SMALL_VIT, folder, "clip")
    yield label
    registry._local_models.clear()
    registry._local_models.update(saved)


def test_the_class_tokens_attention_over_an_image(client, small_vit):
    samples = client.predict(api_name="/inside_samples")
    assert ["Fashion-MNIST: Trouser (test #2)"] * 2 in samples["choices"]
    assert samples["value"] == samples["choices"][1][0]
    overlay, heads, spread, note, layer, head = client.predict(
        choice=small_vit, sample="Fashion-MNIST: Trouser (test #2)", upload=None, layer=1, head=0,
        mean_of_heads=False, api_name="/inside_image_attention")
    assert overlay.endswith(".png") or overlay.endswith(".webp")
    from spaces.retrieval.train import TrainConfig

    config = TrainConfig()
    grid = 28 // config.patch_size
    assert len(heads) == config.heads and heads[0]["caption"].startswith("head 0: keeps")
    assert spread["type"] == "altair" and f"{grid}×{grid} grid of patches" in note and "head 0" in note
    assert layer["maximum"] == config.layers - 1 and head["maximum"] == config.heads - 1


def test_a_block_from_scratch_matches_the_library(client):
    rows, note, code = client.predict(text=SENTENCE, encoder_layer=0, decoder_layer=10,
                                      api_name="/inside_from_scratch")
    assert len(data(rows)) == 9 and all(row[-1] == "yes" for row in data(rows)), data(rows)
    assert "layer 10 of 30" in note
    assert "def scaled_dot_product_attention" in code and "def decoder_block" in code


def test_from_scratch_refuses_a_layer_past_the_end(client):
    with pytest.raises(AppError, match="Value 6 is greater than maximum value 5"):  # Gradio's own check
        client.predict(text=SENTENCE, encoder_layer=6, decoder_layer=0, api_name="/inside_from_scratch")
    with pytest.raises(AppError, match="whole number"):
        client.predict(text=SENTENCE, encoder_layer=2.5, decoder_layer=0, api_name="/inside_from_scratch")
