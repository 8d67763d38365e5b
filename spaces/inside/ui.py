"""The Inside-the-transformer page's UI: `build()` returns its Blocks. Alone: `python -m spaces.inside`.

Four parts, all on the suite's own models (MiniLM and SmolLM2 offline, their hub ids online, and the small ViT
the retrieval page trains): tokenizers side by side; embeddings and positions (sinusoidal, learned, rotary);
attention of every layer and head, for text and for an image; and one block written from scratch that matches
the library's layer on the same weights.
"""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd

from shared.registry import choices
from shared.ui import HEAVY, LIGHT, PageInfo, table, visitor_errors
from spaces.inside import attention, models, plots, position, tokens

PAGE = PageInfo(
    name="Inside the transformer",
    path="inside",
    teaches="Open the suite's own models: tokenizers side by side, positional encodings, the attention of every "
            "layer and head, and one block written from scratch that matches the library to 1e-6.",
    needs="Offline: MiniLM and SmolLM2-135M on the CPU; the image part needs the small CLIP trained on the "
          "retrieval page. Online: BERT, GPT-2 and other hub models too.",
)
INTRO = """# Inside the transformer
Every other page *uses* transformers; this one opens them up, on the same models. Follow a sentence from its
**tokens** to their **embeddings** and **positions**, watch what each **attention head** looks at, then see one
whole **block rewritten from scratch** in a few lines of PyTorch give the library's numbers on the model's own
weights: the formula is the model.
"""
MODEL_KINDS = {"encoder (MiniLM: bidirectional)": "encoder", "causal LM (SmolLM2: masked)": "chat-lm"}
DEFAULT_TEXT = "The animal didn't cross the street because it was too tired."
COMPARE_CSS = (".token-compare {display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); "
               "gap: 1.5em} .token-column {min-width: 0}")
MAX_TEXT_CHARACTERS = 2000  # the attention and embedding parts cut by tokens; this only refuses pasted books
MAX_SLIDER = 127  # a layer or head slider's range before a model narrows it


def check_kind(which: str) -> str:
    if which not in MODEL_KINDS:
        raise ValueError(f"model must be one of {list(MODEL_KINDS)}, got {which!r}")
    return MODEL_KINDS[which]


def check_text(text: str | None) -> str:
    text = text or ""
    if not text.strip():
        raise ValueError("The text is empty: type a sentence first.")
    if len(text) > MAX_TEXT_CHARACTERS:
        raise ValueError(f"The text has {len(text):,} characters; this part takes at most {MAX_TEXT_CHARACTERS:,}.")
    return text


def whole(name: str, value) -> int:
    """A slider's number as an int (Gradio may send 3.0), refusing 2.5."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def open_model(which: str, choice: str | None):
    role = check_kind(which)
    return models.load_encoder(choice or None) if role == "encoder" else models.load_decoder(choice or None)


@visitor_errors
def model_choices(which: str):
    return gr.Dropdown(choices=choices(check_kind(which)), value="")


@visitor_errors
def attention_models(which: str):
    """Another model: its choices, and the sliders opened wide again until its first run narrows them."""
    return (gr.Dropdown(choices=choices(check_kind(which)), value=""), gr.Slider(maximum=MAX_SLIDER),
            gr.Slider(maximum=MAX_SLIDER))


# ---- 1. tokens -----------------------------------------------------------------------------------------------

@visitor_errors
def tokenize(text: str, tokenizers: list[str], chat_template: bool):
    comparison = tokens.compare(list(tokenizers or []), text, chat_template=bool(chat_template))
    views = "".join(f'<div class="token-column">{tokens.tokens_html(t)}</div>' for t in comparison.tokenizations)
    headers, rows = comparison.words_table()
    first = comparison.tokenizations[0]
    notes = "\n".join(f"- {note}" for note in comparison.notes)
    return (f'<style>{COMPARE_CSS}</style><div class="token-compare">{views}</div>',
            pd.DataFrame(rows, columns=headers),
            pd.DataFrame(tokens.ids_table(first), columns=tokens.IDS_HEADERS, dtype=object).fillna(""),
            notes or "_Nothing unusual in this text._")


@visitor_errors
def tokenizer_choices():
    return gr.Dropdown(choices=models.tokenizer_choices(), value=models.default_tokenizers())


# ---- 2. embeddings and positions -----------------------------------------------------------------------------

@visitor_errors
def draw_sinusoidal(positions: int, dimensions: int, curves: str):
    encoding = position.sinusoidal(whole("positions", positions), whole("d_model", dimensions))
    dims = position.parse_dimensions(curves, encoding.shape[1])
    return plots.encoding_image(encoding, ""), plots.curves_chart(encoding, dims)


@visitor_errors
def draw_learned(choice: str, positions: int):
    encoder = models.load_encoder(choice or None)
    similarity = position.learned_similarity(encoder, whole("positions", positions))
    near = float(np.mean(np.diagonal(similarity, offset=1)))
    far = float(similarity[0, -1])
    note = (f"**{encoder.source.label}** learned {len(position.learned_positions(encoder))} position vectors. "
            f"Neighbours are alike (mean cosine of positions p and p+1: {near:.2f}); position 0 and "
            f"{len(similarity) - 1}: {far:.2f}. Nothing told it to: training found what the sinusoids build in.")
    return plots.similarity_image(similarity, ""), note


@visitor_errors
def draw_rope(choice: str, text: str, layer: int, distance: int):
    decoder = models.load_decoder(choice or None)
    view = position.rope_scores(decoder, check_text(text), layer=whole("layer", layer),
                                max_distance=whole("distance", distance))
    note = (f"Rotary positions (RoFormer; Llama, SmolLM2): each pair of a head's {view.head_dim} dimensions is "
            f"turned by position × θ_i, with θ_i = {view.theta:g}^(−2i/{view.head_dim}), from "
            f"{view.frequencies[0]:.3g} to {view.frequencies[-1]:.3g} radians per position. The score of a query "
            f"and a key then depends only on their distance: moving both by the same amount (1, 100 and 1,000 "
            "positions) "
            f"changed it by {view.shift_difference:.1e} in float64. With q = k the score decays as they move apart.")
    return plots.rope_chart(view.distances, view.scores), note


@visitor_errors
def draw_embeddings(which: str, choice: str, text: str, layer: str):
    opened = open_model(which, choice)
    view = position.token_similarity(opened, check_text(text), layer=layer)
    what = "embedding table rows" if layer == "input" else "last layer's outputs"
    matrix = plots.matrix_chart(view.similarity, view.tokens, view.tokens, row_title="token", column_title="token",
                                value_title="cosine", domain=(-1, 1), scheme="redblue")
    note = f"**{opened.source.label}**: the {what} of {len(view.tokens)} tokens (special tokens left out)."
    return matrix, plots.scatter_chart(view.points, view.tokens, view.explained), " ".join([note, view.note]).strip()


# ---- 3. attention --------------------------------------------------------------------------------------------

def clamp(value, top: int) -> int:
    """A slider's value kept inside the model's range: switching to a model with fewer layers keeps working."""
    return min(max(whole("index", value or 0), 0), top)


@visitor_errors
def draw_attention(which: str, choice: str, text: str, layer: int, head: int, token: int):
    _, unusual = tokens.check_text(check_text(text))  # control characters, invisible ones, odd Unicode: said
    opened = open_model(which, choice)
    maps = attention.text_attention(opened, text)
    layer, head, token = clamp(layer, maps.layers - 1), clamp(head, maps.heads - 1), clamp(token, len(maps.tokens) - 1)
    labels = maps.labels()
    grouped = maps.n_kv_heads != maps.heads
    titles = [f"head {h}" + (f" · kv {maps.kv_group(h)}" if grouped else "") for h in range(maps.heads)]
    grid = plots.head_grid(maps.weights[layer], titles,
                           f"{maps.model}, layer {layer}: every head (rows: queries, columns: keys)")
    one = plots.matrix_chart(maps.weights[layer, head], labels, labels, row_title="query", column_title="key",
                             title=f"layer {layer}, head {head}" + (f" (key/value head {maps.kv_group(head)})"
                                                                   if grouped else ""))
    across = plots.matrix_chart(attention.across_layers(maps, token), [f"layer {i}" for i in range(maps.layers)],
                                labels, row_title="layer", column_title="key",
                                title=f"what {labels[token]!r} attends to in each layer (mean of the heads)")
    lines = [f"**{maps.model}**: {maps.layers} layers × {maps.heads} heads, {len(maps.tokens)} tokens. "
             + ("Causal: a token sees only itself and the tokens before it, so each map's upper triangle is empty."
                if maps.causal else "Bidirectional: every token sees every other.")]
    if grouped:
        lines.append(f"Grouped-query attention: {maps.heads} query heads share {maps.n_kv_heads} key/value heads, "
                     f"{maps.heads // maps.n_kv_heads} each (heads with the same kv number read the same keys).")
    lines += [maps.note] if maps.note else []
    lines += unusual
    summary = attention.head_summary(maps)
    roles = plots.matrix_chart(np.array([row[3] for row in summary]).reshape(maps.layers, maps.heads),
                               [f"layer {i}" for i in range(maps.layers)], titles, row_title="layer",
                               column_title="head", value_title="entropy", domain=None, scheme="magma",
                               title="")
    in_layer = [row for row in summary if row[0] == layer]  # a table of every head of a 30-layer model is a wall
    return (grid, one, across, roles, in_layer, "\n\n".join(lines),
            gr.Slider(maximum=maps.layers - 1, value=layer), gr.Slider(maximum=maps.heads - 1, value=head),
            gr.Slider(maximum=len(maps.tokens) - 1, value=token))


@visitor_errors
def draw_image_attention(choice: str, sample: str, upload, layer: int, head: int, mean_of_heads: bool):
    encoder = models.load_vision(choice or None)
    if upload is None:
        samples = attention.sample_images()
        if sample not in samples:
            raise ValueError(f"sample must be one of {list(samples)}, got {sample!r}")
        image = samples[sample]
    else:
        image = upload
    view = attention.image_attention(encoder, image)
    layer, head = clamp(layer, view.layers - 1), clamp(head, view.heads - 1)
    shown = attention.overlay(view, layer, None if mean_of_heads else head)
    heads = [(attention.overlay(view, layer, h, side=112), f"head {h}: keeps {view.to_class[layer, h]:.0%}")
             for h in range(view.heads)]
    entropy = [{"layer": f"layer {i}", "bits": bits} for i, bits in enumerate(attention.patch_entropy(view))]
    chart = plots.bars_chart(entropy, "layer", "bits",
                             f"How spread the class token's attention is over the {view.grid}×{view.grid} patches "
                             f"(max {np.log2(view.grid ** 2):.1f} bits: uniform)")
    note = (f"A {view.grid}×{view.grid} grid of patches plus the class token; layer {layer}, "
            + ("mean of the heads." if mean_of_heads else f"head {head}."))
    return (shown, heads, chart, note, gr.Slider(maximum=view.layers - 1, value=layer),
            gr.Slider(maximum=view.heads - 1, value=head))


@visitor_errors
def vision_choices():
    return gr.Dropdown(choices=choices("clip"), value="")


# ---- 4. a block from scratch ---------------------------------------------------------------------------------

FP32_TOLERANCE = 1e-5  # float32 keeps about 7 significant digits; the bound for a recomputed block


def check_rows(attention_check, encoder_check, decoder_check) -> list[list]:
    """One row per comparison: what, the largest difference, the bound, the shape, whether it holds."""
    def row(what: str, difference: float, shape, bound: float = FP32_TOLERANCE) -> list:
        return [what, f"{difference:.1e}", f"{bound:.0e}", "×".join(str(n) for n in shape),
                "yes" if difference < bound else "no"]

    rows = [row("attention vs torch.nn.functional.scaled_dot_product_attention", attention_check.unmasked_diff,
                attention_check.shape),
            row("attention with a causal mask vs torch", attention_check.causal_diff, attention_check.shape)]
    for check in (encoder_check, decoder_check):
        name = f"{check.model_type} {check.block} layer {check.layer_index}"
        rows.append(row(f"{name}: output vs {check.output_compared_to}", check.output_diff, check.output_shape))
        rows.append(row(f"{name}: output, relative (|Δ| / (1 + |value|); values up to {check.output_scale:.3g})",
                        check.output_rel_diff, check.output_shape))
        rows.append(row(f"{name}: attention weights vs output_attentions", check.attention_diff,
                        check.attention_shape))
        if check.rope_diff is not None:
            rows.append(row(f"{name}: rotary cos/sin vs model.model.rotary_emb", check.rope_diff,
                            (check.n_tokens, check.output_shape[-1] // max(1, check.attention_shape[1]))))
    return rows


@visitor_errors
def run_from_scratch(text: str, encoder_layer: int, decoder_layer: int):
    from spaces.inside import scratch  # imports torch: not while the app is being built

    text = check_text(text)
    encoder = models.load_encoder(None)
    decoder = models.load_decoder(None)
    encoder_check = scratch.check_encoder_block(encoder, text, whole("encoder layer", encoder_layer))
    decoder_check = scratch.check_decoder_block(decoder, text, whole("decoder layer", decoder_layer))
    rows = check_rows(scratch.check_attention(), encoder_check, decoder_check)
    note = (f"**{encoder.source.label}** layer {encoder_check.layer_index} of {encoder_check.n_layers} and "
            f"**{decoder.source.label}** layer {decoder_check.layer_index} of {decoder_check.n_layers}, on "
            f"{encoder_check.n_tokens} and {decoder_check.n_tokens} tokens"
            + (f" (cut to {scratch.MAX_TOKENS})" if encoder_check.cut or decoder_check.cut else "") + ". "
            "Deep decoder layers carry values in the thousands, where float32's last digit alone passes 1e-5: "
            "the relative row is the fair one there.")
    code = ("# ---- the encoder block (BERT, MiniLM) ----\n" + scratch.source(*scratch.ENCODER_CODE)
            + "\n\n# ---- the decoder layer (Llama, SmolLM2) ----\n" + scratch.source(*scratch.DECODER_CODE))
    return rows, note, code


# ---- the page ------------------------------------------------------------------------------------------------

def build() -> gr.Blocks:
    with gr.Blocks(title=PAGE.name) as page:
        gr.Markdown(INTRO)

        with gr.Tab("Tokens"):
            gr.Markdown("A model never sees letters: a tokenizer cuts the text into pieces from its vocabulary and "
                        "gives each an id. Different tokenizers cut differently: WordPiece marks word-inner pieces "
                        "with `##`, byte-level BPE marks a leading space with `Ġ` and never needs an unknown token. "
                        "Hover a token for its id.")
            with gr.Row():
                token_text = gr.Textbox(DEFAULT_TEXT + " Tokenization of “naïve” café emojis 🤖 costs tokens.",
                                        label="Text", lines=3, scale=3)
                with gr.Column(scale=2):
                    tokenizer_list = gr.Dropdown(label="Tokenizers (up to four side by side; type a hub id online)",
                                                 multiselect=True, allow_custom_value=True, max_choices=4)
                    chat_template = gr.Checkbox(False, label="Wrap in the chat template (where the tokenizer has one)")
                    tokenize_button = gr.Button("Tokenize", variant="primary")
            token_notes = gr.Markdown()
            token_view = gr.HTML(elem_id="inside-tokens")
            words = table(["word"], "Tokens per word, per tokenizer (the last row: all the text's tokens over its "
                                    "words; a token of spaces or newlines alone is in no word's row)")
            ids = table(list(tokens.IDS_HEADERS), "The first tokenizer's tokens and ids")

        with gr.Tab("Embeddings and positions"):
            gr.Markdown("### Sinusoidal positional encoding (Vaswani et al., 2017)\nAttention alone does not know "
                        "word order; the original transformer adds this fixed pattern to each token's embedding.")
            with gr.Row():
                sin_positions = gr.Slider(8, position.MAX_POSITIONS, value=100, step=1, label="positions")
                sin_dims = gr.Slider(8, 512, value=128, step=2, label="d_model")
                sin_curves = gr.Textbox("4, 5, 20, 60", label="Dimensions to draw as curves")
                sin_button = gr.Button("Draw")
            with gr.Row():
                sin_image = gr.Plot(label="The encoding: positions down, dimensions across",
                                    elem_id="inside-sinusoidal")
                sin_chart = gr.Plot(label="Chosen dimensions as curves", elem_id="inside-curves")
            gr.Markdown("### Learned positions (BERT, MiniLM)\nBERT learns one vector per position instead.")
            with gr.Row():
                encoder_choice = gr.Dropdown(label="Encoder (empty: the role's default)", allow_custom_value=True)
                learned_positions = gr.Slider(4, 512, value=128, step=1, label="positions")
                learned_button = gr.Button("Draw")
            with gr.Row():
                learned_image = gr.Plot(label="Cosine similarity of the learned position vectors",
                                        elem_id="inside-learned")
                learned_note = gr.Markdown()
            gr.Markdown("### Rotary positions (RoPE: SmolLM2, Llama)\nThe causal LM rotates each query and key by "
                        "its position instead of adding anything: q·k then depends on the distance only.")
            with gr.Row():
                decoder_choice = gr.Dropdown(label="Causal LM (empty: the role's default)", allow_custom_value=True)
                rope_text = gr.Textbox(DEFAULT_TEXT, label="Text (its last token's query, first token's key)")
                rope_layer = gr.Slider(0, 29, value=0, step=1, label="layer")
                rope_distance = gr.Slider(8, 4096, value=512, step=8, label="farthest distance")
                rope_button = gr.Button("Draw")
            rope_chart = gr.Plot(label="Score against distance", elem_id="inside-rope")
            rope_note = gr.Markdown()
            gr.Markdown("### The visitor's tokens as vectors\nInput embeddings give a word the same vector "
                        "everywhere; the last layer's output depends on the context.")
            with gr.Row():
                embed_kind = gr.Radio(list(MODEL_KINDS), value=list(MODEL_KINDS)[0], label="Model")
                embed_choice = gr.Dropdown(label="Which (empty: the role's default)", allow_custom_value=True)
                embed_layer = gr.Radio(list(position.EMBEDDING_LAYERS), value="input", label="Vectors")
            embed_text = gr.Textbox("king queen man woman Paris France Berlin Germany bank river money",
                                    label="Text")
            embed_button = gr.Button("Compare")
            embed_note = gr.Markdown()
            with gr.Row():
                embed_matrix = gr.Plot(label="Cosine similarity", elem_id="inside-similarity")
                embed_scatter = gr.Plot(label="PCA", elem_id="inside-pca")

        with gr.Tab("Attention"):
            gr.Markdown("Each head turns every token into a query, a key and a value; a query's softmax over all "
                        "keys says how much of each value it takes. Rows are queries, columns keys, each row sums to "
                        "1. Change the layer, head or token with the sliders.")
            with gr.Row():
                attention_kind = gr.Radio(list(MODEL_KINDS), value=list(MODEL_KINDS)[0], label="Model")
                attention_choice = gr.Dropdown(label="Which (empty: the role's default)", allow_custom_value=True)
            attention_text = gr.Textbox(DEFAULT_TEXT, label=f"Text (the first {attention.MAX_ATTENTION_TOKENS} "
                                        "tokens are drawn)")
            with gr.Row():
                # Wide static ranges (what an API call may send); each run narrows them to its model and text.
                layer = gr.Slider(0, MAX_SLIDER, value=0, step=1, label="layer")
                head = gr.Slider(0, MAX_SLIDER, value=0, step=1, label="head")
                token = gr.Slider(0, attention.MAX_ATTENTION_TOKENS - 1, value=9, step=1,
                                  label="token (for 'across layers')")
                attention_button = gr.Button("Show attention", variant="primary")
            attention_note = gr.Markdown()
            grid = gr.Plot(label="All heads of the layer", elem_id="inside-grid")
            with gr.Row():
                one_head = gr.Plot(label="One head", elem_id="inside-head")
                across = gr.Plot(label="One token across layers", elem_id="inside-across")
            with gr.Row():
                entropy = gr.Plot(label="Every head of every layer: the entropy of its rows (dark: looks at one token; "
                                        "light: spreads out)", elem_id="inside-entropy")
                summary = table(["layer", "head", "kv head", "entropy (nats)", "to first token", "to itself",
                                 "to previous"], "The layer's heads in numbers (means over the queries)")
            gr.Markdown("### Attention on an image (ViT)\nA vision transformer cuts the image into patches and "
                        "adds a class token whose output represents the image: what does it look at?")
            with gr.Row():
                vision_choice = gr.Dropdown(label="CLIP (empty: the newest trained on the retrieval page, or the "
                                            "hub default online)", allow_custom_value=True)
                sample = gr.Dropdown(label="Sample image", allow_custom_value=True)  # filled at load; checked in logic
                upload = gr.Image(label="…or your own image", type="pil", height=160)
            with gr.Row():
                image_layer = gr.Slider(0, MAX_SLIDER, value=0, step=1, label="layer")
                image_head = gr.Slider(0, MAX_SLIDER, value=0, step=1, label="head")
                mean_heads = gr.Checkbox(True, label="mean of the heads")
                image_button = gr.Button("Show image attention", variant="primary")
            image_note = gr.Markdown()
            with gr.Row():
                overlay = gr.Image(label="Class token → patches", type="numpy", height=260)
                head_gallery = gr.Gallery(label="Every head of the layer", columns=6, height=260)
            spread = gr.Plot(label="Spread per layer", elem_id="inside-spread")

        with gr.Tab("A block from scratch"):
            gr.Markdown("Scaled dot-product attention, multi-head attention, a BERT encoder block and a SmolLM2 "
                        "decoder layer (RMSNorm, rotary positions, grouped-query attention, SwiGLU), written in "
                        "plain PyTorch below, run on the models' own weights for your text and compared with the "
                        "library's layers.")
            with gr.Row():
                scratch_text = gr.Textbox(DEFAULT_TEXT, label="Text", scale=3)
                encoder_layer = gr.Slider(0, 5, value=0, step=1, label="encoder layer")
                decoder_layer = gr.Slider(0, 29, value=0, step=1, label="decoder layer")
                scratch_button = gr.Button("Run and compare", variant="primary")
            checks = table(["check", "max |difference|", "bound", "shape", "within"], "From scratch vs the library")
            scratch_note = gr.Markdown()
            code = gr.Code(language="python", label="The code that ran", interactive=False)

        # ---- events ----
        page.load(tokenizer_choices, None, tokenizer_list, api_name="inside_tokenizers", **LIGHT)
        page.load(samples_dropdown, None, sample, api_name="inside_samples", **LIGHT)
        for dropdown, role, name in ((encoder_choice, "encoder", "inside_encoders"),
                                     (decoder_choice, "chat-lm", "inside_decoders")):
            page.load(role_dropdown(role), None, dropdown, api_name=name, **LIGHT)
        page.load(vision_choices, None, vision_choice, api_name="inside_vision_models", **LIGHT)
        page.load(model_choices, embed_kind, embed_choice, api_name="inside_embedding_models_at_load", **LIGHT)
        page.load(model_choices, attention_kind, attention_choice, api_name="inside_attention_models_at_load",
                  **LIGHT)
        gr.on([tokenize_button.click, token_text.submit], tokenize, [token_text, tokenizer_list, chat_template],
              [token_view, words, ids, token_notes], api_name="inside_tokenize", **LIGHT)
        sin_button.click(draw_sinusoidal, [sin_positions, sin_dims, sin_curves], [sin_image, sin_chart],
                         api_name="inside_sinusoidal", **LIGHT)
        learned_button.click(draw_learned, [encoder_choice, learned_positions], [learned_image, learned_note],
                             api_name="inside_learned_positions", **HEAVY)
        rope_button.click(draw_rope, [decoder_choice, rope_text, rope_layer, rope_distance], [rope_chart, rope_note],
                          api_name="inside_rope", **HEAVY)
        embed_kind.change(model_choices, embed_kind, embed_choice, api_name="inside_embedding_models", **LIGHT)
        embed_button.click(draw_embeddings, [embed_kind, embed_choice, embed_text, embed_layer],
                           [embed_matrix, embed_scatter, embed_note], api_name="inside_embeddings", **HEAVY)
        attention_kind.change(attention_models, attention_kind, [attention_choice, layer, head],
                              api_name="inside_attention_models", **LIGHT)
        gr.on([attention_button.click, attention_text.submit, layer.release, head.release, token.release],
              draw_attention, [attention_kind, attention_choice, attention_text, layer, head, token],
              [grid, one_head, across, entropy, summary, attention_note, layer, head, token],
              api_name="inside_attention",
              **HEAVY)
        gr.on([image_button.click, image_layer.release, image_head.release, mean_heads.change],
              draw_image_attention, [vision_choice, sample, upload, image_layer, image_head, mean_heads],
              [overlay, head_gallery, spread, image_note, image_layer, image_head], api_name="inside_image_attention",
              **HEAVY)
        scratch_button.click(run_from_scratch, [scratch_text, encoder_layer, decoder_layer],
                             [checks, scratch_note, code],
                             api_name="inside_from_scratch", **HEAVY)
    return page


@visitor_errors
def samples_dropdown():
    names = list(attention.sample_images())
    return gr.Dropdown(choices=names, value=names[1] if len(names) > 1 else None)


def role_dropdown(role: str):
    @visitor_errors
    def role_choices():
        return gr.Dropdown(choices=choices(role), value="")

    role_choices.__name__ = f"{role.replace('-', '_')}_choices"
    return role_choices
