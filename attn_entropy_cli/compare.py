"""Summaries of runs side by side: statistics per metric, values at chosen steps, and flags.

Everything here takes and returns DataFrames; rendering happens in `report`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def labels(column: pd.Series) -> tuple[np.ndarray, list[str]]:
    """(codes, names) of a label column: a categorical's own, else factorized."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column.cat.codes.to_numpy(), [str(c) for c in column.cat.categories]
    codes, names = pd.factorize(column, sort=True)
    return codes, [str(n) for n in names]


def present(column: pd.Series) -> list[str]:
    """The sorted distinct labels of a column, without a pass over Python strings."""
    codes, names = labels(column)
    seen = np.zeros(len(names) + 1, dtype=bool)
    seen[codes] = True  # a missing label's -1 marks the extra last place
    return sorted(name for name, here in zip(names, seen) if here)


@dataclass(frozen=True)
class Keys:
    """The key columns of a run table as arrays, (rows,) each."""

    labels: tuple[tuple[np.ndarray, list[str]], ...]  # (codes, names) of run, split and metric
    step: np.ndarray
    tensorboard: np.ndarray  # whether the row is TensorBoard's

    @classmethod
    def of(cls, table: pd.DataFrame) -> Keys:
        """The keys of a run table."""
        source_codes, sources = labels(table[s.SOURCE])
        tensorboard = sources.index(s.SOURCE_TENSORBOARD) if s.SOURCE_TENSORBOARD in sources else -2
        return cls(
            tuple(labels(table[c]) for c in KEY),
            table[s.STEP].to_numpy(),
            source_codes == tensorboard,
        )


def sorted_keys(keys: Keys, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The given rows ordered by (run, split, metric, step, TensorBoard last).

    Returns (order, group, step): `order` indexes the table; `group[i]` numbers the
    (run, split, metric) of row `order[i]`, and `step[i]` is its step.
    """
    codes = [codes[rows] for codes, _ in keys.labels]
    sizes = [int(c.max()) + 1 if len(c) else 1 for c in codes]
    step = keys.step[rows]
    low = int(step.min()) if len(step) else 0
    span = int(step.max()) - low + 1 if len(step) else 1
    if math.prod(sizes) * span * 2 >= 2**62:
        group = (codes[0].astype(np.int64) * sizes[1] + codes[1]) * sizes[2] + codes[2]
        order = np.lexsort((keys.tensorboard[rows], step, group))
        return rows[order], group[order], step[order]

    # one integer key, built in place; the rows come in long sorted stretches, which a stable
    # sort merges
    key = codes[0].astype(np.int64)
    for size, part in zip(sizes[1:], codes[1:]):
        key *= size
        key += part
    key *= span
    key += step
    key -= low
    key *= 2
    key += keys.tensorboard[rows]
    order = np.argsort(key, kind="stable")
    key = key[order]
    key >>= 1
    step = key % span
    step += low
    key //= span
    return rows[order], key, step


def merged_rows(keys: Keys, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Rows with one value per (run, split, step, metric), TensorBoard's where both have one.

    Returns (rows in key order, their group codes, their steps, whether any key was in both
    sources).
    """
    order, group, step = sorted_keys(keys, rows)
    # of the rows that share a key, keep the last: TensorBoard's, which sorts after the log's
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (group[:-1] != group[1:]) | (step[:-1] != step[1:])
    return order[last], group[last], step[last], not last.all()


def merge_sources(table: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """One value per (run, split, step, metric): TensorBoard's where both sources have one.

    Returns the merged table, sorted by run (in the given order), split, metric and step,
    and whether any value was logged by both.
    """
    kept, _, _, both = merged_rows(Keys.of(table), np.arange(len(table)))
    return table.take(kept).reset_index(drop=True), both


# (run, split, metric) -> that series' `step` and `value`, sorted by step, one row per step
Series = dict[tuple[str, str, str], pd.DataFrame]


def split_series(table: pd.DataFrame, metrics: Sequence[str]) -> tuple[Series, bool]:
    """The merged series of the chosen metrics, and whether both sources had some key."""
    keys = Keys.of(table)
    values = table[s.VALUE].to_numpy()
    (run_codes, runs), (split_codes, splits), (metric_codes, metric_names) = keys.labels
    rows = np.flatnonzero(table[s.METRIC].isin(list(metrics)).to_numpy())
    if np.any(run_codes[rows[1:]] < run_codes[rows[:-1]]):
        rows = rows[np.argsort(run_codes[rows], kind="stable")]
    cuts = np.flatnonzero(run_codes[rows[1:]] != run_codes[rows[:-1]]) + 1

    # one run at a time: the sort's arrays are small, and memory once used is used again
    series, both = {}, False
    for block in np.split(rows, cuts) if len(rows) else []:
        kept, group, step, shared = merged_rows(keys, block)
        both |= shared
        value = values[kept]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(kept)]):
            first = kept[start]
            key = (
                runs[run_codes[first]],
                splits[split_codes[first]],
                metric_names[metric_codes[first]],
            )
            points = {s.STEP: step[start:end], s.VALUE: value[start:end]}
            series[key] = pd.DataFrame(points, copy=False)
    return series, both


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
        present_labels = present(table[column])
        missing = [c for c in named or () if c not in present_labels]
        if missing:
            raise UsageError(
                f"no run has {what} {', '.join(map(repr, missing))}. "
                f"Choose from: {', '.join(present_labels)}"
            )
        chosen[what] = tuple(named or [d for d in default if d in present_labels] or present_labels)
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
    series: Series, summary: pd.DataFrame, baseline: str
) -> tuple[pd.DataFrame, list[str]]:
    """Each run's last value minus the baseline's at the same step, or the nearest shared one."""
    notes = []
    diffs, steps = [], []
    for row in summary.itertuples(index=False):
        own = measured(series.get((row.run, row.split, row.metric)))
        base = measured(series.get((baseline, row.split, row.metric)))
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


def values_at_steps(series: Series, keys: list[tuple], at_steps: tuple[int, ...]) -> pd.DataFrame:
    """The value logged at or before each step, per (run, split, metric) of `keys`."""
    rows = []
    for run, split, metric in keys:
        points = measured(series.get((run, split, metric)))
        if points is None:
            continue
        steps = points[s.STEP].to_numpy()
        for at in at_steps:
            i = int(np.searchsorted(steps, at, side="right")) - 1
            step = steps[i] if i >= 0 else pd.NA
            value = points[s.VALUE].iloc[i] if i >= 0 else math.nan
            rows.append((run, split, metric, at, step, value))
    frame = pd.DataFrame(rows, columns=[*KEY, "at_step", s.STEP, s.VALUE])
    return frame.astype({s.STEP: "Int64"})


def measured(points: pd.DataFrame | None) -> pd.DataFrame | None:
    """The points of a series that hold a value; None when there are none."""
    if points is None:
        return None
    points = points[points[s.VALUE].notna()]
    return points if len(points) else None


def flag_not_computed(run: str, own: Series) -> list[tuple]:
    """Attention entropy missing, or every logged value zero (read as missing)."""
    entropy = [p for (_, _, metric), p in own.items() if metric == s.ATTENTION_ENTROPY]
    if any(p[s.VALUE].notna().any() for p in entropy):
        return []
    count = sum(len(p) for p in entropy)
    detail = (
        f"{count} attention_entropy values, all 0.000 or missing"
        if count
        else "no attention_entropy logged"
    )
    return [(run, "not-computed", "", s.ATTENTION_ENTROPY, detail)]


def flag_uniform(run: str, own: Series, options: CompareOptions) -> list[tuple]:
    """The same validation attention entropy at several consecutive validations."""
    valid = measured(own.get((run, "valid", s.ATTENTION_ENTROPY)))
    if valid is None:
        return []
    values, steps = valid[s.VALUE].to_numpy(), valid[s.STEP].to_numpy()
    best = None
    start = 0
    for end in range(1, len(values) + 1):
        # grow the window while its values stay within the tolerance of each other
        while np.ptp(values[start:end]) > options.uniform_tolerance:
            start += 1
        if end - start >= options.uniform_count and (
            best is None or end - start > best[1] - best[0]
        ):
            best = (start, end)
    if best is None:
        return []
    start, end = best
    detail = (
        f"{end - start} validations at {values[start]:.4f} (steps {steps[start]}-"
        f"{steps[end - 1]}): attention has not moved from uniform"
    )
    return [(run, "uniform", "valid", s.ATTENTION_ENTROPY, detail)]


def flag_collapse(run: str, own: Series, options: CompareOptions) -> list[tuple]:
    """Attention entropy below an absolute floor or far below its own running maximum."""
    flags = []
    for (_, split, metric), points in own.items():
        points = measured(points)
        if metric != s.ATTENTION_ENTROPY or points is None:
            continue
        values, steps = points[s.VALUE].to_numpy(), points[s.STEP].to_numpy()
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


def flag_diverged(run: str, own: Series) -> list[tuple]:
    """Perplexity or cross-entropy not finite, or the last perplexity over twice its minimum."""
    flags = []
    for (_, split, metric), points in own.items():
        if metric not in ("ppl", "xent"):
            continue
        values = points[s.VALUE].to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            step = points[s.STEP].to_numpy()[np.argmax(bad)]
            flags.append((run, "diverged", split, metric, f"{values[bad][0]} at step {step}"))
        elif metric == "ppl" and len(values) and values[-1] > 2 * values.min():
            detail = f"last {values[-1]:.2f} is over twice the minimum {values.min():.2f}"
            flags.append((run, "diverged", split, metric, detail))
    return flags


def run_flags(series: Series, runs: list[str], options: CompareOptions) -> pd.DataFrame:
    """Every flag raised by every run, over all of its splits."""
    rows = []
    for run in runs:
        own = {key: points for key, points in series.items() if key[0] == run}
        rows += flag_not_computed(run, own)
        rows += flag_uniform(run, own, options)
        rows += flag_collapse(run, own, options)
        rows += flag_diverged(run, own)
    return pd.DataFrame(rows, columns=[s.RUN, "flag", s.SPLIT, s.METRIC, "detail"])


def run_names(table: pd.DataFrame) -> list[str]:
    """The runs of a table in the order they were given."""
    return [str(run) for run in pd.unique(table[s.RUN])]


def summarise(series: Series, runs: list[str], options: CompareOptions) -> pd.DataFrame:
    """One row of statistics per (run, split, metric) pair that some run has."""
    pairs = {(split, metric) for _, split, metric in series}
    rows = []
    for run in runs:
        for metric in options.metrics:
            for split in options.splits:
                if (split, metric) not in pairs:
                    continue  # no run has this pair (valid ppl exists, progress ppl may not)
                points = measured(series.get((run, split, metric)))
                stats = {"n": 0} if points is None else describe(points, options.tail_fraction)
                rows.append({s.RUN: run, s.SPLIT: split, s.METRIC: metric, **stats})
    summary = pd.DataFrame(rows, columns=[*KEY, "n"]) if not rows else pd.DataFrame(rows)
    counts = [c for c in ("n", "last_step", "min_step", "max_step") if c in summary]
    return summary.astype(dict.fromkeys(counts, "Int64"))


def compare_runs(table: pd.DataFrame, options: CompareOptions | None = None) -> Comparison:
    """Summarise every run of a long run table, with flags and optional baseline."""
    options = resolve_choices(table, options or CompareOptions())
    runs = run_names(table)

    # only the metrics summarised or judged by a flag, one value per step
    series, both = split_series(table, [*options.metrics, *FLAG_METRICS])
    notes = []
    if both:
        notes.append("values in both a console log and TensorBoard are TensorBoard's (more digits)")

    summary = summarise(series, runs, options)
    if options.baseline is not None:
        summary, baseline_notes = versus_baseline(series, summary, options.baseline)
        notes += baseline_notes

    flags = run_flags(series, runs, options)
    raised = flags.groupby(s.RUN)["flag"].agg(lambda f: ",".join(dict.fromkeys(f)))
    summary["flags"] = summary[s.RUN].map(raised).fillna("")

    keys = list(zip(summary[s.RUN], summary[s.SPLIT], summary[s.METRIC]))
    at_steps = values_at_steps(series, keys, options.at_steps)
    return Comparison(summary, at_steps, flags, notes)
