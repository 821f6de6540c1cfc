"""A cache of per-file run tables, so that reading fifty runs again takes seconds.

Each log or event file's table (`split, step, metric, value, wall_time`) is stored as numpy
arrays in one `.npz` file in the cache folder, named by a hash of the file's resolved path,
size and modification time and of the reader's version: a file that changes is read again.
The warnings reading gave are stored with it and given again on every read from the cache.
Nothing is written beside the user's files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from attn_entropy_cli import __version__
from attn_entropy_cli import schema as s
from attn_entropy_cli.errors import AttnentWarning
from attn_entropy_cli.runs import frames

CACHE_FORMAT = 3  # bump when a reader's output changes
SUFFIX = ".npz"


def cache_dir() -> Path:
    """The cache folder: `$ATTNENT_CACHE_DIR`, else `$XDG_CACHE_HOME/attnent`, else
    `~/.cache/attnent`."""
    if os.environ.get("ATTNENT_CACHE_DIR"):
        return Path(os.environ["ATTNENT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnent"


@dataclass(frozen=True)
class Entry:
    """A file's table as arrays, and the warnings reading it gave."""

    splits: list[str]
    split_codes: np.ndarray  # (rows,) index into `splits`, the smallest integer type
    metrics: list[str]
    metric_codes: np.ndarray  # (rows,) index into `metrics`, the smallest integer type
    step: np.ndarray  # (rows,) int64
    value: np.ndarray  # (rows,) float64
    wall_time: np.ndarray  # (rows,) float64
    warnings: list[str]

    @classmethod
    def from_table(cls, table: pd.DataFrame, messages: list[str]) -> Entry:
        """The arrays of a per-file table."""
        split_codes, splits = pd.factorize(table[s.SPLIT], sort=True)
        metric_codes, metrics = pd.factorize(table[s.METRIC], sort=True)
        step = table[s.STEP].to_numpy(np.int64)
        # sorted by (split, metric, step), a repeated step keeping the value read last
        keep = frames.latest_sorted(np.zeros(len(step), np.int8), split_codes, metric_codes, step)
        return cls(
            [str(x) for x in splits],
            split_codes[keep].astype(frames.code_dtype(len(splits))),
            [str(x) for x in metrics],
            metric_codes[keep].astype(frames.code_dtype(len(metrics))),
            step[keep],
            table[s.VALUE].to_numpy(np.float64)[keep],
            table[s.WALL_TIME].to_numpy(np.float64)[keep],
            list(messages),
        )

    def replay(self) -> None:
        """Give the warnings that reading the file gave."""
        for message in self.warnings:
            warnings.warn(message, AttnentWarning, stacklevel=3)


def key(path: Path, kind: str) -> str | None:
    """The cache name of a file as it is now; None if it cannot be stat'ed."""
    try:
        info = path.stat()
        resolved = path.resolve()
    except OSError:
        return None
    text = f"{CACHE_FORMAT}|{__version__}|{kind}|{resolved}|{info.st_size}|{info.st_mtime_ns}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def load(path: Path, kind: str) -> Entry | None:
    """The cached entry of a file, or None if there is none for its current size and time."""
    name = key(path, kind)
    if name is None:
        return None
    stored = cache_dir() / (name + SUFFIX)
    try:
        with np.load(stored, allow_pickle=False) as data:
            return Entry(
                data["splits"].tolist(),
                data["split_codes"],
                data["metrics"].tolist(),
                data["metric_codes"],
                data["step"],
                data["value"],
                data["wall_time"],
                data["warnings"].tolist(),
            )
    except (OSError, KeyError, ValueError, EOFError):
        # missing, being written by another process, or from an older format: read again
        return None


def save(path: Path, kind: str, entry: Entry) -> None:
    """Store a file's entry; a cache that cannot be written is skipped quietly.

    Limitations: entries are never evicted; `attnent cache clear` removes them all.
    """
    name = key(path, kind)
    if name is None:
        return
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=SUFFIX, dir=folder)
        with os.fdopen(handle, "wb") as out:
            np.savez(
                out,
                splits=np.array(entry.splits, dtype=str),
                split_codes=entry.split_codes,
                metrics=np.array(entry.metrics, dtype=str),
                metric_codes=entry.metric_codes,
                step=entry.step,
                value=entry.value,
                wall_time=entry.wall_time,
                warnings=np.array(entry.warnings, dtype=str),
            )
        os.replace(tmp, folder / (name + SUFFIX))
    except OSError:
        return


@dataclass(frozen=True)
class Info:
    """What the cache folder holds."""

    folder: Path
    entries: int
    bytes: int


def info() -> Info:
    """The cache folder, its number of entries and their size."""
    folder = cache_dir()
    files = list(folder.glob("*" + SUFFIX)) if folder.is_dir() else []
    return Info(folder, len(files), sum(f.stat().st_size for f in files))


def clear() -> Info:
    """Remove every cached entry; what was removed."""
    removed = info()
    if removed.folder.is_dir():
        for stored in removed.folder.glob("*" + SUFFIX):
            stored.unlink(missing_ok=True)
        for partial in removed.folder.glob(".*" + SUFFIX):
            partial.unlink(missing_ok=True)
    return removed
