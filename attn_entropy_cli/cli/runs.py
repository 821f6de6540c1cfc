"""Commands on training runs: `export`, `compare` and `plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from attn_entropy_cli.cli import app

RunsArg = typer.Argument(
    ..., help="Run folders, console logs or event files.", show_default=False
)
NameOpt = typer.Option(None, "--name", help="A name per run, in order (default: folder name).")


@app.command()
def export(
    runs: list[Path] = RunsArg,
    fmt: str = typer.Option("csv", "--format", "-f", help="csv, json or parquet."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="File to write."),
    name: Optional[list[str]] = NameOpt,
) -> None:
    """Write every metric of every run as one long table.

    Columns: run, source, split, step, metric, value, wall_time.

    Example: attnent export sample_runs/runA sample_runs/runB -o runs.csv
    """
    from attn_entropy_cli import report
    from attn_entropy_cli.runs import read_runs

    table = read_runs(runs, name)
    if output is not None and fmt == "csv":
        fmt = report.format_from_suffix(output)
    report.write_table(table, output, fmt)
