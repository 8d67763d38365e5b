"""What every page's UI shares: page descriptions, event concurrency, the one error pattern, progress,
plots and tables, the launch options.

- Heavy events (loading a model, generating, training) run in one concurrency group of one, so two
  visitors cannot each load a large model at once: `**HEAVY`. Light events (tokenizing, plotting,
  listing) run beside them, unblocked: `**LIGHT`.
- Page logic raises ValueError (or ModelLoadError / AssetUnavailable) with a message for the visitor;
  `@visitor_errors` turns those into `gr.Error`, a hub failure raised anywhere into its one line
  (shared/hub.py `hub_error_message`), and anything unexpected into a short gr.Error while
  the full trace goes to the server log. The app stays up either way.
- Logic reports progress as `progress(fraction, text)` (shared/jobs.py); `gradio_progress` adapts a
  `gr.Progress` to that shape.
- Plots come from `line_chart` (an Altair chart for `gr.Plot`): integer axes for steps and counts, two or three
  significant digits, lines with points (a one-point run still shows), intervals as error bars. `table` makes read-only tables whose headers
  never wrap letter by letter.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
.altair .vega-embed {display: block; width: 100%}  /* charts of width "container" fill their column */
"""


@dataclass(frozen=True)
class PageInfo:
    name: str  # in the navigation bar
    path: str  # URL path under the app's root
    teaches: str  # one sentence for the home page
    needs: str  # what it runs on: offline or hub, CPU or GPU


def to_gradio_error(error: Exception) -> gr.Error:
    """The visitor's one line: the message of a visitor error, a hub failure in words (shared/hub.py: gated,
    missing, custom code, the hub stopped answering...), else a short note while the trace goes to the log."""
    from shared.hub import hub_error_message

    if isinstance(error, (ModelLoadError, AssetUnavailable)):
        return gr.Error(str(error))
    if message := hub_error_message(error):
        log.info("hub failure shown to the visitor: %s (%s)", message, type(error).__name__)
        return gr.Error(message)
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


def session_key(request: gr.Request | None) -> str:
    """The visitor's session: what shared/jobs.py keys a Stop on."""
    from shared.jobs import NO_SESSION

    return getattr(request, "session_hash", None) or NO_SESSION


def gradio_progress(progress: gr.Progress):
    """A `progress(fraction, text)` callback (shared/jobs.Progress) that drives Gradio's progress bar."""

    def report(fraction: float, text: str) -> None:
        progress(fraction, desc=text)

    return report


# ---- plots and tables ------------------------------------------------------------------------------------

PLOT_HEIGHT = 240
PLOT_WIDTH = "container"  # fill the plot's column


def line_chart(frame, x: str, y: str, color: str | None = None, title: str = "", *, low: str | None = None,
               high: str | None = None, x_integer: bool = True, y_format: str = ".3~g",
               y_domain: tuple[float, float] | None = None, height: int = PLOT_HEIGHT):
    """A line chart with a point at every value, for `gr.Plot`.

    `x_integer`: ticks on whole numbers only (steps, shots, epochs). `y_format`: a d3 format, three significant
    digits by default. `low`/`high`: columns with an interval drawn as an error bar at each point.
    `y_domain`: a fixed scale (accuracies: (0, 1)); otherwise it fits the data, without forcing zero in.
    None when there is nothing to draw, so `gr.Plot` shows its empty state rather than bare axes.
    """
    import altair as alt

    if len(frame) == 0:
        return None
    if x_integer:
        # A few whole numbers (shots 0, 1, 4) get a tick each and nothing between; many (steps) get nice ticks.
        values = sorted({int(v) for v in frame[x]})
        x_axis = alt.Axis(format="d", values=values) if len(values) <= 12 else alt.Axis(format="d", tickMinStep=1)
    else:
        x_axis = alt.Axis(format="~g")
    # A little room on both sides, so the points at the ends are drawn whole, not cut by the frame.
    low_x, high_x = float(frame[x].min()), float(frame[x].max())
    margin = max(0.03 * (high_x - low_x), 0.2 if x_integer else 1e-9)
    x_scale = alt.Scale(domain=[low_x - margin, high_x + margin], nice=False, zero=False)
    y_scale = alt.Scale(domain=list(y_domain)) if y_domain else alt.Scale(zero=False)
    encoding: dict[str, Any] = {
        "x": alt.X(field=x, type="quantitative", axis=x_axis, scale=x_scale, title=x),
        "y": alt.Y(field=y, type="quantitative", axis=alt.Axis(format=y_format), scale=y_scale, title=y),
        "tooltip": [alt.Tooltip(field=x, type="quantitative", format="d" if x_integer else "~g"),
                    alt.Tooltip(field=y, type="quantitative", format=y_format)],
    }
    if color:
        encoding["color"] = alt.Color(field=color, type="nominal", title=None, legend=alt.Legend(orient="bottom"))
    base = alt.Chart(frame)
    chart = base.mark_line(point=alt.OverlayMarkDef(size=40, filled=True), clip=True).encode(**encoding)
    if low and high:
        bars = base.mark_errorbar(ticks=True).encode(
            x=encoding["x"], y=alt.Y(field=low, type="quantitative", scale=y_scale, title=y), y2=alt.Y2(field=high),
            **({"color": encoding["color"]} if color else {}))
        chart = alt.layer(bars, chart)
    return chart.properties(title=title, height=height, width=PLOT_WIDTH)


def heatmap_chart(matrix, rows: list[str], columns: list[str], row_title: str = "", column_title: str = "",
                  value_title: str = "similarity", value_format: str = ".2f", height: int = PLOT_HEIGHT):
    """A matrix as coloured cells with the value written in each (a similarity matrix, attention weights),
    for `gr.Plot`; rows top to bottom and columns left to right in the order given."""
    import altair as alt
    import pandas as pd

    values = [[float(v) for v in row] for row in matrix]
    if not values or not values[0]:
        return None
    frame = pd.DataFrame([{"row": r, "column": c, value_title: v}
                          for r, row in zip(rows, values) for c, v in zip(columns, row)])
    encoding = {"x": alt.X(field="column", type="nominal", sort=list(columns), title=column_title,
                           axis=alt.Axis(labelAngle=-30, labelLimit=160)),
                "y": alt.Y(field="row", type="nominal", sort=list(rows), title=row_title,
                           axis=alt.Axis(labelLimit=200))}
    base = alt.Chart(frame).encode(**encoding)
    cells = base.mark_rect().encode(color=alt.Color(field=value_title, type="quantitative",
                                                    scale=alt.Scale(scheme="viridis")),
                                    tooltip=[alt.Tooltip(field=value_title, type="quantitative",
                                                         format=value_format)])
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text(field=value_title, type="quantitative", format=value_format),
        color=alt.value("white"))
    return alt.layer(cells, text).properties(height=max(height, 28 * len(rows)), width=PLOT_WIDTH)


def table(headers: list[str], label: str, **kwargs) -> gr.Dataframe:
    """A read-only table of figures. Cells do not wrap, so each column is as wide as its header and values
    (wrapping squeezed a many-column table's headers to a letter a line); a wide table scrolls sideways."""
    return gr.Dataframe(headers=headers, label=label, interactive=False, wrap=False, **kwargs)


def launch_kwargs() -> dict:
    """The arguments every launch() passes (Gradio 6 takes theme and css here, not in Blocks)."""
    from shared.settings import read_settings

    # Images a page writes for visitors to keep (the diffusion page's PNGs) live under PLAYGROUND_HOME/outputs,
    # which may be outside the working directory: Gradio serves only the folders it is told of.
    return {"theme": THEME, "css": CSS, "ssr_mode": False, "show_error": True,
            "allowed_paths": [str(read_settings().outputs_dir)]}
