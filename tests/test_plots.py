"""Plots: TensorBoard smoothing by hand, grouping, and figures drawn headless."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from attn_entropy_cli import plots
from attn_entropy_cli.errors import UsageError


def test_smoothing_matches_a_hand_computed_series():
    # weight 0.6: ema_1 = 0.4*1 = 0.4 -> /0.4 = 1; ema_2 = 0.24 + 0.4*2 = 1.04 -> /0.64 = 1.625
    # ema_3 = 0.624 + 0.4*4 = 2.224 -> /0.784
    got = plots.smooth(np.array([1.0, 2.0, 4.0]), 0.6)
    assert got == pytest.approx([1.0, 1.625, 2.224 / 0.784])


def test_smoothing_off_and_non_finite_values():
    values = np.array([1.0, 3.0, 2.0])
    assert plots.smooth(values, 0.0) == pytest.approx(values)
    got = plots.smooth(np.array([1.0, math.nan, 3.0]), 0.5)
    assert got[0] == 1.0 and math.isnan(got[1])
    assert got[2] == pytest.approx((0.25 + 1.5) / 0.75)


def test_group_runs_by_first_capture_group():
    runs = ["lr1_seed1", "lr1_seed2", "lr2_seed1", "other"]
    groups = plots.group_runs(runs, r"(.*)_seed\d+")
    assert groups == {"lr1": ["lr1_seed1", "lr1_seed2"], "lr2": ["lr2_seed1"], "other": ["other"]}
    with pytest.raises(UsageError, match="has no capture group"):
        plots.group_runs(runs, "seed")
    with pytest.raises(UsageError, match="is not a regular expression"):
        plots.group_runs(runs, "(")


def run_table():
    rows = []
    for run, offset in (("a_seed1", 0.0), ("a_seed2", 1.0), ("b_seed1", 2.0)):
        for step in range(10, 60, 10):
            rows.append((run, "log", "valid", step, "ppl", 10 - step / 10 + offset, 1e9 + step))
    return pd.DataFrame(
        rows, columns=["run", "source", "split", "step", "metric", "value", "wall_time"]
    )


def test_grouped_figure_draws_mean_and_band():
    figure = plots.runs_figure(run_table(), [("ppl", "valid")], group=r"(.)_seed")
    ax = figure.axes[0]
    labels = [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]
    assert labels == ["a (2 runs)", "b"]
    mean = next(line for line in ax.lines if line.get_label() == "a (2 runs)")
    # smoothing 0.6 of the mean series 9.5, 8.5, ...: the first point is the mean itself
    assert mean.get_ydata()[0] == pytest.approx(9.5)
    assert len(ax.collections) == 1  # the min-max band


def test_relative_x_is_hours_from_the_first_record():
    figure = plots.runs_figure(run_table(), [("ppl", "valid")], smoothing=0, x="relative")
    xs = figure.axes[0].lines[0].get_xdata()
    assert xs[0] == 0 and xs[-1] == pytest.approx(40 / 3600)


def test_bad_axis_and_smoothing():
    with pytest.raises(UsageError, match="--x 'time' is not known"):
        plots.runs_figure(run_table(), [("ppl", "valid")], x="time")
    with pytest.raises(UsageError, match="--smoothing 1.5 is out of range"):
        plots.runs_figure(run_table(), [("ppl", "valid")], smoothing=1.5)


def entropy_table(steps=(None,)):
    rows = []
    for step in steps:
        for attn_type in ("enc_self", "context"):
            for layer in range(2):
                for head in range(4):
                    value = 0.5 + layer + head / 10 + (step or 0) / 1000
                    rows.append(("ckpt", attn_type, layer, head, value, step))
    return pd.DataFrame(
        rows, columns=["checkpoint", "attn_type", "layer", "head", "entropy", "step"]
    )


def test_heatmap_has_one_panel_per_type_and_a_colour_bar():
    figure = plots.heatmap_figure(entropy_table())
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[:2] == ["enc_self", "context"]
    assert len(figure.axes) == 3  # two panels and the colour bar
    image = figure.axes[0].images[0].get_array()
    assert image.shape == (2, 4) and image[1, 3] == pytest.approx(1.8)


def test_trajectory_has_one_line_per_head():
    figure = plots.trajectory_figure(entropy_table(steps=(100, 200, 300)))
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert len(visible) == 4
    assert len(visible[0].lines) == 4
    assert list(visible[0].lines[0].get_xdata()) == [100, 200, 300]
