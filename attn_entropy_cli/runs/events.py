"""Reading TensorBoard event files into rows of the long run table.

Values are read with tbparse. Before that, the file's record framing (length, CRC, payload,
CRC) is walked once, because TensorBoard's reader stops quietly at a truncated or corrupt
record: here that stop becomes a warning naming the file and the byte offset.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import crc32c
import pandas as pd

from attn_entropy_cli.errors import AttnentWarning, InputError

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
