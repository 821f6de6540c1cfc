"""Building the per-file tables of the run readers from codes and numpy arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from attn_entropy_cli import schema as s

FILE_COLUMNS = [s.SPLIT, s.STEP, s.METRIC, s.VALUE, s.WALL_TIME]


def code_dtype(count: int) -> type:
    """The smallest integer type that holds codes of `count` names (pandas' own choice)."""
    return np.int8 if count < 128 else np.int16 if count < 32768 else np.int32


def string_column(categories: Sequence[str], codes: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """The strings `categories[codes]` as pandas' default string array, built without a loop."""
    dtype = pd.StringDtype(na_value=np.nan)
    if dtype.storage == "pyarrow":
        import pyarrow as pa

        taken = pa.array(list(categories), pa.large_string()).take(pa.array(codes))
        return pd.array(taken, dtype=dtype)
    strings = np.asarray(list(categories) + [""], dtype=object)[:-1]
    return pd.array(strings.take(codes), dtype=dtype)


def file_table(
    splits: Sequence[str],
    split_codes: np.ndarray,
    metrics: Sequence[str],
    metric_codes: np.ndarray,
    step: np.ndarray,
    value: np.ndarray,
    wall_time: np.ndarray,
) -> pd.DataFrame:
    """A per-file table (`split, step, metric, value, wall_time`) from codes and arrays."""
    return pd.DataFrame(
        {
            s.SPLIT: string_column(splits, split_codes),
            s.STEP: np.asarray(step, dtype=np.int64),
            s.METRIC: string_column(metrics, metric_codes),
            s.VALUE: np.asarray(value, dtype=np.float64),
            s.WALL_TIME: np.asarray(wall_time, dtype=np.float64),
        }
    )


def latest_sorted(source, split, metric, step) -> np.ndarray:
    """Row order by (source, split, metric, step), keeping only the last row of each key.

    The codes of source, split and metric follow their names' sorted order, so this is the
    order `drop_duplicates(keep="last")` then a sort by those columns gives.
    """
    rows = np.arange(len(step))
    order = np.lexsort((rows, step, metric, split, source))
    key = (source[order], split[order], metric[order], step[order])
    last = np.ones(len(order), dtype=bool)
    last[:-1] = np.logical_or.reduce([np.diff(k) != 0 for k in key])
    return order[last]
