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
