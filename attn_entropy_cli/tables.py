"""Reading result tables that attnent wrote (entropy tables from `compute`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from attn_entropy_cli import schema as s
from attn_entropy_cli.errors import InputError, UsageError

RESULT_SUFFIXES = (".csv", ".json", ".parquet")
NEEDED = (s.ATTN_TYPE, s.LAYER, s.HEAD, s.ENTROPY)


def looks_like_result(path: Path) -> bool:
    """Whether a path names a table file (csv, json, parquet) rather than a run."""
    return path.is_file() and path.suffix.lower() in RESULT_SUFFIXES


def read_entropy_table(path: Path) -> pd.DataFrame:
    """A long entropy table written by `attnent compute -o`."""
    if not path.exists():
        raise UsageError(f"table {path} does not exist. Check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            table = pd.read_parquet(path)
        elif suffix == ".json":
            table = pd.DataFrame(json.loads(path.read_text()))
        else:
            table = pd.read_csv(path)
    except (ValueError, OSError, ImportError) as error:
        raise InputError(
            f"cannot read table {path} ({error}). Give a file from 'attnent compute -o'"
        ) from None
    missing = [c for c in NEEDED if c not in table.columns]
    if missing or table.empty:
        raise InputError(
            f"{path} is not an entropy table (missing columns: {', '.join(missing) or 'rows'}). "
            "Give a file written by 'attnent compute -o'"
        )
    return table
