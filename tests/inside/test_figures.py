"""The Inside page's figures against planted truths (issue 22).

- The block from scratch: the "max |difference|" rows compare our block with the library's on the same weights, so
  a planted error in one weight of *our* copy must raise exactly the rows that weight feeds, in proportion to the
  error, past the bound, and turn "within" to "no"; a planted wrong scale in our attention, or a wrong rotary base,
  must show in theirs.
- The attention table: heads of known behaviour (identity, previous token, first token, uniform) must read their
  known entropy and shares.
- Positions and vectors: a planted position table, embedding table and rotary base must give the page's note and
  figures their known values.

Seen to fail: with check_encoder_block comparing the library's output with itself (`_max_diff(library_out,
library_out)`) the planted-error rows stay at 0 and "within" stays "yes"; with check_rows writing "yes" for
every row, "within" never turns "no"; with head_summary's "to previous" read from the diagonal above
(offset=+1), the previous-token head reads 0; with draw_learned's "near" taken at offset 2, the planted
neighbours' cosine reads cos(2θ).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spaces.inside import attention, position, scratch

TEXT = "The cat sat on the mat because it was warm."
BOUND = 1e-5  # the page's bound for a block recomputed in float32


def with_planted_error(block, pick, delta: float):
    """`block` (scratch.encoder_block or decoder_block) run on a copy of the library's layer in which the one
    weight `pick(layer)[0, 0]` is `delta` larger: the library keeps the true weight, our block reads the wrong one."""
    def planted(x, layer, *args, **kwargs):
        wrong = copy.deepcopy(layer)
        with torch.no_grad():
            pick(wrong)[0, 0] += delta
        return block(x, wrong, *args, **kwargs)

    return planted


@pytest.fixture(scope="module")
def planted_encoder_checks(encoder):
    """The encoder check as it is, and with one planted error of 0.01 and 0.02 in the query projection, and of
    0.02 in the feed-forward's output projection (which comes after attention)."""
    checks = {"none": scratch.check_encoder_block(encoder, TEXT, 0)}
    picks = {"query": lambda layer: layer.attention.self.query.weight,
             "feed-forward": lambda layer: layer.output.dense.weight}
    with pytest.MonkeyPatch.context() as patch:
        for name, delta in (("query", 0.01), ("query", 0.02), ("feed-forward", 0.02)):
            patch.setattr(scratch, "encoder_block", with_planted_error(scratch.encoder_block, picks[name], delta))
            checks[(name, delta)] = scratch.check_encoder_block(encoder, TEXT, 0)
            patch.undo()
    return checks


def test_a_planted_error_in_one_encoder_weight_raises_the_difference_it_feeds(planted_encoder_checks):
    checks = planted_encoder_checks
    clean, query, double, ffn = checks["none"], checks[("query", 0.01)], checks[("query", 0.02)], \
        checks[("feed-forward", 0.02)]
    assert clean.output_diff < BOUND and clean.attention_diff < BOUND
    # A wrong query weight changes the attention weights and, through them, the output.
    assert query.attention_diff > 10 * BOUND and query.output_diff > 10 * BOUND
    # The difference follows the size of the error: twice the error, about twice the difference.
    assert 1.6 < double.output_diff / query.output_diff < 2.4
    assert 1.6 < double.attention_diff / query.attention_diff < 2.4
    # A wrong feed-forward weight changes the output only: attention comes before it.
    assert ffn.output_diff > 10 * BOUND and ffn.output_rel_diff > 10 * BOUND and ffn.attention_diff < BOUND


def test_a_planted_error_turns_within_to_no_in_the_pages_table(planted_encoder_checks, decoder):
    from spaces.inside import ui

    decoder_check = scratch.check_decoder_block(decoder, TEXT, 0)
    clean = ui.check_rows(scratch.check_attention(), planted_encoder_checks["none"], decoder_check)
    wrong = ui.check_rows(scratch.check_attention(), planted_encoder_checks[("feed-forward", 0.02)], decoder_check)
    assert [row[-1] for row in clean] == ["yes"] * len(clean)
    changed = {row[0]: row for row in wrong if row[-1] == "no"}
    assert set(changed) == {"bert encoder layer 0: output vs hidden_states[1]",
                            "bert encoder layer 0: output, relative (|Δ| / (1 + |value|); values up to "
                            f"{planted_encoder_checks['none'].output_scale:.3g})"}
    for row in changed.values():
        assert float(row[1]) > BOUND and row[2] == "1e-05"
    assert [row for row in wrong if row[-1] == "yes"] == [row for row in clean if row[0] not in changed]


def test_a_planted_error_in_one_decoder_weight_raises_its_output_difference(decoder):
    clean = scratch.check_decoder_block(decoder, TEXT, 0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scratch, "decoder_block", with_planted_error(
            scratch.decoder_block, lambda layer: layer.mlp.down_proj.weight, 0.05))
        wrong = scratch.check_decoder_block(decoder, TEXT, 0)
    assert clean.output_diff < BOUND and wrong.output_diff > 10 * BOUND
    assert wrong.attention_diff < BOUND and wrong.rope_diff == clean.rope_diff  # before the feed-forward


def test_a_planted_wrong_rotary_base_shows_in_the_rope_row(decoder):
    real = scratch.rope_cos_sin
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scratch, "rope_cos_sin", lambda positions, head_dim, theta: real(positions, head_dim, theta / 2))
        wrong = scratch.check_decoder_block(decoder, TEXT, 0)
    assert wrong.rope_diff > 1e-2 and wrong.output_diff > 10 * BOUND and wrong.attention_diff > 10 * BOUND


def test_a_planted_wrong_attention_scale_shows_in_both_attention_rows():
    real = scratch.scaled_dot_product_attention
    clean = scratch.check_attention()
    with pytest.MonkeyPatch.context() as patch:  # 1.01 √d instead of √d: a 1% error in every score
        patch.setattr(scratch, "scaled_dot_product_attention", lambda q, k, v, mask=None: real(q / 1.01, k, v, mask))
        wrong = scratch.check_attention()
    assert clean.unmasked_diff < 1e-6 and clean.causal_diff < 1e-6
    assert wrong.unmasked_diff > 1e-3 and wrong.causal_diff > 1e-3


# ---- the attention table -------------------------------------------------------------------------------------

def test_heads_of_known_behaviour_read_their_entropy_and_shares():
    """Four tokens, four heads: identity, previous token (the first looks at itself), first token, uniform; two
    key/value heads. Known: entropy 0, 0, 0, ln 4; to first, to itself, to previous as below."""
    t = 4
    identity = np.eye(t)
    previous = np.eye(t, k=-1)
    previous[0, 0] = 1.0
    first = np.zeros((t, t))
    first[:, 0] = 1.0
    uniform = np.full((t, t), 1 / t)
    weights = np.stack([identity, previous, first, uniform])[None].astype(np.float32)  # [1 layer, 4 heads, T, T]
    maps = attention.AttentionMaps("planted", ["a", "b", "c", "d"], weights, False, 2, "")
    rows = {row[1]: row for row in attention.head_summary(maps)}
    assert [rows[h][2] for h in range(4)] == [0, 0, 1, 1]  # kv head: 4 query heads over 2 key/value heads
    entropy, to_first, to_itself, to_previous = ([rows[h][i] for h in range(4)] for i in (3, 4, 5, 6))
    assert entropy == pytest.approx([0, 0, 0, round(math.log(4), 3)], abs=1e-3)
    assert to_first == pytest.approx([0.25, 0.5, 1.0, 0.25], abs=1e-3)
    assert to_itself == pytest.approx([1.0, 0.25, 0.25, 0.25], abs=1e-3)
    assert to_previous == pytest.approx([0.0, 1.0, 0.333, 0.25], abs=1e-3)
    # One token across layers (mean of the heads): token 3's rows, [0 0 0 1], [0 0 1 0], [1 0 0 0], [¼ ¼ ¼ ¼].
    assert attention.across_layers(maps, token=3)[0] == pytest.approx([0.3125, 0.0625, 0.3125, 0.3125])


# ---- tokens ---------------------------------------------------------------------------------------------------

def test_tokens_per_word_count_a_text_of_known_tokens():
    """"good\n\n\nfilm": two words of one token each in both tokenizers; byte-level BPE also spends two tokens on
    the newlines (ĊĊ, Ċ), which belong to no word, so its last row reads 4 tokens over 2 words (before issue 22
    the table called that row "the mean", which it is not here: the column's mean is 1)."""
    from spaces.inside import tokens

    comparison = tokens.compare(["local:all-minilm-l6-v2", "local:smollm2-135m-instruct"], "good\n\n\nfilm")
    headers, rows = comparison.words_table()
    assert rows == [["good", 1, 1], ["film", 1, 1], ["tokens per word", 1.0, 2.0]]
    wordpiece, bpe = comparison.tokenizations
    assert (wordpiece.count, wordpiece.specials, bpe.count) == (2, 2, 4)
    assert [t.shown for t in bpe.tokens if t.word is None and not t.special] == ["↵↵", "↵"]


# ---- positions and vectors -----------------------------------------------------------------------------------

def test_the_learned_positions_note_reads_a_planted_table(monkeypatch):
    """Position p's vector turns by θ = π/15 a position: neighbours' cosine is cos θ = 0.98, and positions 0 and 15
    point opposite ways (cos π = -1)."""
    from spaces.inside import models, ui

    theta = math.pi / 15
    table = torch.nn.Embedding(16, 4)
    with torch.no_grad():
        table.weight.zero_()
        table.weight[:, 0] = torch.cos(torch.arange(16) * theta)
        table.weight[:, 1] = torch.sin(torch.arange(16) * theta)
    planted = SimpleNamespace(source=SimpleNamespace(label="planted"), model=SimpleNamespace(
        embeddings=SimpleNamespace(position_embeddings=table), config=SimpleNamespace(model_type="bert")))
    monkeypatch.setattr(models, "load_encoder", lambda choice=None: planted)
    _, note = ui.draw_learned("", 16)
    assert "learned 16 position vectors" in note
    assert f"mean cosine of positions p and p+1: {math.cos(theta):.2f}" in note
    assert "position 0 and 15: -1.00" in note


def test_the_rotary_figures_follow_a_planted_base():
    """θ = 100 and head_dim 8: frequencies 100^(-2i/8) = 1, 0.316, 0.1, 0.0316; q = k scores d/√d at distance 0.
    A rotation that is not one (a planted absolute offset) must show in the shift difference."""
    config = SimpleNamespace(model_type="llama", head_dim=8, rope_theta=100.0, rope_scaling=None, hidden_size=32,
                             num_attention_heads=4)
    planted = SimpleNamespace(model=SimpleNamespace(config=config))
    view = position.rope_scores(planted, "", max_distance=16)
    assert view.theta == 100.0 and view.head_dim == 8
    assert view.frequencies == pytest.approx([1, 100 ** -0.25, 0.1, 100 ** -0.75])
    ones = view.scores["q = k (all ones)"]
    assert ones[0] == pytest.approx(8 / math.sqrt(8))
    assert ones[1] == pytest.approx(2 * sum(math.cos(f) for f in view.frequencies) / math.sqrt(8))
    assert view.shift_difference < 1e-9
    real = position.rotate
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(position, "rotate", lambda vector, p, frequencies: real(vector, p, frequencies) + 0.01 * p)
        assert position.rope_scores(planted, "", max_distance=16).shift_difference > 1e-3


@pytest.fixture(scope="module")
def wordpiece():
    from spaces.inside.models import load_tokenizer

    return load_tokenizer("local:all-minilm-l6-v2")


def planted_embeddings(tokenizer, vector_of):
    table = torch.nn.Embedding(len(tokenizer), 4)
    with torch.no_grad():
        for token_id in range(len(tokenizer)):
            table.weight[token_id] = torch.tensor(vector_of(token_id), dtype=torch.float32)
    return SimpleNamespace(tokenizer=tokenizer, model=SimpleNamespace(get_input_embeddings=lambda: table))


def test_token_vectors_read_a_planted_embedding_table(wordpiece):
    """Even ids along one axis, odd ids along another: cosine 1 within a parity, 0 across. All along one line:
    the PCA's first axis holds all the variance."""
    text = "king queen man woman paris france"
    ids = wordpiece(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 6 and len({i % 2 for i in ids}) == 2  # the planted split has both kinds here
    by_parity = position.token_similarity(
        planted_embeddings(wordpiece, lambda i: [i + 1, 0, 0, 0] if i % 2 == 0 else [0, i + 1, 0, 0]), text)
    expected = np.array([[1.0 if a % 2 == b % 2 else 0.0 for b in ids] for a in ids])
    assert by_parity.similarity == pytest.approx(expected, abs=1e-6)
    assert by_parity.tokens == [f"{n} {t}" for n, t in enumerate(wordpiece.convert_ids_to_tokens(ids))]
    on_a_line = position.token_similarity(planted_embeddings(wordpiece, lambda i: [i, 2 * i, 0, 0]), text)
    assert on_a_line.explained[0] == pytest.approx(1.0, abs=1e-9) and on_a_line.explained[1] == pytest.approx(0.0,
                                                                                                              abs=1e-9)
