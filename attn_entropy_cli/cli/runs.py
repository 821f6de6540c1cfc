"""Commands on training runs: `export`, `compare` and `plot`."""

from __future__ import annotations

from pathlib import Path

import typer

from attn_entropy_cli.cli import app
from attn_entropy_cli.errors import UsageError

RunsArg = typer.Argument(..., help="Run folders, console logs or event files.", show_default=False)
NameOpt = typer.Option(None, "--name", help="A name per run, in order (default: folder name).")
NoCacheOpt = typer.Option(
    False, "--no-cache", help="Read every file again instead of using tables cached earlier."
)


@app.command()
def export(
    runs: list[Path] = RunsArg,
    fmt: str = typer.Option("csv", "--format", "-f", help="csv, json or parquet."),
    output: Path | None = typer.Option(None, "-o", "--output", help="File to write."),
    name: list[str] | None = NameOpt,
    no_cache: bool = NoCacheOpt,
) -> None:
    """Write every metric of every run as one long table.

    Columns: run, source, split, step, metric, value, wall_time.

    Example: attnent export sample_runs/runA sample_runs/runB -o runs.csv
    """
    from attn_entropy_cli import report
    from attn_entropy_cli.runs import read_runs

    table = read_runs(runs, name, use_cache=not no_cache)
    if output is not None and fmt == "csv":
        fmt = report.format_from_suffix(output)
    report.write_table(table, output, fmt)


def split_list(values: list[str] | None) -> tuple[str, ...]:
    """Values of a repeatable option that may also hold commas: `--metric a,b --metric c`."""
    return tuple(v.strip() for value in values or [] for v in value.split(",") if v.strip())


@app.command()
def compare(
    runs: list[Path] = RunsArg,
    metric: list[str] | None = typer.Option(
        None,
        "--metric",
        "-m",
        help="Metrics to summarise [default: attention_entropy, ppl, accuracy].",
    ),
    split: list[str] | None = typer.Option(
        None, "--split", "-s", help="Splits to summarise [default: progress, valid]."
    ),
    baseline: str | None = typer.Option(None, "--baseline", help="Run to measure against."),
    at_steps: str | None = typer.Option(
        None, "--at-steps", help="Comma-separated steps: add a table of values at those steps."
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv, json or markdown."),
    fail_on: str | None = typer.Option(
        None,
        "--fail-on",
        help="Comma-separated flags that make the command exit 3: "
        "not-computed, uniform, collapse, diverged.",
    ),
    collapse_below: float = typer.Option(
        0.5, "--collapse-below", help="Attention entropy (nats) that counts as collapse."
    ),
    name: list[str] | None = NameOpt,
    no_cache: bool = NoCacheOpt,
) -> None:
    """Summarise runs side by side: first, last, min, max, tail mean and trend, and flags.

    Flags: not-computed (no attention entropy was logged), uniform (the same validation
    entropy three times in a row), collapse (entropy under --collapse-below or under a
    quarter of its running maximum), diverged (ppl/xent not finite, or last ppl over
    twice its minimum).

    Example: attnent compare sample_runs/runA sample_runs/runB sample_runs/runD
    """
    from attn_entropy_cli import report
    from attn_entropy_cli.compare import FLAGS, CompareOptions, compare_runs
    from attn_entropy_cli.errors import FlagRaised
    from attn_entropy_cli.runs import read_runs

    gates = split_list([fail_on] if fail_on else None)
    unknown = [g for g in gates if g not in FLAGS]
    if unknown:
        raise UsageError(f"unknown flag {unknown[0]!r} in --fail-on. Use {', '.join(FLAGS)}")
    try:
        steps = tuple(int(v) for v in split_list([at_steps] if at_steps else None))
    except ValueError:
        raise UsageError(
            f"--at-steps {at_steps!r} is not a list of steps. Use e.g. 100,200"
        ) from None

    options = CompareOptions(
        metrics=split_list(metric) or None,
        splits=split_list(split) or None,
        baseline=baseline,
        at_steps=steps,
        collapse_below=collapse_below,
    )
    comparison = compare_runs(read_runs(runs, name, use_cache=not no_cache), options)
    typer.echo(report.render_comparison(comparison, fmt), nl=False)

    raised = comparison.flags[comparison.flags["flag"].isin(gates)]
    if not raised.empty:
        found = ", ".join(f"{r.run} {r.flag}" for r in raised.itertuples(index=False))
        raise FlagRaised(f"flags raised: {found}. Fix the runs or drop them from --fail-on")


@app.command()
def plot(
    runs: list[Path] = typer.Argument(
        ...,
        help="Run folders, logs or event files; or one table from 'attnent compute -o'.",
        show_default=False,
    ),
    output: Path = typer.Option(
        Path("attnent.png"), "-o", "--output", help="Figure file: .png, .svg or .pdf."
    ),
    metric: list[str] | None = typer.Option(
        None,
        "--metric",
        "-m",
        help="Metrics, one panel each [default: attention_entropy, ppl, accuracy].",
    ),
    split: list[str] | None = typer.Option(
        None, "--split", "-s", help="Splits [default: progress, valid]."
    ),
    smoothing: float = typer.Option(
        0.6, "--smoothing", help="TensorBoard's smoothing weight in [0, 1); 0 turns it off."
    ),
    x: str = typer.Option("step", "--x", help="step, relative (hours) or wall (clock)."),
    group: str | None = typer.Option(
        None, "--group", help="Regex; runs sharing its first group become one mean curve."
    ),
    heatmap_at: int | None = typer.Option(
        None, "--heatmap-at", help="For a table over several checkpoints: the step to draw."
    ),
    bits: bool = typer.Option(False, "--bits", help="Entropy tables: show bits, not nats."),
    name: list[str] | None = NameOpt,
    no_cache: bool = NoCacheOpt,
) -> None:
    """Draw runs' curves, or the layer x head heatmap of an entropy table.

    Runs: one panel per metric and split, one colour per run, the raw curve faint and the
    smoothed one solid. An entropy table: one heatmap per attention type; a table over
    several checkpoints draws one line per head over steps (--heatmap-at STEP for one step).

    Example: attnent plot sample_runs/runA sample_runs/runB -m attention_entropy -o runs.png
    """
    from attn_entropy_cli import report, tables

    suffix = output.suffix.lower()
    if suffix not in report.FIGURE_SUFFIXES:
        raise UsageError(f"cannot draw to {output}. Name a .png, .svg or .pdf file with -o")
    if len(runs) == 1 and tables.looks_like_result(runs[0]):
        figure = entropy_figure(runs[0], heatmap_at, bits)
    else:
        figure = runs_figure(runs, name, metric, split, smoothing, x, group, no_cache)
    report.save_figure(figure, output)
    typer.echo(f"wrote {output}", err=True)


def entropy_figure(path: Path, heatmap_at: int | None, bits: bool):
    """The figure of an entropy table file: a heatmap, or head lines over steps."""
    from attn_entropy_cli import plots, tables

    return plots.entropy_figure(tables.read_entropy_table(path), heatmap_at, bits, str(path))


def runs_figure(runs, name, metric, split, smoothing, x, group, no_cache):
    """The figure of runs' curves: one panel per chosen (metric, split)."""
    from attn_entropy_cli import plots
    from attn_entropy_cli.compare import CompareOptions, merge_sources, resolve_choices
    from attn_entropy_cli.runs import read_runs

    table, _ = merge_sources(read_runs(runs, name, use_cache=not no_cache))
    options = resolve_choices(
        table, CompareOptions(metrics=split_list(metric) or None, splits=split_list(split) or None)
    )
    present = set(zip(table["metric"], table["split"]))
    panels = [(m, sp) for m in options.metrics for sp in options.splits if (m, sp) in present]
    return plots.runs_figure(table, panels, smoothing, x, group)
