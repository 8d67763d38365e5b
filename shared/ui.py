"""What every page's UI shares: page descriptions, event concurrency, the one error pattern, the launch.

- Heavy events (loading a model, generating, training) run in one concurrency group of one, so two
  visitors cannot each load a large model at once: `**HEAVY`. Light events (tokenizing, plotting,
  listing) run beside them, unblocked: `**LIGHT`.
- Page logic raises ValueError (or ModelLoadError / AssetUnavailable) with a message for the visitor;
  `@visitor_errors` turns those into `gr.Error`, and anything unexpected into a short gr.Error while
  the full trace goes to the server log. The app stays up either way.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from shared.assets import AssetUnavailable
from shared.cache import ModelLoadError

log = logging.getLogger("playground")

HEAVY = {"concurrency_id": "heavy", "concurrency_limit": 1}
LIGHT = {"concurrency_limit": None}
VISITOR_ERRORS = (ValueError, ModelLoadError, AssetUnavailable)
THEME = gr.themes.Soft()
CSS = """
.playground-note {font-size: 0.9em; opacity: 0.8}
"""


@dataclass(frozen=True)
class PageInfo:
    name: str  # in the navigation bar
    path: str  # URL path under the app's root
    teaches: str  # one sentence for the home page
    needs: str  # what it runs on: offline or hub, CPU or GPU


def to_gradio_error(error: Exception) -> gr.Error:
    if isinstance(error, VISITOR_ERRORS):
        return gr.Error(str(error))
    log.exception("unexpected error in an event handler")
    return gr.Error(f"Something went wrong ({type(error).__name__}: {str(error)[:200]}). The app is still running.")


def visitor_errors(fn: Callable) -> Callable:
    """Turn exceptions into gr.Error for the visitor; works for plain functions and generators."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as error:
                raise to_gradio_error(error) from error

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            raise to_gradio_error(error) from error

    return wrapper


def launch_kwargs() -> dict:
    """The arguments every launch() passes (Gradio 6 takes theme and css here, not in Blocks)."""
    return {"theme": THEME, "css": CSS, "ssr_mode": False, "show_error": True}
