"""Drawing runs and entropy tables onto matplotlib axes.

Figures are built with `matplotlib.figure.Figure`, never pyplot's global state, so drawing
works headless and in threads. Each `draw_*` helper takes an `ax` and returns what it drew.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from attn_entropy_cli import schema as s
from attn_entropy_cli.errors import UsageError

X_AXES = ("step", "relative", "wall")
X_LABELS = {"step": "step", "relative": "hours since the run's first record", "wall": "time"}


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average, debiased by 1 - weight^n.

    Non-finite values are passed through and do not enter the average.
    """
    out = np.array(values, dtype=float)
    if weight <= 0:
        return out
    last, count = 0.0, 0
    for i, value in enumerate(out):
        if not math.isfinite(value):
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        out[i] = last / (1 - weight**count)
    return out


def x_values(points: pd.DataFrame, x: str, origin: float) -> pd.Series:
    """The x coordinate of each point: step, hours since `origin`, or wall-clock time."""
    if x == "step":
        return points[s.STEP]
    if x == "relative":
        return (points[s.WALL_TIME] - origin) / 3600.0
    return pd.to_datetime(points[s.WALL_TIME], unit="s")


def group_runs(runs: list[str], pattern: str | None) -> dict[str, list[str]]:
    """Curves to draw: each run alone, or runs sharing the regex's first group together."""
    if not pattern:
        return {run: [run] for run in runs}
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise UsageError(
            f"--group {pattern!r} is not a regular expression ({error}). Fix it"
        ) from None
    if regex.groups < 1:
        raise UsageError(f"--group {pattern!r} has no capture group. Add one, e.g. '(.*)_seed'")
    groups: dict[str, list[str]] = {}
    for run in runs:
        match = regex.search(run)
        key = match.group(1) if match and match.group(1) is not None else run
        groups.setdefault(key, []).append(run)
    return groups


def draw_curve(ax, points: pd.DataFrame, label: str, color, smoothing: float, x: str, origin):
    """One run's series: the raw curve faint, the smoothed one solid."""
    xs = x_values(points, x, origin)
    values = points[s.VALUE].to_numpy(dtype=float)
    faint = ax.plot(xs, values, color=color, alpha=0.25, linewidth=1)
    solid = ax.plot(xs, smooth(values, smoothing), color=color, linewidth=1.6, label=label)
    return faint + solid


def draw_group(ax, points: pd.DataFrame, label: str, color, smoothing: float):
    """Several runs as one curve over steps: their mean, with a band from min to max."""
    wide = points.pivot_table(index=s.STEP, columns=s.RUN, values=s.VALUE, aggfunc="last")
    steps = wide.index.to_numpy()
    mean = wide.mean(axis=1).to_numpy()
    band = ax.fill_between(steps, wide.min(axis=1), wide.max(axis=1), color=color, alpha=0.15)
    solid = ax.plot(steps, smooth(mean, smoothing), color=color, linewidth=1.6, label=label)
    return [band, *solid]


def runs_figure(
    table: pd.DataFrame,
    panels: list[tuple[str, str]],
    smoothing: float = 0.6,
    x: str = "step",
    group: str | None = None,
) -> Figure:
    """One panel per (metric, split), one colour per run or group of runs."""
    if x not in X_AXES:
        raise UsageError(f"--x {x!r} is not known. Use one of {', '.join(X_AXES)}")
    if not 0 <= smoothing < 1:
        raise UsageError(f"--smoothing {smoothing} is out of range. Use a value in [0, 1)")
    runs = list(dict.fromkeys(table[s.RUN]))
    curves = group_runs(runs, group)
    if group and x != "step" and any(len(members) > 1 for members in curves.values()):
        raise UsageError("--group averages runs step by step. Use it with --x step")
    origins = table.groupby(s.RUN)[s.WALL_TIME].min()

    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5.2 * columns, 3.6 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    colors = {key: f"C{i % 10}" for i, key in enumerate(curves)}
    for ax, (metric, split) in zip(axes, panels):
        chosen = table[(table[s.METRIC] == metric) & (table[s.SPLIT] == split)]
        chosen = chosen[chosen[s.VALUE].notna()]
        for key, members in curves.items():
            points = chosen[chosen[s.RUN].isin(members)].sort_values(s.STEP)
            if points.empty:
                continue
            if len(members) > 1:
                draw_group(ax, points, f"{key} ({len(members)} runs)", colors[key], smoothing)
            else:
                origin = origins[members[0]]
                draw_curve(ax, points, key, colors[key], smoothing, x, origin)
        ax.set_title(f"{metric} ({split})")
        ax.set_xlabel(X_LABELS[x])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return figure


def draw_heatmap(ax, entries: pd.DataFrame, unit: str, vmin: float, vmax: float):
    """A layer x head grid of entropy for one attention type, each cell annotated."""
    grid = entries.pivot_table(index=s.LAYER, columns=s.HEAD, values=s.ENTROPY)  # (layer, head)
    image = ax.imshow(grid.to_numpy(), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [str(h) for h in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(layer) for layer in grid.index])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if grid.size <= 256:
        middle = (vmin + vmax) / 2
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            color = "black" if value > middle else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=color, fontsize=8)
    return image


def heatmap_figure(table: pd.DataFrame, unit: str = "nats", title: str | None = None) -> Figure:
    """One heatmap panel per attention type, sharing one colour bar."""
    types = list(dict.fromkeys(table[s.ATTN_TYPE]))
    figure = Figure(figsize=(1.6 + 3.8 * len(types), 3.8), layout="constrained")
    axes = figure.subplots(1, len(types), squeeze=False).ravel()
    vmin, vmax = float(table[s.ENTROPY].min()), float(table[s.ENTROPY].max())
    image = None
    for ax, attn_type in zip(axes, types):
        image = draw_heatmap(ax, table[table[s.ATTN_TYPE] == attn_type], unit, vmin, vmax)
        ax.set_title(attn_type)
    figure.colorbar(image, ax=list(axes), label=f"entropy ({unit})")
    if title:
        figure.suptitle(title)
    return figure


def draw_head_lines(ax, entries: pd.DataFrame):
    """Entropy of each head over training steps, one line per head."""
    lines = []
    for head, points in entries.groupby(s.HEAD):
        points = points.sort_values(s.STEP)
        lines += ax.plot(points[s.STEP], points[s.ENTROPY], marker="o", label=f"head {head}")
    return lines


def trajectory_figure(table: pd.DataFrame, unit: str = "nats") -> Figure:
    """One panel per (attention type, layer), one line per head over checkpoint steps."""
    panels = list(dict.fromkeys(zip(table[s.ATTN_TYPE], table[s.LAYER])))
    columns = min(len(panels), 4)
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    for ax, (attn_type, layer) in zip(axes, panels):
        entries = table[(table[s.ATTN_TYPE] == attn_type) & (table[s.LAYER] == layer)]
        draw_head_lines(ax, entries)
        ax.set_title(f"{attn_type} layer {layer}")
        ax.set_xlabel("step")
        ax.set_ylabel(f"entropy ({unit})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return figure


def entropy_figure(
    table: pd.DataFrame, heatmap_at: int | None = None, bits: bool = False, name: str = "table"
) -> Figure:
    """The figure of an entropy table: the heatmap of one checkpoint, or, over several
    checkpoint steps, one line per head (or the heatmap of step `heatmap_at`)."""
    unit = str(table[s.UNIT].iloc[0]) if s.UNIT in table.columns else "nats"
    if bits and unit == "nats":
        table = table.assign(**{s.ENTROPY: table[s.ENTROPY] / math.log(2)})
        unit = "bits"
    steps = sorted(table[s.STEP].dropna().unique()) if s.STEP in table.columns else []
    if heatmap_at is not None:
        if heatmap_at not in steps:
            known = ", ".join(str(int(v)) for v in steps) or "none"
            raise UsageError(f"--heatmap-at {heatmap_at} is not in {name}. Steps: {known}")
        chosen = table[table[s.STEP] == heatmap_at]
        return heatmap_figure(chosen, unit, f"step {heatmap_at}")
    if len(steps) > 1:
        return trajectory_figure(table, unit)
    return heatmap_figure(table, unit)
