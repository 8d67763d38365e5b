"""Transformer Playground's pages: one subpackage per topic (`spaces.home`, `spaces.prompting`, ...).

Hugging Face's ZeroGPU helper is also imported as `spaces` -- by Space code (`@spaces.GPU`) and by
gradio itself, which calls `spaces.gradio_auto_wrap` on every event when it runs on a Space. Running
from this repo, this package shadows that one, so it stands in for it:

- when Hugging Face's package is installed, its folder joins this package's `__path__` and its
  `__init__` runs here, so `spaces.GPU`, `spaces.gradio_auto_wrap` and `spaces.zero` are the real ones;
- when it is not, `GPU` and `gradio_auto_wrap` are no-ops that return the function unchanged.

This is the only module that touches ZeroGPU; it imports nothing heavy, so it runs before CUDA is
initialised. Our page folders must not reuse the helper's module names (config, gradio, utils, zero).
"""

import importlib.machinery
import os
import sys

_THIS_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _find_huggingface_spaces():
    """The spec of Hugging Face's `spaces` package on sys.path, skipping this repo; None if not installed."""
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != _THIS_ROOT]
    spec = importlib.machinery.PathFinder.find_spec("spaces", others)
    return spec if spec is not None and spec.origin and spec.submodule_search_locations else None


_hf_spec = _find_huggingface_spaces()
HUGGINGFACE_SPACES = _hf_spec is not None  # True: the real ZeroGPU helper is merged in

if HUGGINGFACE_SPACES:
    __path__.extend(_hf_spec.submodule_search_locations)
    with open(_hf_spec.origin, encoding="utf-8") as _source:
        # Its relative imports (`from .zero.decorator import GPU`) now resolve through our __path__.
        exec(compile(_source.read(), _hf_spec.origin, "exec"), globals())
else:

    def GPU(task=None, **kwargs):
        """No-op stand-in for `spaces.GPU`: `@GPU` and `@GPU(duration=60)` return the function unchanged."""
        if callable(task):
            return task
        return lambda function: function

    def gradio_auto_wrap(task):
        """No-op stand-in for the hook gradio calls on every event when running on a Space."""
        return task
