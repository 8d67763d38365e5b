"""The CLIP retrieval page's UI: `build()` returns its Blocks. Alone: `python -m spaces.retrieval`.

Six parts on one model and one gallery: embed a gallery (stored, reused), search it by text or by image,
see a text x image similarity heatmap, label an image zero-shot, evaluate the model on Fashion-MNIST, and
train a small CLIP here (the offline model: no CLIP weights ship in any package).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from operator import itemgetter

import gradio as gr
import numpy as np
import pandas as pd

from shared import jobs
from shared.cache import short_reason
from shared.registry import check_local_name, choices, resolve
from shared.ui import (HEAVY, LIGHT, PageInfo, gradio_progress, heatmap_chart, line_chart, session_key, table,
                       visitor_errors)
from shared import fashion_captions as captions
from shared import fashion_test_set
from spaces.retrieval import search
from spaces.retrieval import gallery as galleries
from spaces.retrieval.train import PAGE_DEFAULTS, TrainConfig, evaluate, train

PAGE = PageInfo(
    name="CLIP retrieval",
    path="retrieval",
    teaches="Search images by text or by image with a CLIP model, label images zero-shot, and train a small CLIP "
            "yourself to see contrastive learning make the similarity matrix diagonal.",
    needs="Offline: a small CLIP trained on this page (Fashion-MNIST, ~5 min on a CPU). Online: any CLIP or SigLIP "
          "from the hub.",
)
INTRO = """# CLIP retrieval
CLIP puts images and texts in one vector space: a caption lands near the images it describes. Choose a model and
a gallery, embed it (stored on disk, so the next visit reuses it), then search it by text or by image, compare
several texts with several images, and label an image with words you choose. No CLIP weights ship offline:
**train a small CLIP below** (a ViT image tower from scratch plus the frozen MiniLM text tower, on Fashion-MNIST)
and it becomes the page's model.
"""
INDEX_KINDS = {"exact (flat inner product)": "flat", "approximate (HNSW graph)": "hnsw"}
IMAGE_BACKENDS = {"PyTorch": "pytorch", "ONNX Runtime": "onnx"}
TRAIN_JOB = "retrieval-train"
EMBED_JOB = "retrieval-embed"
EVALUATE_JOB = "retrieval-evaluate"
EVALUATION_ROWS = (  # (what the table says, key in train.evaluate's results)
    ("zero-shot accuracy, ensembled wordings", "zero_shot"),
    ("zero-shot accuracy, one wording at a time", "zero_shot_single"),
    ("text → image recall@1 (precision of the first image)", "text_to_image@1"),
    ("text → image recall@5", "text_to_image@5"),
    ("text → image recall@10", "text_to_image@10"),
    ("image → text recall@1", "image_to_text@1"), ("image → text recall@5", "image_to_text@5"),
)
GALLERY_COLUMNS = 5
POLL_SECONDS = 1.0


@dataclass
class Opened:
    """A visitor's embedded gallery and its index, kept in their session."""
    model_label: str
    location: str
    image_backend: str  # where query images are embedded: "pytorch" or "onnx"
    embedded: galleries.EmbeddedGallery
    index: object
    kind: str


def clip_model(location: str, label: str, image_backend: str = "pytorch"):
    return galleries.dual_encoder(location, label, image_backend)


def check_backend(image_tower: str) -> str:
    if image_tower not in IMAGE_BACKENDS:
        raise ValueError(f"image tower must run on one of {list(IMAGE_BACKENDS)}, got {image_tower!r}")
    return IMAGE_BACKENDS[image_tower]


# ---- 1. model and gallery ---------------------------------------------------------------------------------


@visitor_errors
def open_gallery(model, gallery, uploads, fashion_size, index_kind, image_tower="PyTorch", request: gr.Request = None,
                 progress=gr.Progress()):
    """Embed the gallery with the model (only images not stored yet), then open its index."""
    if index_kind not in INDEX_KINDS:
        raise ValueError(f"index must be one of {list(INDEX_KINDS)}, got {index_kind!r}")
    backend = check_backend(image_tower)
    source = resolve("clip", model)
    items = galleries.choose_gallery(gallery, uploads, fashion_size)
    report = gradio_progress(progress)

    def embed(stop: threading.Event) -> galleries.EmbeddedGallery:
        return galleries.embed_gallery(items, source.location,
                                       galleries.encoder_loader(source.location, source.label, backend),
                                       progress=report, stop=stop)

    started = time.perf_counter()
    embedded = jobs.run(embed, name=EMBED_JOB, key=session_key(request))
    kind = INDEX_KINDS[index_kind]
    index = search.open_index(embedded, kind)
    seconds = time.perf_counter() - started
    count = len(embedded.gallery)
    status = (f"**{count} images** of {gallery} with {source.label}: {embedded.embedded_now} embedded now "
              f"(image tower on {image_tower}), {count - embedded.embedded_now} reused from disk, in {seconds:.1f} s. "
              f"Index: {index_kind}.")
    if embedded.stopped:
        status = "Stopped: only the images embedded so far are searchable. " + status
    if kind == "hnsw":
        status += f" Its recall@10 against exact search: {search.approximate_recall(index, embedded.vectors):.3f}."
    elif "hnsw" in search.index_kinds_for(count):
        status += " An approximate index pays past this size: try it and compare its recall."
    preview = [(item.image, item.caption) for item in embedded.gallery.items[:GALLERY_COLUMNS * 2]]
    return Opened(source.label, source.location, backend, embedded, index, kind), status, preview


def stop_embedding(request: gr.Request = None):
    jobs.stop(session_key(request), EMBED_JOB)


def opened_or_error(opened: Opened | None) -> Opened:
    if opened is None:
        raise ValueError("Embed a gallery first (section 1).")
    return opened


def hits_gallery(hits: list[search.Hit]) -> list[tuple]:
    return [(hit.item.image, f"{hit.score:.3f} · {hit.item.caption}") for hit in hits]


# ---- 2. search ------------------------------------------------------------------------------------------


@visitor_errors
def search_text(opened, query, k):
    opened = opened_or_error(opened)
    clip = clip_model(opened.location, opened.model_label, opened.image_backend)
    return hits_gallery(search.search_by_text(clip, opened.index, opened.embedded, query, int(k)))


@visitor_errors
def search_image(opened, image, k):
    opened = opened_or_error(opened)
    if image is None:
        raise ValueError("Drop an image to search with.")
    clip = clip_model(opened.location, opened.model_label, opened.image_backend)
    return hits_gallery(search.search_by_image(clip, opened.index, opened.embedded, image, int(k)))


# ---- 3. heatmap -----------------------------------------------------------------------------------------


@visitor_errors
def compare(opened, texts, image_count):
    """Cosine similarity of each text with the gallery's first images: the matrix CLIP is trained to make
    high where a text describes an image."""
    opened = opened_or_error(opened)
    lines = [line.strip() for line in (texts or "").splitlines() if line.strip()]
    if image_count is None or int(image_count) != image_count or not 1 <= image_count <= 12:
        raise ValueError(f"images to compare must be a whole number from 1 to 12, got {image_count}.")
    items = opened.embedded.gallery.items[:int(image_count)]
    clip = clip_model(opened.location, opened.model_label, opened.image_backend)
    matrix = search.similarity_matrix(clip, lines, [item.image for item in items])
    columns = [f"{i + 1}. {item.caption}"[:28] for i, item in enumerate(items)]
    return heatmap_chart(matrix, lines, columns, value_title="cosine"), [(item.image, c) for item, c in
                                                                         zip(items, columns)]


# ---- 4. zero-shot ---------------------------------------------------------------------------------------


@visitor_errors
def label_image(model, image, labels, template):
    if image is None:
        raise ValueError("Drop an image to label.")
    source = resolve("clip", model)
    clip = clip_model(source.location, source.label)
    result = search.zero_shot(clip, image, search.parse_labels(labels), template)
    rows = [[label, round(float(single), 3), round(float(ensembled), 3)]
            for label, single, ensembled in zip(result.labels, result.single, result.ensembled)]
    rows.sort(key=itemgetter(2), reverse=True)
    best = {label: float(p) for label, p in zip(result.labels, result.ensembled)}
    return best, rows


# ---- 5. evaluate --------------------------------------------------------------------------------------


EVALUATION_COLUMNS = ["measure", "training captions", "paraphrases (development)", "unseen wordings (frozen test)"]


def evaluation_rows(results: dict[str, float]) -> list[list]:
    """Training captions, development paraphrases and the frozen test wordings side by side, one row per
    measure (empty where a measure does not apply to a set)."""
    columns = {"zero_shot": ("zero_shot_templates", "zero_shot_paraphrases", "zero_shot_unseen"),
               "zero_shot_single": ("", "zero_shot_single_paraphrase", "zero_shot_single_unseen")}
    rows = []
    for title, key in EVALUATION_ROWS:
        keys = columns.get(key, (f"captions_{key}", f"paraphrases_{key}", f"unseen_{key}"))
        rows.append([title, *(round(results[k], 3) if k in results else None for k in keys)])
    return rows


@visitor_errors
def evaluate_model(model, test_images, request: gr.Request = None, progress=gr.Progress()):
    """Zero-shot accuracy and recall@k of any CLIP on the Fashion-MNIST test images, with the captions the small
    CLIP trained on and with paraphrases no training caption used (the embeddings are stored and reused)."""
    source = resolve("clip", model)
    items = galleries.choose_gallery("Fashion-MNIST test images", None, test_images)
    report = gradio_progress(progress)

    def measure(stop: threading.Event) -> dict[str, float]:
        embedded = galleries.embed_gallery(items, source.location,
                                           galleries.encoder_loader(source.location, source.label),
                                           progress=report, stop=stop)
        if embedded.stopped:
            raise ValueError("Stopped before every test image was embedded.")
        labels = np.array([captions.CLASS_NAMES.index(item.label) for item in embedded.gallery.items])
        return evaluate(clip_model(source.location, source.label).embed_texts, embedded.vectors, labels)

    results = jobs.run(measure, name=EVALUATE_JOB, key=session_key(request))
    chance = 1 / len(captions.CLASS_NAMES)
    return (evaluation_rows(results),
            f"{source.label} on {len(items)} Fashion-MNIST test images (measured now). Chance: {chance:.0%} zero-shot. "
            f"The paraphrases (\"{captions.PARAPHRASES['Sneaker'][0]}\", …) never appear in a training caption, but "
            f"the small CLIP was tuned against them; the {len(fashion_test_set.captions())} unseen wordings were "
            "frozen before any tuning and were never used to train, tune or pick a checkpoint: they are the figure "
            "to trust for words you type yourself.")


def stop_evaluating(request: gr.Request = None):
    jobs.stop(session_key(request), EVALUATE_JOB)


# ---- 6. train a small CLIP ----------------------------------------------------------------------------


@dataclass
class TrainingRun:
    """One small-CLIP training: its job and the history its events fill, which the page polls."""
    config: TrainConfig
    job: jobs.Job | None = None
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    similarity: dict | None = None
    test: dict | None = None
    total_steps: int = 0

    def record(self, event: dict) -> None:
        kind = event["type"]
        if kind == "step":
            self.steps.append(event["step"])
            self.losses.append(event["loss"])
            self.scales.append(event["logit_scale"])
            self.total_steps = event["total_steps"]
        elif kind == "eval":
            self.evals.append(event)
        elif kind == "similarity":
            self.similarity = event
        elif kind == "test":
            self.test = event

    @property
    def status(self) -> str:
        if self.job is not None and self.job.finished:
            return self.job.status
        return "running" if self.steps else "starting"


def training_outputs(run: TrainingRun):
    curves = pd.DataFrame({"step": run.steps, "contrastive loss": run.losses, "logit scale": run.scales})
    loss = line_chart(curves, "step", "contrastive loss")
    scale = line_chart(curves, "step", "logit scale")
    similarity = None
    if run.similarity:
        similarity = heatmap_chart(run.similarity["matrix"], run.similarity["images"], run.similarity["texts"],
                                   row_title="one image of each class", column_title="caption",
                                   value_title="cosine")
    rows = [[e["step"], round(e["elapsed"]), round(e["accuracy"], 3), round(e["paraphrases"], 3)] for e in run.evals]
    return loss, scale, similarity, rows


def training_text(run: TrainingRun, name: str) -> str:
    if run.status == "failed":
        return f"**Training failed:** {short_reason(run.job.error)}"
    if run.status == "starting":
        return "Loading Fashion-MNIST and MiniLM, encoding the captions…"
    line = f"**{run.status}**: step {run.steps[-1]} of about {run.total_steps}, loss {run.losses[-1]:.3f}"
    if run.evals:
        last = run.evals[-1]
        line += (f"; validation zero-shot {last['accuracy']:.1%} with the training templates, "
                 f"{last['paraphrases']:.1%} with paraphrases")
    if run.test:
        line += (f". **Test split:** zero-shot {run.test['zero_shot_templates']:.1%} (training templates), "
                 f"{run.test['zero_shot_paraphrases']:.1%} (development paraphrases), "
                 f"{run.test['zero_shot_unseen']:.1%} (unseen test wordings); the first image found for an unseen "
                 f"wording is of its class {run.test['unseen_text_to_image@1']:.1%} of the time")
    if run.status in ("done", "stopped"):
        line += f". Saved as **local:{name}**: it is now the page's model (choose it above)."
    return line


RUNS: dict[str, TrainingRun] = {}  # each session's latest training, for its Stop button


@visitor_errors
def train_small_clip(name, max_seconds, max_steps, request: gr.Request = None):
    """Train in the background and stream its curves until it ends; the best checkpoint is saved as
    local:<name>. Stop (or leaving the page) ends training at the next step."""
    # 1. Check the inputs.
    name = check_local_name((name or "").strip())
    for what, value in (("time budget", max_seconds), ("max steps", max_steps)):
        if value is None or value < 0 or int(value) != value:
            raise ValueError(f"{what} must be a whole number >= 0, got {value}")
    config = dataclasses.replace(PAGE_DEFAULTS, max_seconds=float(max_seconds), max_steps=int(max_steps),
                                 save_as=name)
    config.check()
    # 2. Start the training job; 3. stream what it records until it ends.
    run = RUNS[session_key(request)] = TrainingRun(config)

    def work(stop: threading.Event) -> dict:
        return train(config, on_event=run.record, stop=stop)

    run.job = jobs.start(work, name=TRAIN_JOB, key=session_key(request))
    try:
        while not run.job.finished:
            yield training_text(run, name), *training_outputs(run), gr.skip()
            time.sleep(POLL_SECONDS)
        yield training_text(run, name), *training_outputs(run), gr.Dropdown(choices=choices("clip"),
                                                                             value=f"local:{name}")
    finally:
        run.job.stop.set()  # leaving the page (a cancelled event) stops the training too


def stop_training(request: gr.Request = None):
    """Stop this visitor's training at the next step, then show how it ended: the best checkpoint is tested
    and saved before the job ends (the streaming event is cancelled, so this answer carries the result)."""
    run = RUNS.get(session_key(request))
    if not jobs.stop(session_key(request), TRAIN_JOB) or run is None:
        return "Nothing is training.", gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    run.job.join()
    return (training_text(run, run.config.save_as), *training_outputs(run),
            gr.Dropdown(choices=choices("clip"), value=f"local:{run.config.save_as}"))


def build() -> gr.Blocks:
    models = choices("clip")
    with gr.Blocks(title="CLIP retrieval") as page:
        gr.Markdown(INTRO)
        opened = gr.State(None)
        # 1. Model and gallery
        gr.Markdown("## 1. Model and gallery")
        with gr.Row(equal_height=True):
            model = gr.Dropdown(models, value=models[0] if models else None, allow_custom_value=True,
                                label="CLIP model", info="A hub id when online, or a local: model trained below.")
            gallery = gr.Radio(list(galleries.GALLERIES), value="sample photos", label="Gallery")
            index_kind = gr.Radio(list(INDEX_KINDS), value=list(INDEX_KINDS)[0], label="Index")
            image_tower = gr.Radio(list(IMAGE_BACKENDS), value="PyTorch", label="Image tower runs on",
                                   info="ONNX Runtime: exported once, checked against PyTorch; often faster on a CPU.")
        with gr.Row(equal_height=True):
            uploads = gr.File(file_count="multiple", type="filepath", label="My uploads: images or a zip")
            fashion_size = gr.Number(2000, precision=0, minimum=10, maximum=10_000, label="Fashion-MNIST images")
        with gr.Row():
            embed_button = gr.Button("Embed the gallery", variant="primary")
            embed_stop = gr.Button("Stop", variant="stop")
        gallery_status = gr.Markdown()
        preview = gr.Gallery(label="The gallery (first images)", columns=GALLERY_COLUMNS, height=220)
        # 2. Search
        gr.Markdown("## 2. Search")
        with gr.Row(equal_height=True):
            query = gr.Textbox(label="Search by text", placeholder="a cat, an astronaut, a pair of sneakers", scale=3)
            k = gr.Slider(1, 20, value=5, step=1, label="Results")
            text_button = gr.Button("Search", variant="primary")
        with gr.Row(equal_height=True):
            query_image = gr.Image(type="pil", label="Search by image", height=200)
            image_button = gr.Button("Find similar images")
        results = gr.Gallery(label="Results: cosine similarity · caption", columns=GALLERY_COLUMNS, height=260,
                             elem_id="retrieval-results")
        # 3. Heatmap
        gr.Markdown("## 3. Texts against images\nCosine similarity of each text with the gallery's first images.")
        with gr.Row(equal_height=True):
            texts = gr.Textbox("a photo of a cat\na photo of an astronaut\na cup of coffee", lines=4,
                               label="Texts, one per line")
            image_count = gr.Slider(1, 12, value=6, step=1, label="Images")
            compare_button = gr.Button("Compare")
        heatmap = gr.Plot(label="Similarity", elem_id="retrieval-heatmap")
        compared = gr.Gallery(label="The images compared", columns=6, height=160)
        # 4. Zero-shot
        gr.Markdown("## 4. Zero-shot labels\nCLIP as a classifier: each label becomes a caption through the "
                    "template, and the image's similarities become probabilities. *Ensembled* averages several "
                    "templates (\"a photo of a {}\", \"a picture of a {}\", …), as CLIP's authors did.")
        with gr.Row(equal_height=True):
            label_image_input = gr.Image(type="pil", label="Image to label", height=200)
            with gr.Column():
                labels = gr.Textbox("cat, dog, astronaut, coffee, rocket", label="Labels (comma separated)")
                template = gr.Textbox(search.DEFAULT_TEMPLATE, label="Template", info="{} becomes the label.")
                label_button = gr.Button("Label", variant="primary")
        with gr.Row():
            probabilities = gr.Label(label="Probabilities (ensembled templates)", num_top_classes=5)
            label_table = table(["label", "one template", "ensembled"], "One template against an ensemble")
        # 5. Evaluate
        gr.Markdown("## 5. Evaluate on Fashion-MNIST\nHow well does the model know clothes? Zero-shot accuracy and "
                    "retrieval recall on the test split with three sets of words: the captions the small CLIP "
                    "trained on, the development paraphrases it never trained on but was tuned against "
                    "(\"running shoes\", \"something to carry on your shoulder\"…), and unseen wordings frozen "
                    "before any tuning (the honest figure for your own words).")
        with gr.Row(equal_height=True):
            test_images = gr.Number(2000, precision=0, minimum=10, maximum=10_000, label="Test images")
            evaluate_button = gr.Button("Evaluate", variant="primary")
            evaluate_stop = gr.Button("Stop", variant="stop")
        evaluation_note = gr.Markdown()
        evaluation = table(EVALUATION_COLUMNS, "Fashion-MNIST test split")
        # 6. Train
        gr.Markdown("## 6. Train a small CLIP\nA ViT image tower learns from scratch to meet the frozen MiniLM "
                    "text tower: captions like \"a photo of a sneaker\" are pulled towards their images and "
                    "pushed away from the others (CLIP's contrastive loss, with a learnable temperature). Watch "
                    "the similarity matrix of one image per class against one caption per class turn diagonal.")
        with gr.Row(equal_height=True):
            save_name = gr.Textbox("small-clip", label="Save as (local:<name>)")
            max_seconds = gr.Slider(0, 900, value=PAGE_DEFAULTS.max_seconds, step=10, label="Time budget (s)",
                                    info="0: no time limit (then set max steps)")
            max_steps = gr.Number(PAGE_DEFAULTS.max_steps, precision=0, minimum=0, label="Max steps (0 = no cap)")
            train_button = gr.Button("Train", variant="primary")
            train_stop = gr.Button("Stop", variant="stop")
        train_status = gr.Markdown()
        with gr.Row():
            loss_plot = gr.Plot(label="Contrastive loss", elem_id="retrieval-loss")
            scale_plot = gr.Plot(label="Logit scale (1 / temperature)", elem_id="retrieval-scale")
        with gr.Row():
            similarity_plot = gr.Plot(label="Similarity: one image per class × one caption per class",
                                      elem_id="retrieval-similarity")
            eval_table = table(["step", "seconds", "zero-shot (templates)", "zero-shot (paraphrases)"],
                               "Validation as it trains")

        # Events
        embedding = embed_button.click(open_gallery, [model, gallery, uploads, fashion_size, index_kind, image_tower],
                                       [opened, gallery_status, preview], api_name="retrieval_embed", **HEAVY)
        embed_stop.click(stop_embedding, None, None, cancels=[embedding], api_name="retrieval_embed_stop", **LIGHT)
        gr.on([text_button.click, query.submit], search_text, [opened, query, k], results,
              api_name="retrieval_search_text", **LIGHT)
        image_button.click(search_image, [opened, query_image, k], results, api_name="retrieval_search_image",
                           **LIGHT)
        compare_button.click(compare, [opened, texts, image_count], [heatmap, compared], api_name="retrieval_compare",
                             **LIGHT)
        label_button.click(label_image, [model, label_image_input, labels, template], [probabilities, label_table],
                           api_name="retrieval_zero_shot", **HEAVY)
        evaluating = evaluate_button.click(evaluate_model, [model, test_images], [evaluation, evaluation_note],
                                           api_name="retrieval_evaluate", **HEAVY)
        evaluate_stop.click(stop_evaluating, None, None, cancels=[evaluating], api_name="retrieval_evaluate_stop",
                            **LIGHT)
        training = train_button.click(train_small_clip, [save_name, max_seconds, max_steps],
                                      [train_status, loss_plot, scale_plot, similarity_plot, eval_table, model],
                                      api_name="retrieval_train", show_progress="hidden", **HEAVY)
        train_stop.click(stop_training, None, [train_status, loss_plot, scale_plot, similarity_plot, eval_table, model],
                         cancels=[training], api_name="retrieval_train_stop", **LIGHT)
    return page
