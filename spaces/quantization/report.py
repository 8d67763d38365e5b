"""The quantization page's figures as a table and charts: speed as a ratio to fp32 measured in the same run, the
Pareto front of latency against quality, bars of speed, size and memory. Plain Python and Altair, no Gradio.

    frame = results_frame(rows, reference="pytorch-fp32")
    front = pareto_front(points, quality_higher=True)        # indices of the variants nothing beats on both axes
    scatter_chart(frame, "accuracy", quality_higher=True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from spaces.quantization.runner import Row

LATENCY = "p50 ms"
SPEEDUP = "speed × fp32"  # fp32's p50 latency / the variant's, both measured in this comparison
FIRST_COLUMNS = ("variant", "status", LATENCY, "p95 ms", SPEEDUP)
LAST_COLUMNS = ("disk MB", "memory MB", "peak RSS MB", "build s", "load s", "notes")
TEXT_COLUMNS = ("greedy output",)  # long text: shown side by side in its own table, not in the figures


def pareto_front(points: Sequence[tuple[float, float]], quality_higher: bool = True) -> list[int]:
    """Indices of the points on the front of (latency, quality): no other point is at least as fast and at least
    as good, and strictly better in one. Sorted fastest first."""
    def better_or_equal(a: float, b: float) -> bool:
        return a >= b if quality_higher else a <= b

    front = []
    for i, (latency, quality) in enumerate(points):
        dominated = any(
            other_latency <= latency and better_or_equal(other_quality, quality)
            and (other_latency < latency or other_quality != quality)
            for j, (other_latency, other_quality) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def results_frame(rows: Sequence[Row], reference: str) -> pd.DataFrame:
    """One row per variant: its figures, the speed ratio to the reference, its status (and reason)."""
    base = next((r.figures.get(LATENCY) for r in rows if r.variant == reference and r.figures), None)
    records = []
    for row in rows:
        record: dict[str, Any] = {"variant": row.title, "status": row.status}
        for key, value in row.figures.items():
            if key not in TEXT_COLUMNS:
                record[key] = value
        latency = row.figures.get(LATENCY)
        record[SPEEDUP] = base / latency if base and latency else None
        if row.reason:
            record["notes"] = row.reason if not record.get("notes") else f"{row.reason}; {record['notes']}"
        records.append(record)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return frame
    middle = [c for c in frame.columns if c not in FIRST_COLUMNS and c not in LAST_COLUMNS]
    order = [c for c in FIRST_COLUMNS if c in frame] + middle + [c for c in LAST_COLUMNS if c in frame]
    return frame[order]


def rounded(frame: pd.DataFrame) -> pd.DataFrame:
    """Figures with three significant digits, for the table."""
    def fmt(value: Any) -> Any:
        if isinstance(value, float):
            if math.isnan(value):
                return None  # a figure this variant has not got (it failed, or the family does not measure it)
            return float(f"{value:.3g}") if abs(value) < 1e5 else round(value)
        return value

    values = [[fmt(value) for value in row] for row in frame.itertuples(index=False)]
    return pd.DataFrame(values, columns=frame.columns, dtype=object)  # object: a blank stays None, not NaN


def measured(frame: pd.DataFrame, quality: str) -> pd.DataFrame:
    """The variants that have both a latency and the quality figure."""
    if frame.empty or LATENCY not in frame or quality not in frame:
        return frame.iloc[0:0]
    return frame.dropna(subset=[LATENCY, quality])


def scatter_chart(frame: pd.DataFrame, quality: str, quality_higher: bool = True):
    """Latency (log scale) against quality, one labelled point per variant, the Pareto front joined by a line."""
    import altair as alt

    data = measured(frame, quality).copy()
    if data.empty:
        return None
    points = list(zip(data[LATENCY].astype(float), data[quality].astype(float)))
    front = set(pareto_front(points, quality_higher))
    data["on the Pareto front"] = ["yes" if i in front else "no" for i in range(len(data))]
    data = data[["variant", LATENCY, quality, "on the Pareto front"]]
    x = alt.X(field=LATENCY, type="quantitative", scale=alt.Scale(type="log", nice=False),
              title="latency at batch 1, p50 ms (log scale; left is faster)")
    y = alt.Y(field=quality, type="quantitative", scale=alt.Scale(zero=False), axis=alt.Axis(format=".3~g"),
              title=f"{quality} ({'higher' if quality_higher else 'lower'} is better)")
    colour = alt.Color(field="on the Pareto front", type="nominal", scale=alt.Scale(domain=["yes", "no"],
                       range=["#d62728", "#7f7f7f"]), legend=alt.Legend(orient="bottom"))
    base = alt.Chart(data)
    marks = base.mark_point(filled=True, size=90).encode(
        x=x, y=y, color=colour, tooltip=["variant", alt.Tooltip(field=LATENCY, type="quantitative", format=".3g"),
                                          alt.Tooltip(field=quality, type="quantitative", format=".4g")])
    labels = base.mark_text(align="left", dx=7, dy=-6, fontSize=11).encode(x=x, y=y, text="variant")
    line = alt.Chart(data[data["on the Pareto front"] == "yes"].sort_values(LATENCY)).mark_line(
        color="#d62728", strokeDash=[4, 3]).encode(x=x, y=y)
    return alt.layer(line, marks, labels).properties(height=320, width="container",
                                                     title="Speed against quality: the red points are the Pareto front")


def bar_charts(frame: pd.DataFrame):
    """Three bar charts, one above the other: speed as a multiple of fp32, size on disk, peak resident memory."""
    import altair as alt

    metrics = [(SPEEDUP, "speed × fp32 (batch 1)"), ("disk MB", "size on disk, MB"),
               ("peak RSS MB", "peak resident memory, MB")]
    charts = []
    for column, title in metrics:
        if column not in frame:
            continue
        data = frame.dropna(subset=[column])[["variant", column]]
        if data.empty:
            continue
        charts.append(alt.Chart(data).mark_bar().encode(
            y=alt.Y(field="variant", type="nominal", sort=list(data["variant"]), title=None,
                    axis=alt.Axis(labelLimit=220)),
            x=alt.X(field=column, type="quantitative", title=title, axis=alt.Axis(format="~g")),
            tooltip=["variant", alt.Tooltip(field=column, type="quantitative", format=".3g")],
        ).properties(width=380, height=max(60, 20 * len(data))))
    if not charts:
        return None
    return alt.vconcat(*charts)


def outputs_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """The LM's greedy output of the same prompt under each variant, side by side."""
    records = [{"variant": r.title, "greedy output": r.figures["greedy output"]}
               for r in rows if r.figures.get("greedy output") is not None]
    return pd.DataFrame.from_records(records, columns=["variant", "greedy output"])
