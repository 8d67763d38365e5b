"""The prompting page: prompt building, decoding settings, the next-token explorer, in-context learning measured.

    models.py      chat models, their backends (PyTorch, ONNX Runtime) and loading them through the cache
    prompts.py     presets and the prompt builder (chat template or plain text, fitted into the context)
    sampling.py    decoding settings, the sampling filters and the one sampler (plain numpy)
    generation.py  streamed, timed, stoppable generation as a job
    explorer.py    the next-token distribution at each filter stage, and the explorer's walk
    icl.py         in-context learning measured on labeled sentences, as a job
    recipes.py     code that reproduces a run (transformers, gradio_client)
    ui.py          the page (`build()`); `python -m spaces.prompting` serves it alone
"""
