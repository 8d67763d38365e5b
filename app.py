"""Transformer Playground: one Gradio app, a page per topic, all sharing one model cache.

    python app.py                      # http://127.0.0.1:7860
    python app.py --offline            # never touch the Hugging Face Hub
    python app.py --pages prompting    # serve a subset of the topic pages
    python -m spaces.prompting         # one page alone

Flags become environment settings (shared/settings.py) before gradio or transformers are imported,
so the whole process sees the same values. No model is loaded at start.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys

# First, before gradio or torch: our page package, which is also Hugging Face's ZeroGPU helper when that
# is installed (see spaces/__init__.py). ZeroGPU must be imported before CUDA is initialised, and gradio
# must find the helper complete when it imports `spaces` itself.
import spaces  # noqa: F401

# Topic pages in navigation order. A page is served once its package (spaces/<name>/ui.py) exists; pages
# whose topic is not built yet are simply absent, never shown as placeholders.
TOPIC_PAGES = ("prompting", "finetune", "retrieval", "diffusion", "quantization")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Transformer Playground")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live share link")
    parser.add_argument("--offline", action="store_true",
                        help="never touch the Hugging Face Hub: use the offline assets only")
    parser.add_argument("--pages", default=",".join(TOPIC_PAGES),
                        help="comma-separated topic pages to serve (default: every page that exists)")
    args = parser.parse_args(argv)
    args.pages = [p.strip() for p in args.pages.split(",") if p.strip()]
    unknown = [p for p in args.pages if p not in TOPIC_PAGES]
    if unknown:
        parser.error(f"unknown page(s) {unknown}; choose from {', '.join(TOPIC_PAGES)}")
    return args


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


def launch(demo, args: argparse.Namespace, **kwargs):
    from shared.ui import launch_kwargs

    options = dict(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(), **kwargs)
    try:
        return demo.launch(**options)
    except Exception as error:
        if not args.share:
            raise
        # A share link needs gradio's tunnel server; without it, serve locally rather than not at all.
        logging.getLogger("playground").warning("could not open a share link (%s); serving locally only", error)
        options["share"] = False
        return demo.launch(**options)


def configure(args: argparse.Namespace) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage pings from a learner's machine
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own startup requests, not ours
    if args.offline:
        from shared.settings import go_offline

        go_offline()


def main(argv: list[str] | None = None, **launch_options):
    args = parse_args(argv)
    configure(args)
    return launch(build_app(args.pages), args, **launch_options)


def serve_page(name: str, argv: list[str] | None = None):
    """Serve one page alone, as the root of its own app (what `python -m spaces.<name>` runs)."""
    args = parse_args(["--pages", ""] + list(sys.argv[1:] if argv is None else argv))
    configure(args)
    module = importlib.import_module(f"spaces.{name}.ui")
    return launch(module.build(), args)


if __name__ == "__main__":
    main()
