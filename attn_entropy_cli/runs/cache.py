"""A cache of per-file run tables, so that reading fifty runs again takes seconds.

Each log or event file's table (`split, step, metric, value, wall_time`) is stored in one file
in the cache folder, named by a hash of the file's resolved path, size and modification time
and of the reader's version: a file that changes is read again. The file is numpy arrays in
`.npy` format one after another: the names, the warnings reading gave (given again on every
read from the cache), the codes, then the step, value and wall-time columns. Loading an entry
reads all but those three columns, which stay in the file until `joined` reads them straight
into the run table: the largest arrays are copied once, into memory touched once. Nothing is
written beside the user's files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from attn_entropy_cli import __version__
from attn_entropy_cli import schema as s
from attn_entropy_cli.errors import AttnentWarning, InputError
from attn_entropy_cli.runs import frames

CACHE_FORMAT = 4  # bump when a reader's output or the stored layout changes
SUFFIX = ".npys"
OLD_SUFFIXES = (".npz",)  # entries of earlier formats, removed by `clear`
STORED = (("step", np.int64), ("value", np.float64), ("wall_time", np.float64))


def cache_dir() -> Path:
    """The cache folder: `$ATTNENT_CACHE_DIR`, else `$XDG_CACHE_HOME/attnent`, else
    `~/.cache/attnent`."""
    if os.environ.get("ATTNENT_CACHE_DIR"):
        return Path(os.environ["ATTNENT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnent"


@dataclass(frozen=True)
class Column:
    """A column of a cached entry still in its file: `length` values of `dtype` at `offset`."""

    path: Path
    offset: int
    dtype: np.dtype
    length: int

    def __len__(self) -> int:
        return self.length

    def read_into(self, out: np.ndarray) -> None:
        """Fill `out`, (length,) of `dtype`, from the file."""
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            count = handle.readinto(memoryview(out).cast("B"))
        if count != out.nbytes:
            raise OSError(f"{self.path} ends early")


@dataclass(frozen=True)
class Entry:
    """A file's table as arrays, and the warnings reading it gave."""

    splits: list[str]
    split_codes: np.ndarray  # (rows,) index into `splits`, the smallest integer type
    metrics: list[str]
    metric_codes: np.ndarray  # (rows,) index into `metrics`, the smallest integer type
    step: np.ndarray | Column  # (rows,) int64
    value: np.ndarray | Column  # (rows,) float64
    wall_time: np.ndarray | Column  # (rows,) float64
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
        with open(stored, "rb") as handle:
            splits, metrics, messages, split_codes, metric_codes = (
                np.load(handle, allow_pickle=False) for _ in range(5)
            )
            columns = [stored_column(stored, handle, dtype) for _, dtype in STORED]
            if handle.tell() != os.fstat(handle.fileno()).st_size:
                return None
    except (OSError, ValueError, EOFError):
        # missing, being written by another process, or from an older format: read again
        return None
    if any(len(c) != len(split_codes) for c in (metric_codes, *columns)):
        return None
    return Entry(
        splits.tolist(), split_codes, metrics.tolist(), metric_codes, *columns, messages.tolist()
    )


def stored_column(path: Path, handle: BinaryIO, dtype: type) -> Column:
    """The column whose `.npy` header is at the handle's place, which moves past its values."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, found = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, found = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ValueError(f"npy version {version}")
    if found != np.dtype(dtype) or len(shape) != 1:
        raise ValueError(f"a column of {found} {shape}")
    column = Column(path, handle.tell(), found, shape[0])
    handle.seek(shape[0] * found.itemsize, os.SEEK_CUR)
    return column


def joined(parts: Sequence[np.ndarray | Column], dtype: type) -> np.ndarray:
    """The columns of several entries end to end, in one fresh array.

    Limitations: a cached column is read from its file here, after `load`; an entry removed in
    between (`attnent cache clear` in another process) stops the read with an error.
    """
    out = np.empty(sum(len(part) for part in parts), dtype)
    at = 0
    for part in parts:
        here = out[at : at + len(part)]
        if isinstance(part, Column):
            try:
                part.read_into(here)
            except OSError as error:
                raise InputError(
                    f"cached table {part.path} went away while it was read ({error}). "
                    "Run the command again"
                ) from None
        else:
            here[:] = part
        at += len(part)
    return out


def save(path: Path, kind: str, entry: Entry) -> None:
    """Store a file's entry; a cache that cannot be written is skipped quietly.

    Limitations: entries are never evicted; `attnent cache clear` removes them all.
    """
    name = key(path, kind)
    if name is None:
        return
    folder = cache_dir()
    arrays = [
        np.array(entry.splits, dtype=str),
        np.array(entry.metrics, dtype=str),
        np.array(entry.warnings, dtype=str),
        entry.split_codes,
        entry.metric_codes,
        *(np.asarray(getattr(entry, column), dtype) for column, dtype in STORED),
    ]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=SUFFIX, dir=folder)
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as out:
            for array in arrays:
                np.save(out, array, allow_pickle=False)
        os.replace(tmp, folder / (name + SUFFIX))
    except OSError:
        Path(tmp).unlink(missing_ok=True)  # a full disk: no half-written entry stays


@dataclass(frozen=True)
class Info:
    """What the cache folder holds."""

    folder: Path
    entries: int
    bytes: int


def info() -> Info:
    """The cache folder, its number of entries and their size."""
    folder = cache_dir()
    found = folder.glob("*" + SUFFIX) if folder.is_dir() else []
    files = [f for f in found if not f.name.startswith(".")]  # not those being written
    return Info(folder, len(files), sum(f.stat().st_size for f in files))


def clear() -> Info:
    """Remove every cached entry; what was removed."""
    removed = info()
    if removed.folder.is_dir():
        for suffix in (SUFFIX, *OLD_SUFFIXES):
            for stored in removed.folder.glob("*" + suffix):  # partial ones (`.*`) too
                stored.unlink(missing_ok=True)
    return removed
