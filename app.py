"""Transformer Playground: one Gradio app, a page per topic, all sharing one model cache.

    python app.py                      # http://127.0.0.1:7860
    python app.py --offline            # never touch the Hugging Face Hub
    python app.py --pages prompting    # serve a subset of the topic pages
    python -m spaces.prompting         # one page alone

Flags, configuration and the launch live in shared/launch.py (pages served alone use them too); this file
composes the pages. No model is loaded at start.
"""

from __future__ import annotations

import importlib
import importlib.util

# First, before gradio or torch: our page package, which is also Hugging Face's ZeroGPU helper when that
# is installed (see spaces/__init__.py). ZeroGPU must be imported before CUDA is initialised, and gradio
# must find the helper complete when it imports `spaces` itself.
import spaces  # noqa: F401

from shared.launch import configure, launch, parse_args

# Topic pages in navigation order. A page is served once its package (spaces/<name>/ui.py) exists; pages
# whose topic is not built yet are simply absent, never shown as placeholders.
TOPIC_PAGES = ("prompting", "finetune", "retrieval", "diffusion", "quantization", "inside")


def available_pages(names: list[str]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(f"spaces.{n}") and importlib.util.find_spec(f"spaces.{n}.ui")]


def build_app(pages: list[str]):
    """The multipage app: the home page at /, then one route per available topic page."""
    import gradio as gr

    from spaces.home import ui as home

    modules = [importlib.import_module(f"spaces.{name}.ui") for name in available_pages(pages)]
    # Each page is built outside any Blocks context, then rendered once into its place: a Blocks created
    # inside another's context would be rendered there already, and render() would add a second copy.
    home_page = home.build([m.PAGE for m in modules])
    topic_pages = [(m.PAGE, m.build()) for m in modules]
    with gr.Blocks(title="Transformer Playground") as demo:
        home_page.render()
    for info, page in topic_pages:
        with demo.route(info.name, info.path):
            page.render()
    # One queue for the whole app (gradio's, default concurrency 1 per event); heavy events share the
    # "heavy" group of one (shared/ui.py). Calling demo.queue() here would rebuild the server app for nothing.
    return demo


def main(argv: list[str] | None = None, **launch_options):
    args = parse_args(argv, pages=TOPIC_PAGES)
    configure(args)
    return launch(build_app(args.pages), args, **launch_options)


if __name__ == "__main__":
    main()
