"""Recipes: code a visitor can copy to reproduce what the page just ran, with transformers alone or by
calling the running page through gradio_client.

    python_recipe("local:smollm2-135m-instruct", prompt, settings, backend="onnx-int8")
    generate_client_recipe(url, model="...", backend="auto", ..., settings=settings)

The gradio_client calls name every input by keyword; the names are the page's handler parameters (what
`Client.view_api()` lists), so a recipe keeps working if the page reorders its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spaces.prompting.models import BACKENDS
from spaces.prompting.prompts import EXAMPLE_COLUMNS, BuiltPrompt
from spaces.prompting.sampling import SamplingSettings

HUB_ID_OF_ASSET = {"local:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def python_recipe(model_label: str, prompt: BuiltPrompt, settings: SamplingSettings, backend: str = "pytorch") -> str:
    """A transformers snippet that reproduces a generation: the same prompt text, settings and seed."""
    model_id = HUB_ID_OF_ASSET.get(model_label, model_label)
    kwargs = settings.generate_kwargs()
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    note = f"  # the page ran {model_label}, built from this model" if model_id != model_label else ""
    header = ""
    if backend != "pytorch":
        header = (f"# The page ran this on {BACKENDS[backend]} (shared/onnx_lm.py in Transformer Playground), with "
                  "its own seeded sampler.\n# transformers below runs the same prompt and settings in PyTorch: "
                  "the text can differ after a few tokens.\n")
    return header + f'''import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

model_id = {model_id!r}{note}
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32).eval()

# The exact prompt the page sent ({"chat template applied" if prompt.chat else "plain text"}).
prompt = {prompt.text!r}
inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens={not prompt.chat})
set_seed({settings.seed})
output = model.generate(**inputs, {args})
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
'''


def client_recipe(url: str, api_name: str, inputs: dict[str, Any], outputs: Sequence[str], show: str,
                  notes: dict[str, str] | None = None) -> str:
    """A gradio_client call of `api_name` with `inputs` by keyword (each with an optional comment from
    `notes`), unpacking the `outputs` and printing `show`."""
    notes = notes or {}
    arguments = "".join(f"    {name}={value!r},{'  # ' + notes[name] if name in notes else ''}\n"
                        for name, value in inputs.items())
    return (f"from gradio_client import Client\n\nclient = Client({url!r})\n"
            f"{', '.join(outputs)} = client.predict(\n{arguments}    api_name={api_name!r},\n)\nprint({show})\n")


def generate_client_recipe(url: str, model: str, backend: str, instruction: str, examples: Sequence[tuple[str, str]],
                           shots: int, query: str, settings: SamplingSettings) -> str:
    """A gradio_client call of the page's generate endpoint with the same inputs (`examples`: those the prompt
    used, `shots` of them)."""
    inputs = {"model": model, "backend": backend, "instruction": instruction,
              "examples": {"headers": EXAMPLE_COLUMNS, "data": [list(e) for e in examples]}, "shots": shots,
              "query": query, "mode": settings.mode, "temperature": settings.temperature, "top_k": settings.top_k,
              "top_p": settings.top_p, "max_new_tokens": settings.max_new_tokens,
              "repetition_penalty": settings.repetition_penalty, "seed": settings.seed}
    outputs = ["prompt", "prompt_info", "text", "stats", "seed", "python_recipe", "client_recipe"]
    return client_recipe(url, "/prompting_generate", inputs, outputs, "text",
                         notes={"backend": "runs on: " + ", ".join(BACKENDS)})


def icl_client_recipe(url: str, model: str, backend: str, settings: Any, calibration: bool) -> str:
    """A gradio_client call of the page's in-context learning endpoint with the same settings (an uploaded CSV
    is left out: the recipe evaluates the movie sentences)."""
    inputs = {"model": model, "backend": backend, "n_sentences": settings.n,
              "shot_counts": ", ".join(str(k) for k in settings.shot_counts), "seed": settings.base_seed,
              "seeds": settings.seeds, "formats": list(settings.formats), "label_words": settings.label_set,
              "demo_labels": settings.demo_labels, "calibration": calibration, "data_file": None}
    outputs = ["accuracy_plot", "bias_plot", "summary", "bias", "all_runs", "prompts", "status", "recipe"]
    return client_recipe(url, "/prompting_icl", inputs, outputs, "status")
