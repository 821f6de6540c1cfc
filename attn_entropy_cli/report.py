"""Writing tables and figures to files or to a text stream."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import pandas as pd

from attn_entropy_cli.errors import UsageError

TABLE_FORMATS = ("csv", "json", "parquet")


def format_from_suffix(path: Path, default: str = "csv") -> str:
    """The table format named by a file's suffix (`.csv`, `.json`, `.parquet`)."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix in TABLE_FORMATS:
        return suffix
    if suffix == "":
        return default
    raise UsageError(
        f"cannot tell the table format of {path} from its suffix. "
        "Use .csv, .json or .parquet, or pass --format"
    )


def write_table(table: pd.DataFrame, path: Path | None, fmt: str) -> None:
    """Write a table as csv, json (records) or parquet to `path`, or to stdout.

    A file is written whole or not at all: it is written beside its target and renamed.
    """
    if fmt not in TABLE_FORMATS:
        raise UsageError(f"unknown table format {fmt!r}. Use one of {', '.join(TABLE_FORMATS)}")
    if path is None:
        if fmt == "parquet":
            raise UsageError("parquet cannot go to the terminal. Give -o FILE.parquet")
        write_text(table, sys.stdout, fmt)
        return
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            try:
                table.to_parquet(tmp, index=False)
            except ImportError as error:
                raise UsageError(
                    f"writing parquet needs pyarrow ({error}). Run 'pip install pyarrow'"
                ) from None
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                write_text(table, handle, fmt)


def write_text(table: pd.DataFrame, stream: TextIO, fmt: str) -> None:
    """Write a table as csv or json records to an open text stream."""
    if fmt == "csv":
        table.to_csv(stream, index=False, lineterminator="\n")
    else:
        stream.write(table.to_json(orient="records", double_precision=15))
        stream.write("\n")


class atomic_path:
    """A temporary path beside `path` that replaces it only when the block succeeds."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        if self.path.parent and not self.path.parent.exists():
            raise UsageError(
                f"folder {self.path.parent} does not exist. Create it or choose another -o"
            )
        handle, name = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=self.path.suffix, dir=self.path.parent
        )
        os.close(handle)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


COMPARE_FORMATS = ("table", "csv", "json", "markdown")
SUMMARY_HEADERS = {
    "run": "run",
    "n": "n",
    "first": "first",
    "last": "last",
    "last_step": "at step",
    "min": "min",
    "min_step": "at step",
    "max": "max",
    "max_step": "at step",
    "tail_mean": "tail mean",
    "tail_trend": "trend/1k",
    "vs_baseline": "vs baseline",
    "flags": "flags",
}


def number(value) -> str:
    """A value for a human: four significant digits, blank when missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def text_table(frame: pd.DataFrame, headers: list[str] | None = None) -> list[str]:
    """Lines of a left-aligned-text, right-aligned-number plain table."""
    headers = headers or list(frame.columns)
    cells = [[number(v) for v in row] for row in frame.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)]


def markdown_table(frame: pd.DataFrame, headers: list[str] | None = None) -> list[str]:
    """Lines of a GitHub-flavoured markdown table."""
    headers = headers or list(frame.columns)
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    rule = ["---:" if n else "---" for n in numeric]
    rows = [[number(v) for v in row] for row in frame.itertuples(index=False)]
    return ["| " + " | ".join(r) + " |" for r in [headers, rule, *rows]]


def render_comparison(comparison, fmt: str) -> str:
    """A `compare_runs` result as a terminal table, csv, json or markdown."""
    if fmt not in COMPARE_FORMATS:
        raise UsageError(f"unknown format {fmt!r}. Use one of {', '.join(COMPARE_FORMATS)}")
    summary, at_steps = comparison.summary, comparison.at_steps
    if fmt == "csv":
        return summary.to_csv(index=False, lineterminator="\n")
    if fmt == "json":
        import json

        document = {
            "summary": json.loads(summary.to_json(orient="records")),
            "at_steps": json.loads(at_steps.to_json(orient="records")),
            "flags": json.loads(comparison.flags.to_json(orient="records")),
            "notes": comparison.notes,
        }
        return json.dumps(document, indent=2) + "\n"

    draw = markdown_table if fmt == "markdown" else text_table
    lines: list[str] = []
    columns = [c for c in SUMMARY_HEADERS if c in summary.columns]
    for (metric, split), group in summary.groupby(["metric", "split"], sort=False):
        title = f"{metric} ({split})"
        lines += [f"### {title}" if fmt == "markdown" else title, ""]
        lines += draw(group[columns], [SUMMARY_HEADERS[c] for c in columns])
        lines.append("")
    if not at_steps.empty:
        wide = at_steps.pivot_table(
            index=["metric", "split", "run"], columns="at_step", values="value", sort=False
        ).reset_index()
        wide.columns = [f"step {c}" if isinstance(c, (int,)) else str(c) for c in wide.columns]
        lines += ["### values at steps" if fmt == "markdown" else "values at steps", ""]
        lines += draw(wide)
        lines.append("")
    if not comparison.flags.empty:
        lines += ["### flags" if fmt == "markdown" else "flags", ""]
        for flag in comparison.flags.itertuples(index=False):
            where = f"{flag.split}/{flag.metric}" if flag.split else flag.metric
            lines.append(
                f"{'- ' if fmt == 'markdown' else ''}{flag.run}: {flag.flag} ({where}): "
                f"{flag.detail}"
            )
        lines.append("")
    for i, note in enumerate(comparison.notes, 1):
        lines.append(f"[{i}] {note}")
    return "\n".join(lines).rstrip() + "\n"


FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def save_figure(figure, path: Path) -> None:
    """Write a finished figure; the file appears only once it is complete."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=120)
