"""The page's pictures: dense matrices (a positional encoding, a layer's grid of heads) as matplotlib images,
and matrices a visitor reads cell by cell (one head, one token across layers, token similarities) as Altair
charts with a tooltip on every cell. Each returns what `gr.Plot` takes, or None when there is nothing to draw.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.ui import PLOT_WIDTH, line_chart

CELL_PIXELS = 16  # an Altair matrix's cell side: a 40-token map is 640 pixels square


def figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width, height), dpi=100)
    plt.close(fig)  # gradio draws it; pyplot must not keep every figure the page ever made
    return fig


def encoding_image(encoding: np.ndarray, title: str):
    """Positions down, dimensions across, -1 blue to +1 red: the sinusoid stripes widen to the right."""
    fig = figure(9, 4)
    axes = fig.add_subplot()
    shown = axes.imshow(encoding, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    axes.set_xlabel("dimension")
    axes.set_ylabel("position")
    if title:
        axes.set_title(title)
    fig.colorbar(shown, ax=axes, fraction=0.03)
    fig.tight_layout()
    return fig


def similarity_image(matrix: np.ndarray, title: str, axis: str = "position"):
    fig = figure(5.5, 4.8)
    axes = fig.add_subplot()
    shown = axes.imshow(matrix, cmap="viridis", interpolation="nearest")
    axes.set_xlabel(axis)
    axes.set_ylabel(axis)
    if title:
        axes.set_title(title)
    fig.colorbar(shown, ax=axes, fraction=0.046)
    fig.tight_layout()
    return fig


def head_grid(weights: np.ndarray, titles: list[str], suptitle: str, columns: int = 6):
    """One small map per head of a layer (bertviz's "model view" for one layer): rows are queries, columns keys."""
    heads = weights.shape[0]
    columns = min(columns, heads)
    rows = -(-heads // columns)
    fig = figure(1.9 * columns + 0.4, 2.2 * rows + 0.5)
    for head in range(heads):
        axes = fig.add_subplot(rows, columns, head + 1)
        axes.imshow(weights[head], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        axes.set_title(titles[head], fontsize=8)
        axes.set_xticks([])
        axes.set_yticks([])
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def matrix_chart(matrix: np.ndarray, rows: list[str], columns: list[str], *, row_title: str, column_title: str,
                 value_title: str = "weight", title: str = "", domain: tuple[float, float] | None = (0, 1),
                 scheme: str = "viridis"):
    """A matrix as cells with a tooltip each; rows top to bottom and columns left to right in the order given."""
    import altair as alt
    import pandas as pd

    if matrix.size == 0:
        return None
    frame = pd.DataFrame([{"row": r, "column": c, value_title: float(v)}
                          for r, values in zip(rows, matrix) for c, v in zip(columns, values)])
    scale = alt.Scale(scheme=scheme, domain=list(domain)) if domain else alt.Scale(scheme=scheme)
    chart = alt.Chart(frame).mark_rect().encode(
        x=alt.X(field="column", type="nominal", sort=list(columns), title=column_title,
                axis=alt.Axis(labelAngle=-50, labelLimit=90)),
        y=alt.Y(field="row", type="nominal", sort=list(rows), title=row_title, axis=alt.Axis(labelLimit=120)),
        color=alt.Color(field=value_title, type="quantitative", scale=scale),
        tooltip=[alt.Tooltip(field="row", type="nominal", title=row_title),
                 alt.Tooltip(field="column", type="nominal", title=column_title),
                 alt.Tooltip(field=value_title, type="quantitative", format=".3f")],
    )
    return chart.properties(title=title, width=CELL_PIXELS * len(columns), height=CELL_PIXELS * len(rows))


def curves_chart(encoding: np.ndarray, dims: list[int]):
    import pandas as pd

    frame = pd.DataFrame([{"position": p, "value": float(encoding[p, d]), "dimension": f"dim {d}"}
                          for d in dims for p in range(len(encoding))])
    return line_chart(frame, "position", "value", color="dimension", title="PE(position, dimension)",
                      y_format=".2f")


def rope_chart(distances: np.ndarray, scores: dict[str, np.ndarray]):
    import pandas as pd

    frame = pd.DataFrame([{"distance m - n": int(d), "q·k / √d": float(s), "pair": name}
                          for name, values in scores.items() for d, s in zip(distances, values)])
    return line_chart(frame, "distance m - n", "q·k / √d", color="pair",
                      title="Rotary positions: the score of one query and one key as they move apart")


def scatter_chart(points: np.ndarray, labels: list[str], explained: tuple[float, float]):
    """The tokens' 2-D PCA projection, each point named."""
    import altair as alt
    import pandas as pd

    frame = pd.DataFrame({"PC 1": points[:, 0], "PC 2": points[:, 1], "token": labels})
    base = alt.Chart(frame).encode(
        x=alt.X(field="PC 1", type="quantitative", title=f"PC 1 ({explained[0]:.0%} of the variance)"),
        y=alt.Y(field="PC 2", type="quantitative", title=f"PC 2 ({explained[1]:.0%})"),
        tooltip=[alt.Tooltip(field="token", type="nominal")])
    points_layer = base.mark_circle(size=60)
    text = base.mark_text(align="left", dx=6, fontSize=11).encode(text=alt.Text(field="token", type="nominal"))
    return alt.layer(points_layer, text).properties(height=320, width=PLOT_WIDTH)


def bars_chart(rows: list[dict[str, Any]], x: str, y: str, title: str):
    import altair as alt
    import pandas as pd

    frame = pd.DataFrame(rows)
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X(field=x, type="nominal", sort=None, title=x, axis=alt.Axis(labelAngle=0)),
        y=alt.Y(field=y, type="quantitative", title=y),
        tooltip=[alt.Tooltip(field=x, type="nominal"), alt.Tooltip(field=y, type="quantitative", format=".3f")],
    ).properties(title=title, height=200, width=PLOT_WIDTH)
