"""The home page's UI: `build(pages)` returns its Blocks. Alone: `python -m spaces.home`."""

from __future__ import annotations

import gradio as gr

from shared.registry import choices
from shared.ui import HEAVY, LIGHT, PageInfo, table, visitor_errors
from spaces.home import logic

INTRO = """# Transformer Playground
Learn how modern models behave by using them: every page runs a real model and shows what it does, with
numbers and plots. Models come from the Hugging Face Hub when it can be reached; without it, the pages
fall back to weights and data that ship inside pip and Debian packages, and the tables below say which.
"""


def pages_markdown(pages: list[PageInfo]) -> str:
    if not pages:
        return "_No topic pages are served yet: this build has the foundation only._"
    lines = ["| page | what it teaches | what it needs |", "|---|---|---|"]
    lines += [f"| [{p.name}]({p.path}) | {p.teaches} | {p.needs} |" for p in pages]
    return "\n".join(lines)


def cache_panel():
    """The cache panel's outputs: loaded table, evict choices, usage line."""
    return logic.loaded_rows(), gr.Dropdown(choices=logic.loaded_names(), value=None), logic.cache_usage()


@visitor_errors
def load_model(role: str, choice: str, progress=gr.Progress(track_tqdm=True)):
    """Load a role's model; a first download from the hub shows its files' progress bars (huggingface_hub's)."""
    return logic.load_model(role, choice), *cache_panel()


@visitor_errors
def evict_model(name: str | None):
    return logic.evict(name), *cache_panel()


def show_environment():
    return logic.environment_rows(), logic.role_rows(), *cache_panel()


@visitor_errors
def show_models(role: str):
    """The Load box's choices for `role`: hub choices when online; offline and saved models always (saved ones
    are offered again after a restart)."""
    return gr.Dropdown(choices=choices(role), value="")


def build(pages: list[PageInfo] | None = None) -> gr.Blocks:
    with gr.Blocks(title="Transformer Playground") as page:
        gr.Markdown(INTRO)
        gr.Markdown(pages_markdown(pages or []))
        roles = gr.Dataframe(headers=["role", "what", "model in use", "from"], label="Model roles",
                             interactive=False, wrap=True)
        environment = gr.Dataframe(headers=["setting", "value"], label="Where models run", interactive=False,
                                   wrap=True)
        gr.Markdown("## Model cache\nEvery page asks one cache for its models: each is loaded once, and the "
                    "least recently used are evicted when the memory budget would be passed.")
        with gr.Row(equal_height=True):
            role = gr.Dropdown(logic.loadable_roles(), value="encoder", label="Role",
                               info="Roles whose page adds their loader appear here.")
            choice = gr.Dropdown(choices("encoder"), value="", label="Model (optional)",
                                 allow_custom_value=True, info="Empty: the role's default. Type a hub id like gpt2; "
                                                               "paths are refused.")
            load = gr.Button("Load", variant="primary", scale=0, min_width=120)
        status = gr.Markdown()
        usage = gr.Markdown()
        loaded = table(logic.LOADED_COLUMNS, "Loaded models")
        with gr.Row(equal_height=True):
            evict_name = gr.Dropdown([], label="Model to evict", allow_custom_value=True,
                                     info="Empty: evict every model.")
            evict = gr.Button("Evict", scale=0, min_width=120)
            refresh = gr.Button("Refresh", scale=0, min_width=120)

        panel = [loaded, evict_name, usage]
        page.load(show_environment, outputs=[environment, roles, *panel], api_name="home_environment", **LIGHT)
        refresh.click(show_environment, outputs=[environment, roles, *panel], api_name="home_refresh", **LIGHT)
        gr.on([page.load, role.change], show_models, inputs=role, outputs=choice, api_name="home_models", **LIGHT)
        load.click(load_model, inputs=[role, choice], outputs=[status, *panel], api_name="home_load", **HEAVY)
        evict.click(evict_model, inputs=evict_name, outputs=[status, *panel], api_name="home_evict", **LIGHT)
    return page
