"""Reading EOLE and OpenNMT-py console logs into rows of the long run table.

A `Step` line is read as `key: value` pairs, so a field that a new EOLE version adds is kept
under its own name, not dropped. The validation block that follows a `Step` line belongs to
that line's step.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from attn_entropy_cli.errors import InputError

# `[2026-12-03 16:24:14,631 INFO] message`
PREFIX = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:,(\d{1,6}))? [A-Z]+\] ?(.*)$")
STEP = re.compile(r"^Step\s+(\d+)(?:\s*/\s*\d+)?\s*;(.*)$")
PAIR = re.compile(r"([A-Za-z_][\w.-]*):\s*(\S+)")
TOKENS_PER_SECOND = re.compile(r"^(\S+)\s*/\s*(\S+)\s+tok/s$")
SECONDS = re.compile(r"^(\S+)\s+sec$")
BLOCK = re.compile(r"^(Train|Validation) ([A-Za-z][A-Za-z _]*?):\s*(\S+)\s*$")

# log names that TensorBoard spells differently; TensorBoard's names win
LOG_TO_METRIC = {
    "acc": "accuracy",
    "attn_ent": "attention_entropy",
    "mtp": "mtp_xent",
    "perplexity": "ppl",
}
BLOCK_SPLIT = {"Train": "train", "Validation": "valid"}
# `bsz: 748/ 744/32` is average source tokens, target tokens and sentences per batch
BSZ_PARTS = ("bsz_src", "bsz_tgt", "bsz_sents")

MAX_STEP = 2**63 - 1  # the largest step the table's int64 column holds
Row = tuple[str, int, str, float, float]  # (split, step, metric, value, wall_time)


def metric_name(key: str) -> str:
    """The run-table name of a log field (`acc` -> `accuracy`)."""
    key = key.strip().lower().replace(" ", "_")
    return LOG_TO_METRIC.get(key, key)


def parse_number(text: str) -> float | None:
    """A float from a log field, or None when the field is not a number."""
    try:
        return float(text.rstrip(";,"))
    except ValueError:
        return None


def parse_wall_time(date: str, millis: str | None) -> float:
    """Seconds since the epoch of a log prefix, read in this machine's time zone.

    Limitations: log prefixes carry no time zone, so a log written in another zone is off
    by the difference; steps and values are unaffected.
    """
    zone = (os.environ.get("TZ"), time.timezone, time.altzone, time.tzname)
    stamp = local_seconds(date, zone)
    if millis:
        stamp += int(millis) / 10 ** len(millis)
    return stamp


@functools.lru_cache(maxsize=4096)
def local_seconds(date: str, zone: tuple) -> float:
    """Seconds since the epoch of `YYYY-mm-dd HH:MM:SS` in local time; `zone` keys the cache
    (lines of one second share a date, and `strptime` is slow)."""
    return datetime.strptime(date, "%Y-%m-%d %H:%M:%S").timestamp()


def parse_step_fields(body: str) -> Iterator[tuple[str, float]]:
    """The (metric, value) pairs of the part of a Step line after `Step N/M;`."""
    for field in body.split(";"):
        field = field.strip()
        if not field:
            continue
        rate = TOKENS_PER_SECOND.match(field)
        if rate:
            # EOLE's TensorBoard calls the target rate `tgtper`
            for name, text in zip(("srcper", "tgtper"), rate.groups()):
                value = parse_number(text)
                if value is not None:
                    yield name, value
            continue
        seconds = SECONDS.match(field)
        if seconds:
            value = parse_number(seconds.group(1))
            if value is not None:
                yield "elapsed", value
            continue
        if field.startswith("bsz:"):
            for name, text in zip(BSZ_PARTS, field[4:].split("/")):
                value = parse_number(text)
                if value is not None:
                    yield name, value
            continue
        # one field, or the space-separated extra metrics EOLE appends at the end
        for key, text in PAIR.findall(field):
            value = parse_number(text)
            if value is not None:
                yield metric_name(key), value


def step_line(message: str) -> re.Match | None:
    """The `STEP` match of a message that is a Step line, None for any other message."""
    match = STEP.match(message) if message.startswith("Step") else None
    if match and int(match.group(1)) > MAX_STEP:
        return None  # no run gets there: damage, not a step, and too large for the table
    return match


def parse_lines(lines: Iterable[str], step: int | None = None) -> tuple[list[Row], int]:
    """Rows of Step lines and validation blocks, and the count of blocks with no step.

    Lines that are not metrics (the printed model tree, continuation lines, other
    messages) are skipped. `step`: that of the Step line before these lines, if any.
    """
    rows: list[Row] = []
    orphans = 0
    for line in lines:
        match = PREFIX.match(line)
        if not match:
            continue
        date, millis, message = match.groups()
        message = message.rstrip()
        if message.startswith("Step"):
            step_match = step_line(message)
            if not step_match:
                continue
            step = int(step_match.group(1))
            wall_time = parse_wall_time(date, millis)
            for metric, value in parse_step_fields(step_match.group(2)):
                rows.append(("progress", step, metric, value, wall_time))
            continue
        block = BLOCK.match(message)
        if block:
            value = parse_number(block.group(3))
            if value is None:
                continue
            if step is None:
                orphans += 1
                continue
            split = BLOCK_SPLIT[block.group(1)]
            metric = metric_name(block.group(2))
            rows.append((split, step, metric, value, parse_wall_time(date, millis)))
    return rows, orphans


ROTATED = re.compile(r"^(?P<base>.+?)(?:\.(?P<index>\d+))?(?:\.gz)?$")


def rotation_order(paths: Iterable[Path]) -> list[Path]:
    """Log files in the order they were written: `x.log.2`, `x.log.1`, `x.log`.

    Rotated copies keep their base name with a number (higher is older), optionally
    gzipped; files of different base names keep their name order.
    """

    def key(path: Path) -> tuple[str, int]:
        match = ROTATED.match(path.name)
        if match is None:  # an empty name; the pattern matches every other
            return str(path), 0
        index = int(match.group("index") or 0)
        return str(path.parent / match.group("base")), -index

    return sorted(paths, key=key)


def open_text(path: Path):
    """A text handle on a plain or gzipped log."""
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def read_log(path: Path) -> list[Row]:
    """The rows of one console log; an error if it holds no Step line."""
    try:
        with open_text(path) as handle:
            rows, orphans = parse_lines(handle)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise InputError(
            f"cannot read log {path}: {error}. Check that the file is complete"
        ) from None
    if not rows:
        if path.stat().st_size == 0:
            raise InputError(f"log {path} is empty. Give a log written by a training run")
        raise InputError(f"log {path} has no 'Step' lines. Give an EOLE or OpenNMT-py training log")
    return rows
