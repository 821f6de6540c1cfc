"""Reading TensorBoard event files into rows of the long run table.

Values are read by `fastevents`, which checks both CRCs of every record, skips a record whose
payload is corrupt (with a warning naming the file and the byte offset) and gives exactly the
rows tbparse gives. A file it cannot reproduce is read with tbparse: before that, the file's
record framing is walked once, because TensorBoard's reader stops quietly at a truncated or
corrupt record: there that stop becomes a warning naming the file and the byte offset.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import crc32c
import numpy as np
import pandas as pd

from attn_entropy_cli.errors import AttnentWarning, InputError
from attn_entropy_cli.runs import fastevents, frames

EVENT_FILE_MARK = "tfevents"
MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C of `data`."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


@dataclass(frozen=True)
class Framing:
    """What walking an event file's records found."""

    records: int  # records whose framing and CRCs are intact
    good_bytes: int  # offset where the intact records end
    problem: str | None  # why reading stopped before the end, if it did


def check_framing(path: Path) -> Framing:
    """Walk the records of an event file and verify both CRCs of each."""
    data = path.read_bytes()
    offset = 0
    records = 0
    while offset < len(data):
        header = data[offset : offset + 12]
        if len(header) < 12:
            return Framing(records, offset, f"truncated record at byte {offset}")
        (length,) = struct.unpack("<Q", header[:8])
        (length_crc,) = struct.unpack("<I", header[8:12])
        if masked_crc(header[:8]) != length_crc:
            return Framing(records, offset, f"corrupt record header at byte {offset}")
        end = offset + 12 + length + 4
        if end > len(data):
            return Framing(records, offset, f"truncated record at byte {offset}")
        payload = data[offset + 12 : end - 4]
        (payload_crc,) = struct.unpack("<I", data[end - 4 : end])
        if masked_crc(payload) != payload_crc:
            return Framing(records, offset, f"corrupt record at byte {offset}")
        records += 1
        offset = end
    return Framing(records, offset, None)


def split_tag(tag: str) -> tuple[str, str]:
    """(split, metric) of a tag: `valid/ppl` -> (`valid`, `ppl`); no prefix -> `progress`."""
    if "/" in tag:
        split, metric = tag.split("/", 1)
        return split, metric
    return "progress", tag


def scalar_tensors(tensors: pd.DataFrame) -> pd.DataFrame:
    """The rank-0 rows of tbparse's tensor table (`add_scalar(..., new_style=True)`)."""
    if tensors.empty or pd.api.types.is_numeric_dtype(tensors["value"]):
        return tensors
    scalar = tensors["value"].map(lambda value: getattr(value, "ndim", 1) == 0)
    return tensors[scalar].assign(value=lambda t: t["value"].astype(float))


def read_event_file(path: Path) -> pd.DataFrame:
    """Scalars of one event file as columns `split, step, metric, value, wall_time`.

    Both classic `simple_value` scalars and rank-0 tensor summaries are read.
    """
    try:
        scan = fastevents.read_scalars(path)
    except fastevents.Fallback:
        return read_with_tbparse(path)
    report(path, scan)
    if not len(scan.step):
        return pd.DataFrame(columns=["split", "step", "metric", "value", "wall_time"])
    parts = [split_tag(tag) for tag in scan.tags]
    splits = sorted({split for split, _ in parts})
    metrics = sorted({metric for _, metric in parts})
    split_code = np.array([splits.index(split) for split, _ in parts], np.int32)
    metric_code = np.array([metrics.index(metric) for _, metric in parts], np.int32)
    return frames.file_table(
        splits,
        split_code[scan.tag],
        metrics,
        metric_code[scan.tag],
        scan.step,
        scan.value,
        scan.wall_time,
    )


def report(path: Path, scan: fastevents.Scan) -> None:
    """Warn about skipped records and an early stop; an error if no record was intact."""
    problems = [f"corrupt record at byte {offset}" for offset in scan.skipped[:1]]
    if scan.problem is not None:
        problems.append(scan.problem)
    # a damaged first record (the file version, which sets TensorBoard's rules) or nothing
    # intact: the file as a whole is unreadable
    if problems and (scan.records == 0 or scan.skipped[:1] == [0]):
        raise InputError(
            f"event file {path} is unreadable ({problems[0]}). Remove it or give another run"
        )
    if scan.skipped:
        shown = ", ".join(str(offset) for offset in scan.skipped[:5])
        more = f" and {len(scan.skipped) - 5} more" if len(scan.skipped) > 5 else ""
        warnings.warn(
            f"event file {path}: {len(scan.skipped)} corrupt record(s) skipped (CRC mismatch) "
            f"at byte {shown}{more}; read the records after them",
            AttnentWarning,
            stacklevel=3,
        )
    if scan.problem is not None:
        warnings.warn(
            f"event file {path}: {scan.problem}; read the {scan.records} records before it",
            AttnentWarning,
            stacklevel=3,
        )


def read_with_tbparse(path: Path) -> pd.DataFrame:
    """Scalars of one event file read with tbparse, stopping at the first damaged record."""
    from tbparse import SummaryReader

    framing = check_framing(path)
    if framing.problem is not None:
        if framing.records == 0:
            raise InputError(
                f"event file {path} is unreadable ({framing.problem}). "
                "Remove it or give another run"
            )
        warnings.warn(
            f"event file {path}: {framing.problem}; read the {framing.records} records before it",
            AttnentWarning,
            stacklevel=2,
        )

    reader = SummaryReader(str(path), extra_columns={"wall_time"})
    frames = [reader.scalars, scalar_tensors(reader.tensors)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["split", "step", "metric", "value", "wall_time"])
    frame = pd.concat(frames, ignore_index=True)

    parts = frame["tag"].map(split_tag)
    return pd.DataFrame(
        {
            "split": parts.map(lambda p: p[0]),
            "step": frame["step"].astype("int64"),
            "metric": parts.map(lambda p: p[1]),
            "value": frame["value"].astype("float64"),
            "wall_time": frame["wall_time"].astype("float64"),
        }
    )
