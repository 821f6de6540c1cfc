"""Summaries of runs side by side: statistics per metric, values at chosen steps, and flags.

Everything here takes and returns DataFrames; rendering happens in `report`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from attn_entropy_cli import schema as s
from attn_entropy_cli.errors import UsageError

DEFAULT_METRICS = (s.ATTENTION_ENTROPY, "ppl", "accuracy")
DEFAULT_SPLITS = ("progress", "valid")
FLAG_METRICS = (s.ATTENTION_ENTROPY, "ppl", "xent")  # the metrics the flags judge
FLAGS = ("not-computed", "uniform", "collapse", "diverged")
KEY = [s.RUN, s.SPLIT, s.METRIC]


@dataclass(frozen=True)
class CompareOptions:
    """What `compare` summarises and how it judges runs."""

    metrics: tuple[str, ...] | None = None  # rows of the summary; None: DEFAULT_METRICS
    splits: tuple[str, ...] | None = None  # splits summarised; None: DEFAULT_SPLITS
    baseline: str | None = None  # run the others are measured against
    at_steps: tuple[int, ...] = ()  # steps for the table of values at steps
    collapse_below: float = 0.5  # attention entropy (nats) under which a head has collapsed
    collapse_fraction: float = 0.25  # ... or under this fraction of its own running maximum
    uniform_count: int = 3  # equal consecutive validations that mean uniform attention
    uniform_tolerance: float = 1e-3  # how close (nats) values must be to count as equal
    tail_fraction: float = 0.1  # the last part of the step range for the tail mean and trend


@dataclass
class Comparison:
    """The result of `compare_runs`: long tables ready to render."""

    summary: pd.DataFrame  # one row per (run, split, metric)
    at_steps: pd.DataFrame  # one row per (run, split, metric, at_step)
    flags: pd.DataFrame  # one row per raised flag: run, flag, split, metric, detail
    notes: list[str] = field(default_factory=list)  # footnotes for the reader


def codes(column: pd.Series) -> np.ndarray:
    """Integer codes of a label column: a categorical's own, else factorized."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy()
    return pd.factorize(column, sort=True)[0]


def merge_sources(table: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """One value per (run, split, step, metric): TensorBoard's where both sources have one.

    Returns the merged table, sorted by run (in the given order), split, metric and step,
    and whether any value was logged by both.
    """
    tensorboard = (table[s.SOURCE] == s.SOURCE_TENSORBOARD).to_numpy()
    run, split, metric = (codes(table[c]) for c in (s.RUN, s.SPLIT, s.METRIC))
    step = table[s.STEP].to_numpy()
    order = np.lexsort((tensorboard, step, metric, split, run))

    # of the rows that share a key, keep the last: TensorBoard's, which sorts after the log's
    keys = [k[order] for k in (run, split, metric, step)]
    same_as_next = np.ones(len(order), dtype=bool)
    same_as_next[-1:] = False
    for key in keys:
        same_as_next[:-1] &= key[:-1] == key[1:]
    kept = order[~same_as_next]
    merged = table.take(kept).reset_index(drop=True)
    return merged, len(kept) < len(table)


def resolve_choices(table: pd.DataFrame, options: CompareOptions) -> CompareOptions:
    """Options with defaults filled in from what the runs have.

    Named metrics, splits and a baseline that no run has are refused, listing what there is;
    a default that no run has is left out quietly.
    """
    chosen = {}
    for what, named, default, column in (
        ("metric", options.metrics, DEFAULT_METRICS, s.METRIC),
        ("split", options.splits, DEFAULT_SPLITS, s.SPLIT),
    ):
        present = sorted(table[column].unique())
        missing = [c for c in named or () if c not in present]
        if missing:
            raise UsageError(
                f"no run has {what} {', '.join(map(repr, missing))}. "
                f"Choose from: {', '.join(present)}"
            )
        chosen[what] = tuple(named or [d for d in default if d in present] or present)
    runs = run_names(table)
    if options.baseline is not None and options.baseline not in runs:
        raise UsageError(
            f"baseline {options.baseline!r} is not one of the runs. Choose from: {', '.join(runs)}"
        )
    return replace(options, metrics=chosen["metric"], splits=chosen["split"])


def tail(points: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The points in the last `fraction` of the step range, at least the last two."""
    first, last = points[s.STEP].iloc[0], points[s.STEP].iloc[-1]
    inside = points[points[s.STEP] >= last - fraction * (last - first)]
    return inside if len(inside) >= 2 else points.tail(2)


def slope_per_1000(points: pd.DataFrame) -> float:
    """Least-squares slope of value over step, per 1,000 steps."""
    steps = points[s.STEP].to_numpy(dtype=float)
    if len(points) < 2 or np.ptp(steps) == 0:
        return math.nan
    values = points[s.VALUE].to_numpy(dtype=float)
    return float(np.polyfit(steps, values, 1)[0] * 1000)


def describe(points: pd.DataFrame, fraction: float) -> dict[str, float]:
    """Statistics of one (run, split, metric) series, sorted by step, missing values dropped."""
    points = points[points[s.VALUE].notna()]
    if points.empty:
        return {"n": 0}
    values = points[s.VALUE]
    end = tail(points, fraction)
    return {
        "n": len(points),
        "first": values.iloc[0],
        "last": values.iloc[-1],
        "last_step": points[s.STEP].iloc[-1],
        "min": values.min(),
        "min_step": points[s.STEP].loc[values.idxmin()],
        "max": values.max(),
        "max_step": points[s.STEP].loc[values.idxmax()],
        "tail_mean": end[s.VALUE].mean(),
        "tail_trend": slope_per_1000(end),
    }


def versus_baseline(
    merged: pd.DataFrame, summary: pd.DataFrame, baseline: str
) -> tuple[pd.DataFrame, list[str]]:
    """Each run's last value minus the baseline's at the same step, or the nearest shared one."""
    notes = []
    diffs, steps = [], []
    series = {key: g for key, g in merged[merged[s.VALUE].notna()].groupby(KEY, observed=True)}
    for row in summary.itertuples(index=False):
        own = series.get((row.run, row.split, row.metric))
        base = series.get((baseline, row.split, row.metric))
        if own is None or base is None:
            diffs.append(math.nan)
            steps.append(pd.NA)
            continue
        shared = np.intersect1d(own[s.STEP], base[s.STEP])
        if len(shared) == 0:
            diffs.append(math.nan)
            steps.append(pd.NA)
            continue
        step = int(shared[np.argmin(np.abs(shared - row.last_step))])
        if step != row.last_step and row.run != baseline:
            notes.append(
                f"{row.run} {row.split}/{row.metric}: baseline has no step {row.last_step}; "
                f"compared at step {step}, the nearest step both have"
            )
        mine = own.loc[own[s.STEP] == step, s.VALUE].iloc[-1]
        theirs = base.loc[base[s.STEP] == step, s.VALUE].iloc[-1]
        diffs.append(mine - theirs)
        steps.append(step)
    extra = summary.assign(baseline_step=pd.array(steps, dtype="Int64"), vs_baseline=diffs)
    return extra, notes


def values_at_steps(merged: pd.DataFrame, at_steps: tuple[int, ...]) -> pd.DataFrame:
    """The value logged at or before each step, per (run, split, metric)."""
    rows = []
    for (run, split, metric), points in merged[merged[s.VALUE].notna()].groupby(
        KEY, observed=True, sort=False
    ):
        for at in at_steps:
            before = points[points[s.STEP] <= at]
            step = before[s.STEP].iloc[-1] if len(before) else pd.NA
            value = before[s.VALUE].iloc[-1] if len(before) else math.nan
            rows.append((run, split, metric, at, step, value))
    frame = pd.DataFrame(rows, columns=[*KEY, "at_step", s.STEP, s.VALUE])
    return frame.astype({s.STEP: "Int64"})


def flag_not_computed(run: str, points: pd.DataFrame) -> list[tuple]:
    """Attention entropy missing, or every logged value zero (read as missing)."""
    entropy = points[points[s.METRIC] == s.ATTENTION_ENTROPY]
    if entropy[s.VALUE].notna().any():
        return []
    detail = (
        f"{len(entropy)} attention_entropy values, all 0.000 or missing"
        if len(entropy)
        else "no attention_entropy logged"
    )
    return [(run, "not-computed", "", s.ATTENTION_ENTROPY, detail)]


def flag_uniform(run: str, points: pd.DataFrame, options: CompareOptions) -> list[tuple]:
    """The same validation attention entropy at several consecutive validations."""
    valid = points[(points[s.METRIC] == s.ATTENTION_ENTROPY) & (points[s.SPLIT] == "valid")]
    valid = valid[valid[s.VALUE].notna()]
    values, steps = valid[s.VALUE].to_numpy(), valid[s.STEP].to_numpy()
    need = options.uniform_count
    best = None
    start = 0
    for end in range(1, len(values) + 1):
        # grow the window while its values stay within the tolerance of each other
        while np.ptp(values[start:end]) > options.uniform_tolerance:
            start += 1
        if end - start >= need and (best is None or end - start > best[1] - best[0]):
            best = (start, end)
    if best is None:
        return []
    start, end = best
    detail = (
        f"{end - start} validations at {values[start]:.4f} (steps {steps[start]}-"
        f"{steps[end - 1]}): attention has not moved from uniform"
    )
    return [(run, "uniform", "valid", s.ATTENTION_ENTROPY, detail)]


def flag_collapse(run: str, points: pd.DataFrame, options: CompareOptions) -> list[tuple]:
    """Attention entropy below an absolute floor or far below its own running maximum."""
    flags = []
    entropy = points[(points[s.METRIC] == s.ATTENTION_ENTROPY) & points[s.VALUE].notna()]
    for split, series in entropy.groupby(s.SPLIT, observed=True, sort=False):
        values, steps = series[s.VALUE].to_numpy(), series[s.STEP].to_numpy()
        peak = np.maximum.accumulate(values)
        low = (values < options.collapse_below) | (values < options.collapse_fraction * peak)
        if low.any():
            i = int(np.argmax(low))
            detail = (
                f"{values[i]:.3f} nats at step {steps[i]} (floor {options.collapse_below}, "
                f"running max {peak[i]:.3f})"
            )
            flags.append((run, "collapse", split, s.ATTENTION_ENTROPY, detail))
    return flags


def flag_diverged(run: str, points: pd.DataFrame) -> list[tuple]:
    """Perplexity or cross-entropy not finite, or the last perplexity over twice its minimum."""
    flags = []
    for (split, metric), series in points.groupby([s.SPLIT, s.METRIC], observed=True, sort=False):
        if metric not in ("ppl", "xent"):
            continue
        values = series[s.VALUE].to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            step = series[s.STEP].to_numpy()[np.argmax(bad)]
            flags.append((run, "diverged", split, metric, f"{values[bad][0]} at step {step}"))
        elif metric == "ppl" and len(values) and values[-1] > 2 * values.min():
            detail = f"last {values[-1]:.2f} is over twice the minimum {values.min():.2f}"
            flags.append((run, "diverged", split, metric, detail))
    return flags


def run_flags(merged: pd.DataFrame, options: CompareOptions) -> pd.DataFrame:
    """Every flag raised by every run, over all of its splits."""
    rows = []
    for run, points in merged.groupby(s.RUN, observed=True, sort=False):
        rows += flag_not_computed(run, points)
        rows += flag_uniform(run, points, options)
        rows += flag_collapse(run, points, options)
        rows += flag_diverged(run, points)
    return pd.DataFrame(rows, columns=[s.RUN, "flag", s.SPLIT, s.METRIC, "detail"])


def run_names(table: pd.DataFrame) -> list[str]:
    """The runs of a table in the order they were given."""
    return [str(run) for run in pd.unique(table[s.RUN])]


def summarise(chosen: pd.DataFrame, runs: list[str], options: CompareOptions) -> pd.DataFrame:
    """One row of statistics per (run, split, metric) pair that some run has."""
    groups = dict(list(chosen.groupby(KEY, observed=True, sort=False)))
    pairs = {(split, metric) for _, split, metric in groups}
    empty = chosen.iloc[0:0]
    rows = []
    for run in runs:
        for metric in options.metrics:
            for split in options.splits:
                if (split, metric) not in pairs:
                    continue  # no run has this pair (valid ppl exists, progress ppl may not)
                points = groups.get((run, split, metric), empty)
                stats = describe(points, options.tail_fraction)
                rows.append({s.RUN: run, s.SPLIT: split, s.METRIC: metric, **stats})
    summary = pd.DataFrame(rows)
    counts = [c for c in ("n", "last_step", "min_step", "max_step") if c in summary]
    return summary.astype(dict.fromkeys(counts, "Int64"))


def compare_runs(table: pd.DataFrame, options: CompareOptions | None = None) -> Comparison:
    """Summarise every run of a long run table, with flags and optional baseline."""
    options = resolve_choices(table, options or CompareOptions())
    runs = run_names(table)

    # only the metrics summarised or judged by a flag, one value per key
    needed = table[table[s.METRIC].isin([*options.metrics, *FLAG_METRICS])]
    merged, both = merge_sources(needed)
    notes = []
    if both:
        notes.append("values in both a console log and TensorBoard are TensorBoard's (more digits)")

    chosen = merged[merged[s.METRIC].isin(options.metrics) & merged[s.SPLIT].isin(options.splits)]
    summary = summarise(chosen, runs, options)
    if options.baseline is not None:
        summary, baseline_notes = versus_baseline(merged, summary, options.baseline)
        notes += baseline_notes

    flags = run_flags(merged, options)
    raised = flags.groupby(s.RUN)["flag"].agg(lambda f: ",".join(dict.fromkeys(f)))
    summary["flags"] = summary[s.RUN].map(raised).fillna("")

    at_steps = values_at_steps(chosen, options.at_steps)
    order = {
        s.RUN: {run: i for i, run in enumerate(runs)},
        s.METRIC: {metric: i for i, metric in enumerate(options.metrics)},
        s.SPLIT: {split: i for i, split in enumerate(options.splits)},
    }
    at_steps = at_steps.sort_values(
        [s.METRIC, s.SPLIT, s.RUN, "at_step"],
        key=lambda col: col.map(order[col.name]) if col.name in order else col,
        kind="stable",
    ).reset_index(drop=True)
    return Comparison(summary, at_steps, flags, notes)
