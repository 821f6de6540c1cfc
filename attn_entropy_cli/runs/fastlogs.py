"""Reading console logs in bulk, with exactly the rows of the generic reader `logs.parse_lines`.

The log is read in chunks (8 MB) straight into one buffer, so memory follows the result, not
the file. In each chunk:
- The `Step` lines are cut into runs of number characters (`0-9 . + - e E`) and the text
  between them. The shape of the file's own Step lines (the text between the runs, and which
  run is the step, which a value, which part of a name) is learned from a real line by asking
  `logs.parse_lines` how it reads that line with each run changed; an EOLE 0.6.4 line (with
  `mtp:`), an OpenNMT-py line (without `attn_ent:`) or a resumed run whose version added a
  field are each one more shape.
- Every line of a known shape is checked byte for byte with numpy, eight bytes at a time: the
  text between numbers as units (fixed text and the spaces that may follow it, a word or two
  each), the digits of the time stamp from the words that hold it. Its numbers are parsed with
  numpy exactly as Python's `float()` reads them (a mantissa of at most 8 digits times or over
  an exact power of ten is rounded once, so the result is the same): those written as the
  template's own (`%.2f` of any width, `%.2e`) with fixed masks, the others by the general
  bit tricks.
- Any other line (validation blocks, other messages, a line of an unknown shape, `nan`, long
  numbers, bad dates) is read by `logs.parse_lines` itself, in file order, with the step of the
  last Step line before it.
"""

from __future__ import annotations

import functools
import gzip
import mmap
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from attn_entropy_cli.errors import InputError
from attn_entropy_cli.runs import allocator, frames, logs

CHUNK_BYTES = 8 << 20
MAX_TEMPLATES = 32  # shapes of Step lines learned per file; lines of other shapes go one by one
BATCH_LINES = 2048  # Step lines checked and parsed together (their arrays stay in cache)
MAX_SPACES = 64  # a longer run of spaces inside a Step line sends the line to the generic reader
FRONT = 8  # zero bytes before a chunk, so an eight-byte read ending at a run never starts before it
BACK = 128  # zero bytes after it, so reads from a line's end up to BACK - 8 on need no clipping
NUMBER_RUN = re.compile(r"[0-9.+\-eE]+")

ONES = 0x0101010101010101
SPACES = 0x2020202020202020
LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
POWERS = np.array([10.0**n for n in range(23)])  # every one exact in a double
TEXT_SLOTS = ("literal", "stamp")  # runs checked as text, not read as numbers
NUMBER_SLOTS = ("step", "value", "ignored")
# split, step, metric, value, wall_time; codes widen to int32 when there are more names
COLUMN_TYPES = (np.int8, np.int64, np.int16, np.float64, np.float64)

Row = logs.Row


# templates


@dataclass(frozen=True)
class Gap:
    """The text between two runs of number characters (or a run and the line's end)."""

    text: bytes  # exact, without the spaces that may vary
    flexible: bool  # whether any number (>= min_spaces) of spaces may follow `text`
    min_spaces: int


@dataclass(frozen=True)
class Slot:
    """One run of number characters in a Step line and what the generic reader makes of it."""

    kind: str  # "stamp" (time stamp part), "literal", "step", "value" or "ignored"
    text: bytes  # the run of the line the template was learned from
    row: int = -1  # for "value": the row of the line it gives


@dataclass(frozen=True)
class Template:
    """The shape of a family of Step lines, learned from one of them."""

    gaps: tuple[Gap, ...]  # (runs + 1,)
    slots: tuple[Slot, ...]  # (runs,)
    millis: int  # digits of the milliseconds of the time stamp, 0 when it has none
    rows: tuple[tuple[str, str], ...]  # (split, metric) of each row a line gives, in order
    value_slots: tuple[int, ...]  # the slot of each row
    step_slot: int


def replaced(line: str, start: int, end: int, text: str) -> list[Row]:
    """The generic reader's rows of a line with `line[start:end]` replaced by `text`."""
    return logs.parse_lines([line[:start] + text + line[end:]])[0]


def probe_number(text: str, candidates: tuple[str, ...]) -> str:
    """A number text from `candidates` whose value differs from `text`'s."""
    return next(c for c in candidates if float(c) != float(text))


def is_number(text: str) -> bool:
    """Whether Python's `float()` reads a run of number characters."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def classify(line: str, base: list[Row], start: int, end: int) -> Slot | None:
    """What one run after the time stamp is, found by changing it; None when it is unclear."""
    text = line[start:end]
    if not is_number(text):
        return Slot("literal", text.encode())
    whole = probe_number(text, ("7", "8"))
    rows = replaced(line, start, end, whole)
    if rows == base:
        return Slot("ignored" if text.isdigit() else "literal", text.encode())
    if text.isdigit() and rows == [(a, int(whole), m, v, w) for a, _, m, v, w in base]:
        return Slot("step", text.encode())
    changed = [i for i, (old, new) in enumerate(zip(base, rows)) if old != new]
    if len(rows) != len(base) or len(changed) != 1:
        return Slot("literal", text.encode())
    row = changed[0]
    for probe in (
        whole,
        probe_number(text, ("6.25", "6.5")),
        probe_number(text, ("-2.5e-3", "-3e-2")),
    ):
        expected = list(base)
        expected[row] = base[row][:3] + (float(probe),) + base[row][4:]
        if replaced(line, start, end, probe) != expected:
            return None
    return Slot("value", text.encode(), row)


def gap_rule(line: str, base: list[Row], start: int, end: int) -> Gap:
    """The text between two runs and whether the spaces ending it may vary."""
    text = line[start:end]
    fixed = text.rstrip(" ")
    same = {n: replaced(line, start, end, fixed + " " * n) == base for n in (0, 1, 3)}
    if same[1] and same[3]:
        return Gap(fixed.encode(), True, 0 if same[0] else 1)
    return Gap(text.encode(), False, 0)


def learn(line: str) -> Template | None:
    """The template of a Step line, or None when this reader cannot read lines like it."""
    match = logs.PREFIX.match(line)
    if not line.isascii() or not match or not match.group(3).rstrip().startswith("Step"):
        return None
    base, _ = logs.parse_lines([line])
    if not base:
        return None
    runs = [m.span() for m in NUMBER_RUN.finditer(line)]
    millis = len(match.group(2) or "")
    stamp = [(1, 11), (12, 14), (15, 17), (18, 20)] + ([(21, 21 + millis)] if millis else [])
    if runs[: len(stamp)] != stamp:
        return None
    bounds = [0] + [p for span in runs for p in span] + [len(line)]
    gaps = []
    for k in range(len(runs) + 1):
        start, end = bounds[2 * k], bounds[2 * k + 1]
        exact = k < len(stamp) or k == len(runs)
        gaps.append(
            Gap(line[start:end].encode(), False, 0) if exact else gap_rule(line, base, start, end)
        )
    slots = [Slot("stamp", line[s:e].encode()) for s, e in stamp]
    for start, end in runs[len(stamp) :]:
        slot = classify(line, base, start, end)
        if slot is None:
            return None
        slots.append(slot)
    value_slots = {slot.row: k for k, slot in enumerate(slots) if slot.kind == "value"}
    steps = [k for k, slot in enumerate(slots) if slot.kind == "step"]
    if sorted(value_slots) != list(range(len(base))) or len(steps) != 1:
        return None
    return Template(
        tuple(gaps),
        tuple(slots),
        millis,
        tuple((split, metric) for split, _, metric, _, _ in base),
        tuple(value_slots[i] for i in range(len(base))),
        steps[0],
    )


def number_bytes(data: np.ndarray) -> np.ndarray:
    """Whether each byte is a number character (`0-9 . + - e E`), in a few passes over bytes."""
    number = (data - np.uint8(0x2B)) < 15  # `+ , - . / 0-9`
    number &= (data != ord(",")) & (data != ord("/"))
    number |= (data | np.uint8(0x20)) == ord("e")
    return number


def shape_key(line: str) -> str:
    """A line with its numbers and space runs blanked: lines of one key share a template."""
    return re.sub(r" +", " ", NUMBER_RUN.sub("#", line))


# numbers


def unaligned(buffer: np.ndarray) -> np.ndarray:
    """The eight bytes from each position of a buffer, as little-endian integers."""
    return np.ndarray((len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))


def words(buffer: np.ndarray, at: np.ndarray, reach: int = BACK + 1) -> np.ndarray:
    """The eight bytes from each position, as little-endian integers."""
    # `reach`: how far past a line's end the reads may end; within BACK they need no clipping
    return unaligned(buffer)[at if reach <= BACK else np.clip(at, 0, len(buffer) - 8)]


def parse_numbers(buffer: np.ndarray, start: np.ndarray, end: np.ndarray):
    """Runs of number characters read as Python's `float()` and `int()` read them.

    Returns (value, readable, whole, integer): the float, whether `float()` reads it, whether
    it is digits only, and its integer value when it is.
    """
    length = end - start
    short = length <= 8
    below = np.left_shift(np.uint64(1), (64 - 8 * np.clip(length, 1, 8)).astype(np.uint64))
    below -= np.uint64(1)  # the bytes before the run
    text = unaligned(buffer)[end - 8] & ~below
    first = below + np.uint64(1)  # bit 0 of the run's first byte

    # per byte, in bit 0: digit, not a digit, e or E, dot, sign, minus
    digit = (text >> np.uint64(4)) & np.uint64(ONES)
    other = ((~below >> np.uint64(7)) & np.uint64(ONES)) ^ digit
    exp = (text >> np.uint64(6)) & other
    dot = (text >> np.uint64(1)) & ~text & other
    sign = other ^ exp ^ dot
    minus = sign & ~(text >> np.uint64(1))

    # the grammar of `float()` on these characters: [+-] digits [. digits] [e [+-] digits]
    before_exp = exp - np.uint64(1)  # every byte before the e (all when there is none)
    readable = (
        short
        & ((exp & before_exp) == 0)
        & ((dot & (dot - np.uint64(1))) == 0)
        & ((dot & ~before_exp) == 0)
        & ((sign & ~(first | (exp << np.uint64(8)))) == 0)
        & ((digit & before_exp) != 0)
    )

    # mantissa digits right-aligned, the dot taken out
    values = text & (digit * np.uint64(15))
    left = dot - (dot != 0)  # the bytes before the dot
    mantissa = eight_digits(((values & left) << np.uint64(8)) | (values & ~left))
    exponent = (np.bitwise_count(left) >> 3).astype(np.int64)
    exponent -= 7 * (dot != 0)  # minus the digits after the dot

    # runs with an exponent: the mantissa and its exponent again, from the bytes around the e
    with_exp = np.flatnonzero(exp)
    if len(with_exp):
        parts = (values, digit, exp, dot, minus)
        good, mantissa[with_exp], exponent[with_exp] = exponent_parts(*(a[with_exp] for a in parts))
        readable[with_exp] &= good
    exact = (np.abs(exponent) <= 22) | (mantissa == 0)
    power = POWERS[np.minimum(np.abs(exponent), 22)]
    value = mantissa.astype(np.float64)
    value = np.where(exponent >= 0, value * power, value / power)
    np.negative(value, out=value, where=(minus & first) != 0)
    whole = short & (other == 0)

    # what the bytes cannot give exactly (more than 8 characters, large exponents): Python
    slow = np.flatnonzero(~short | (readable & ~exact))
    integer = mantissa.astype(np.int64)
    for i in slow:
        run = buffer[start[i] : end[i]].tobytes()
        readable[i] = is_number(run.decode())
        value[i] = float(run) if readable[i] else 0.0
        whole[i] = run.isdigit()
        integer[i] = int(run) if whole[i] and len(run) < 19 else 0
        whole[i] &= len(run) < 19
    return value, readable, whole, integer


HIGH_BITS = np.uint64(0x8080808080808080)
TOP_BYTES = np.array([(1 << 64) - (1 << (8 * (8 - n))) for n in range(9)], dtype=np.uint64)
PLAIN = re.compile(rb"[0-9]+(\.[0-9]+)?")
SCIENTIFIC = re.compile(rb"([0-9]+)(?:\.([0-9]+))?[eE]([+-]?)([0-9]+)")
DIGIT_CARRY = 0x7676767676767676


@dataclass(frozen=True)
class Form:
    """How the numbers of a column are written, learned from its first: `12.5` (plain: digits
    with these decimals, up to 8 characters) or `2.50e-02` (scientific: this length).

    The masks are of the little-endian word whose last byte is the run's last."""

    scientific: bool
    pattern: int  # the characters, digits as "0"
    carry: int  # per byte 0x76 for a digit (<= 9 after the xor), 0x7F for a dot or an e (== 0)
    decimals: int  # digits after the dot
    length: int  # plain: the shortest; scientific: the only length
    left: int  # the bytes before the dot, once the mantissa's last byte is the top one
    check: int = 0  # scientific: the bytes the pattern checks, the run's but the exponent sign
    sign: int = -1  # scientific: the first bit of the exponent sign's byte; -1 without one
    mantissa: int = 0  # scientific: the bytes of the mantissa
    shift: int = 0  # scientific: bits that move the mantissa's last byte to the top
    exponent: int = 0  # scientific: the bytes of the exponent's digits


def column_form(run: bytes) -> Form | None:
    """The form of a column whose first number is `run`; None when it has none of the two."""
    if len(run) > 8:
        return None
    dot = run.find(b".")
    if PLAIN.fullmatch(run):
        if dot < 0:
            return Form(False, int.from_bytes(b"0" * 8, "little"), DIGIT_CARRY, 0, 1, 0)
        decimals = len(run) - dot - 1
        at = 8 * (7 - decimals)  # the dot's byte
        pattern = int.from_bytes(b"0" * (7 - decimals) + b"." + b"0" * decimals, "little")
        return Form(False, pattern, DIGIT_CARRY | 0x09 << at, decimals, 2 + decimals, (1 << at) - 1)
    match = SCIENTIFIC.fullmatch(run)
    if not match:
        return None
    shift = 8 * (8 - len(run))  # the bytes before the run
    e = match.start(3) - 1
    sign = 8 * match.start(3) + shift if match.group(3) else -1
    check = int(TOP_BYTES[len(run)]) & ~(0xFF << sign if sign >= 0 else 0)
    chars = int.from_bytes(bytes(48 if 48 <= c <= 57 else c for c in run), "little") << shift
    carry = int.from_bytes(bytes(0x76 if 48 <= c <= 57 else 0x7F for c in run), "little") << shift
    return Form(
        True,
        chars & check,
        carry & check,
        len(match.group(2) or b""),
        len(run),
        (1 << (8 * (8 - e + dot))) - 1 if dot >= 0 else 0,
        check,
        sign,
        ((1 << (8 * e)) - 1) << shift,
        8 * (len(run) - e),
        int(TOP_BYTES[len(match.group(4))]),
    )


def parse_columns(buffer: np.ndarray, start: np.ndarray, end: np.ndarray, forms: tuple):
    """`parse_numbers` of runs (columns, lines), most of each column read by fixed masks.

    `forms`: of each column, its `Form` or None."""
    # the numbers of a column are mostly written alike (`%.2f`, `%.2e`): checked and read with
    # constant masks in a few operations; the rest take the generic path
    length = end - start
    text = unaligned(buffer)[end - 8]
    value = np.zeros(text.shape)
    readable = np.zeros(text.shape, dtype=bool)
    integer = np.zeros(text.shape, dtype=np.int64)
    whole = np.zeros(text.shape, dtype=bool)
    plain = [k for k, form in enumerate(forms) if form and not form.scientific]
    if plain:
        columns = [forms[k] for k in plain]
        at = np.array(plain)
        pattern, carry, decimals, shortest, left = (
            np.array([getattr(f, name) for f in columns], dtype=dtype)[:, None]
            for name, dtype in (
                ("pattern", np.uint64),
                ("carry", np.uint64),
                ("decimals", np.intp),
                ("length", np.int64),
                ("left", np.uint64),
            )
        )
        n = length[at]
        digits = (text[at] ^ pattern) & TOP_BYTES[np.clip(n, 0, 8)]
        fits = (n >= shortest) & (n <= 8) & (((digits + carry) & HIGH_BITS) == 0)
        mantissa = eight_digits(((digits & left) << np.uint64(8)) | (digits & ~left))
        value[at] = mantissa.astype(np.float64) / POWERS[decimals]
        readable[at] = fits
        whole[at] = fits & (decimals == 0)
        integer[at] = mantissa.astype(np.int64)
    for k, form in enumerate(forms):
        if form and form.scientific:
            value[k], readable[k] = parse_scientific(form, text[k], length[k])
    rest = np.flatnonzero(~readable)  # flat indices: a tuple of index arrays is slower
    if len(rest):
        flat = [a.reshape(-1) for a in (value, readable, whole, integer)]
        parts = parse_numbers(buffer, start.reshape(-1)[rest], end.reshape(-1)[rest])
        for out, part in zip(flat, parts):
            out[rest] = part
    return value, readable, whole, integer


def parse_scientific(form: Form, text: np.ndarray, length: np.ndarray):
    """(value, read) of one column's numbers written as `form`, a scientific one."""
    digits = (text ^ np.uint64(form.pattern)) & np.uint64(form.check)
    fits = (length == form.length) & (((digits + np.uint64(form.carry)) & HIGH_BITS) == 0)
    mantissa = (digits & np.uint64(form.mantissa)) << np.uint64(form.shift)
    left = np.uint64(form.left)
    mantissa = eight_digits(((mantissa & left) << np.uint64(8)) | (mantissa & ~left))
    exponent = eight_digits(digits & np.uint64(form.exponent)).astype(np.int64)
    if form.sign >= 0:
        sign = (text >> np.uint64(form.sign)) & np.uint64(0xFF)
        fits &= (sign == ord("+")) | (sign == ord("-"))
        exponent = np.where(sign == ord("-"), -exponent, exponent)
    exponent -= form.decimals
    fits &= np.abs(exponent) <= 22
    power = POWERS[np.minimum(np.abs(exponent), 22)]
    value = mantissa.astype(np.float64)
    return np.where(exponent >= 0, value * power, value / power), fits


def exponent_parts(values, digit, exp, dot, minus):
    """(readable, mantissa, power of ten) of runs with an e: the digits before it with the dot
    taken out, and the signed digits after it less those after the dot."""
    before = exp - np.uint64(1)
    after = ~(before | (exp * np.uint64(255)))
    shift = np.uint64(64) - np.bitwise_count(before).astype(np.uint64)
    mantissa = (values & before) << shift
    mantissa_dot = (dot & before) << shift
    left = mantissa_dot - (mantissa_dot != 0)
    mantissa = eight_digits(((mantissa & left) << np.uint64(8)) | (mantissa & ~left))
    decimals = np.where(mantissa_dot != 0, 7 - (np.bitwise_count(left) >> 3).astype(np.int64), 0)
    exponent = eight_digits(values & after).astype(np.int64)
    exponent = np.where((minus & (exp << np.uint64(8))) != 0, -exponent, exponent) - decimals
    return (digit & after) != 0, mantissa, exponent


def eight_digits(values: np.ndarray) -> np.ndarray:
    """The number written by eight digit values, one a byte, the first in the lowest byte."""
    values = (values * np.uint64(10) + (values >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    values = (values * np.uint64(100) + (values >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    return (values * np.uint64(10000) + (values >> np.uint64(32))) & np.uint64(0xFFFFFFFF)


def untouched(length: int, dtype, populate: bool = False) -> np.ndarray:
    """An array of zeros whose pages are only made when first written, or, with `populate`,
    all at once when it is made."""
    # in small pages: numpy asks for huge pages for large arrays, which the kernel may first
    # compact memory for (measured: 1 s of system time for the 450 MB of a 211 MB log's rows).
    # Pages made at once cost half as much as pages faulted in one by one (112 MB: 47 against
    # 88 ms), for an array that will be written whole.
    if length * np.dtype(dtype).itemsize < 1 << 20:
        return np.zeros(length, dtype)
    size = length * np.dtype(dtype).itemsize
    if populate and hasattr(mmap, "MAP_POPULATE"):  # Linux only
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
        return np.frombuffer(mmap.mmap(-1, size, flags=flags), dtype)
    return np.frombuffer(mmap.mmap(-1, size), dtype)


@dataclass
class Matched:
    """The Step lines of one template in one chunk, read."""

    lines: np.ndarray  # (lines,) index into the chunk's lines
    step: np.ndarray  # (lines,) int64
    wall_time: np.ndarray  # (lines,) float64
    values: np.ndarray  # (lines, rows) float64


@dataclass
class LogColumns:
    """The rows of a log as columns: codes into `splits` and `metrics`, and arrays."""

    splits: list[str]
    split_codes: np.ndarray  # (rows,) int8 (int32 past 128 names)
    metrics: list[str]
    metric_codes: np.ndarray  # (rows,) int16 (int32 past 32768 names)
    step: np.ndarray  # (rows,) int64
    value: np.ndarray  # (rows,) float64
    wall_time: np.ndarray  # (rows,) float64
    orphans: int  # validation blocks before any Step line

    def rows(self) -> list[Row]:
        """The rows as `logs.parse_lines` gives them."""
        return list(
            zip(
                [self.splits[c] for c in self.split_codes.tolist()],
                self.step.tolist(),
                [self.metrics[c] for c in self.metric_codes.tolist()],
                self.value.tolist(),
                self.wall_time.tolist(),
            )
        )

    def table(self) -> pd.DataFrame:
        """The per-file table (`split, step, metric, value, wall_time`)."""
        return frames.file_table(
            self.splits,
            self.split_codes,
            self.metrics,
            self.metric_codes,
            self.step,
            self.value,
            self.wall_time,
        )


@dataclass
class Reader:
    """The state carried from chunk to chunk: templates, the last step, the rows so far."""

    templates: list[Template] = field(default_factory=list)
    plans: list = field(default_factory=list)  # of each template, its text plan and forms
    unreadable: set[str] = field(default_factory=set)  # shapes no template could be learned of
    step: int | None = None
    orphans: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, int] = field(default_factory=dict)
    minutes: dict[bytes, float] = field(default_factory=dict)  # minute -> its epoch seconds
    total_bytes: int = 0  # the size of the whole log when known, else 0
    done_bytes: int = 0  # bytes given to `chunk` so far
    size: int = 0  # rows so far
    out: list[np.ndarray] = field(default_factory=lambda: [np.empty(0, t) for t in COLUMN_TYPES])
    memory: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # chunk buffers
    changes: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # run edges

    def code(self, names: dict[str, int], name: str) -> int:
        """The code of a split or metric name, a new one when it is new."""
        return names.setdefault(name, len(names))

    def room(self, length: int) -> np.ndarray:
        """The chunk buffer, with room for `length` bytes of lines after its FRONT zero bytes
        (what it held is kept)."""
        # one buffer for every chunk: fresh memory is slow to touch
        size = FRONT + length + BACK + 1
        if len(self.memory) < size:
            grown = untouched(size + (size >> 3), np.uint8, populate=True)
            grown[: len(self.memory)] = self.memory
            self.memory = grown
        return self.memory

    def chunk(self, data: bytes) -> None:
        """Read the whole lines of `data` (newlines already `\\n`) into rows."""
        self.room(len(data))[FRONT : FRONT + len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.lines(len(data))

    def lines(self, length: int) -> None:
        """Read the whole lines in the chunk buffer's `length` bytes after FRONT into rows."""
        self.done_bytes += length + 1
        size = FRONT + length + BACK
        buffer = self.memory[:size]
        self.memory[FRONT + length : size + 1] = 0
        breaks = np.flatnonzero(buffer[FRONT : FRONT + length] == 10) + FRONT
        starts = np.concatenate([[FRONT], breaks + 1])
        ends = np.concatenate([breaks, [FRONT + length]])

        # runs of number characters, and which of them each line holds
        number = number_bytes(self.memory[: size + 1])
        # into a kept buffer, with the change at i stored at i (no `+ 1` pass): fresh large
        # arrays cost a page fault per page
        if len(self.changes) < len(number):
            self.changes = untouched(len(self.memory) + 1, bool, populate=True)
        changes = self.changes[: len(number)]
        changes[0] = False
        np.not_equal(number[1:], number[:-1], out=changes[1:])
        edges = np.flatnonzero(changes)
        run_starts, run_ends = edges[0::2], edges[1::2]
        # runs begun before a position: half the edges before it, rounded up (on `edges` itself,
        # as searchsorted copies a strided array on every call; in int32, half the cache misses)
        index = np.int32 if size < 1 << 31 else np.int64
        sorted_edges = edges.astype(index)
        first = (np.searchsorted(sorted_edges, starts.astype(index)) + 1) >> 1
        count = np.diff(first, append=len(run_starts))  # no run spans a line break

        which = np.full(len(starts), -1)
        found: list[tuple[int, Matched]] = []
        args = (buffer, starts, ends, run_starts, run_ends, first, count, which, found)
        for number in range(len(self.templates)):
            self.match(*args, number)

        # lines of no known shape: learn the shape of a Step line among them, once per shape
        for line in np.flatnonzero(which < 0).tolist():
            if which[line] >= 0 or len(self.templates) >= MAX_TEMPLATES:
                continue
            text = buffer[starts[line] : ends[line]].tobytes().decode("utf-8", "replace")
            if " Step" not in text or shape_key(text) in self.unreadable:
                continue
            template = learn(text)
            if template is None:
                self.unreadable.add(shape_key(text))
                continue
            self.templates.append(template)
            self.plans.append((text_plan(template), column_forms(template)))
            self.match(*args, len(self.templates) - 1)
            if which[line] < 0:  # its own line has a bad time stamp: read by the generic reader
                self.unreadable.add(shape_key(text))
        self.gather(buffer, starts, ends, which, found)

    def match(self, buffer, starts, ends, run_starts, run_ends, first, count, which, found, number):
        """Read the lines of one template among those not read yet."""
        template = self.templates[number]
        lines = np.flatnonzero((which < 0) & (count == len(template.slots)))
        if not len(lines):
            return
        # a few thousand lines at a time, so that the temporary arrays stay in the CPU's cache
        parts = [
            read_template(
                self, number, buffer, starts[at], ends[at], run_starts, run_ends, first[at]
            )
            for at in np.array_split(lines, -(-len(lines) // BATCH_LINES))
        ]
        ok, step, wall_time, values = (np.concatenate(p) for p in zip(*parts))
        if not ok.any():
            return
        if ok.all():  # the usual case: no copies
            matched = Matched(lines, step, wall_time, values)
        else:
            matched = Matched(lines[ok], step[ok], wall_time[ok], values[ok])
        which[matched.lines] = number
        found.append((number, matched))

    def gather(self, buffer, starts, ends, which, found) -> None:
        """The chunk's rows in line order: the read Step lines and the generic reader's rows."""
        progress = self.code(self.splits, "progress")
        per_line = np.zeros(len(starts), dtype=np.int64)
        for number, matched in found:
            per_line[matched.lines] = len(self.templates[number].rows)
        steps = np.full(len(starts), -1, dtype=np.int64)
        for _, matched in found:
            steps[matched.lines] = matched.step

        # the other lines, in runs of consecutive lines, each after the step of the line before
        other = np.flatnonzero(which < 0)
        groups = np.split(other, np.flatnonzero(np.diff(other) != 1) + 1) if len(other) else []
        read_lines = np.flatnonzero(which >= 0)
        generic: list[list[Row]] = []
        step, last = self.step, -1  # the step, and the line that set it
        for group in groups:
            before = np.searchsorted(read_lines, group[0])
            if before and read_lines[before - 1] > last:
                step = int(steps[read_lines[before - 1]])
            text = buffer[starts[group[0]] : ends[group[-1]]].tobytes()
            rows, step = self.generic(text.decode("utf-8", "replace").split("\n"), step)
            last = group[-1]
            generic.append(rows)
            per_line[group[0]] = len(rows)
        if len(read_lines) and read_lines[-1] > last:
            step = int(steps[read_lines[-1]])
        self.step = step

        # every row where its line puts it, straight into the output arrays
        total = int(per_line.sum())
        offsets = np.cumsum(per_line) - per_line
        template_codes = [[self.code(self.metrics, m) for _, m in t.rows] for t in self.templates]
        generic_codes = [
            (
                [self.code(self.splits, r[0]) for r in rows],
                [self.code(self.metrics, r[2]) for r in rows],
            )
            for rows in generic
        ]
        split, step, metric, value, wall_time = self.reserve(total)
        split[:] = progress
        for number, matched in found:
            codes = np.array(template_codes[number], dtype=metric.dtype)
            # runs of consecutive lines fill consecutive rows: copied as blocks, not scattered
            cuts = np.flatnonzero(np.diff(matched.lines) != 1) + 1
            if len(cuts) > len(matched.lines) >> 6:
                at = offsets[matched.lines][:, None] + np.arange(len(codes))
                metric[at] = codes
                step[at] = matched.step[:, None]
                value[at] = matched.values
                wall_time[at] = matched.wall_time[:, None]
                continue
            bounds = [0, *cuts.tolist(), len(matched.lines)]
            for i, j in zip(bounds[:-1], bounds[1:]):
                at = slice(int(offsets[matched.lines[i]]), None)
                at = slice(at.start, at.start + (j - i) * len(codes))
                metric[at].reshape(j - i, len(codes))[:] = codes
                step[at].reshape(j - i, len(codes))[:] = matched.step[i:j, None]
                value[at] = matched.values[i:j].reshape(-1)
                wall_time[at].reshape(j - i, len(codes))[:] = matched.wall_time[i:j, None]
        for rows, group, (split_codes, metric_codes) in zip(generic, groups, generic_codes):
            at = slice(offsets[group[0]], offsets[group[0]] + len(rows))
            split[at] = split_codes
            step[at] = [r[1] for r in rows]
            metric[at] = metric_codes
            value[at] = [r[3] for r in rows]
            wall_time[at] = [r[4] for r in rows]
        self.size += total

    def reserve(self, rows: int) -> list[np.ndarray]:
        """The output arrays' next `rows` rows (split, step, metric, value, wall_time)."""
        need = self.size + rows
        types = [a.dtype for a in self.out]
        for k, names in ((0, self.splits), (2, self.metrics)):
            if len(names) > np.iinfo(types[k]).max + 1:  # codes in fewer bytes are less to write
                types[k] = np.int32
        if need > len(self.out[0]) or types != [a.dtype for a in self.out]:
            # room for the rows the rest of the log likely gives, so that rows are copied once at
            # most (memory is slow to touch, and capacity never written costs none)
            guess = need * self.total_bytes // max(self.done_bytes, 1) * 9 // 8
            capacity = max(need, 2 * len(self.out[0]), guess, 1024)
            # made at once only when the size of the log says how much of it will be written
            grown = [untouched(capacity, t, populate=capacity == guess) for t in types]
            for new, old in zip(grown, self.out):
                new[: self.size] = old[: self.size]
            self.out = grown
        return [a[self.size : need] for a in self.out]

    def generic(self, lines: list[str], step: int | None) -> tuple[list[Row], int | None]:
        """The generic reader's rows of consecutive lines after a Step line of `step`, and the
        step after them."""
        rows, orphans = logs.parse_lines(lines, step)
        self.orphans += orphans
        for line in reversed(lines):
            match = logs.PREFIX.match(line)
            message = match.group(3).rstrip() if match else ""
            step_match = logs.step_line(message)
            if step_match:
                return rows, int(step_match.group(1))
        return rows, step

    def columns(self) -> LogColumns:
        """Every row read so far."""
        split, step, metric, value, wall_time = (a[: self.size] for a in self.out)
        return LogColumns(
            list(self.splits),
            split,
            list(self.metrics),
            metric,
            step,
            value,
            wall_time,
            self.orphans,
        )

    def wall_times(self, words: np.ndarray, millis: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch seconds of the time stamps of lines (the first words of each, (lines, k)), and
        which were read."""
        ok = np.ones(len(words), dtype=bool)
        for j, (pattern, mask, carry) in enumerate(stamp_checks(millis)):
            digits = (words[:, j] ^ np.uint64(pattern)) & np.uint64(mask)
            ok &= ((digits | (digits + np.uint64(carry))) & HIGH_BITS) == 0

        def number(*places: int) -> np.ndarray:
            out = np.zeros(len(words), dtype=np.int64)
            for place in places:
                byte = words[:, place >> 3] >> np.uint64(8 * (place & 7))
                out = out * 10 + (byte & np.uint64(15)).astype(np.int64)
            return out

        second = number(18, 19)
        ok &= second <= 59
        # lines of one minute come together: its epoch seconds are found once a run of them
        date = words[:, 0], words[:, 1], words[:, 2] & np.uint64(0xFF)  # `[YYYY-mm-dd HH:MM`
        new = np.logical_or.reduce([part[1:] != part[:-1] for part in date])
        first = np.concatenate([[0], np.flatnonzero(new) + 1])
        lines = np.diff(first, append=len(words))
        text = np.ascontiguousarray(words[first, :3]).view(np.uint8)
        base = np.repeat([self.minute(bytes(row[1:17])) for row in text], lines)
        ok &= ~np.isnan(base)
        wall_time = base + second
        if millis:
            fraction = number(*range(21, 21 + millis)) / 10**millis
            wall_time = wall_time + fraction
        return wall_time, ok

    def minute(self, date: bytes) -> float:
        """Epoch seconds of a `YYYY-mm-dd HH:MM` minute in local time; NaN where its seconds are
        not simply added (no such date, or a change of offset inside it)."""
        if date not in self.minutes:
            try:
                parts = [int(date[a:b]) for a, b in ((0, 4), (5, 7), (8, 10), (11, 13), (14, 16))]
                start = datetime(*parts).timestamp()
                end = datetime(*parts, 59).timestamp()
            except (ValueError, OverflowError, OSError):
                start = end = float("nan")
            self.minutes[date] = start if end - start == 59 else float("nan")
        return self.minutes[date]


@dataclass
class Unit:
    """A stretch of a Step line whose bytes are fixed, but for spaces that may end it: from a
    line start, a number's end or a run's start, to a number's start, a run's start or the
    line's end. Its place is given as rows of `text_fits`' positions."""

    start: int
    text: bytes = b""
    care: bytes = b""  # 1 where `text` is checked (time stamp digits are checked as a date)
    end: int = -1
    flexible: bool = False
    min_spaces: int = 0


def units_of(template: Template) -> list[Unit]:
    """The units of a template, in line order."""
    runs = len(template.slots)
    units, unit = [], Unit(0)  # rows: line starts, run ends, run starts, line ends
    for k, gap in enumerate(template.gaps):
        unit.text += gap.text
        unit.care += b"\1" * len(gap.text)
        if k == runs or gap.flexible:
            unit.end = runs + 1 + k if k < runs else 2 * runs + 1
            unit.flexible, unit.min_spaces = gap.flexible, gap.min_spaces
            units.append(unit)
            unit = None
        if k == runs:
            break
        slot = template.slots[k]
        if slot.kind in NUMBER_SLOTS:
            if unit is not None:
                unit.end = runs + 1 + k
                units.append(unit)
            unit = Unit(1 + k)
        else:
            if unit is None:  # after spaces that may vary, a text run starts a unit
                unit = Unit(runs + 1 + k)
            unit.text += slot.text
            unit.care += (b"\1" if slot.kind == "literal" else b"\0") * len(slot.text)
    return units


@dataclass(frozen=True)
class TextPlan:
    """A template's text checks as arrays, so that each kind is one operation on all units.

    Each unit is read by the words from its start that its text needs; spaces after its text go
    into the last of these words as far as they fit (the `fold` words, last in the arrays), the
    rest are read eight at a time."""

    end_slots: np.ndarray  # (number runs,) the runs whose ends are read: the numbers
    start_slots: np.ndarray  # the runs whose starts are read: the numbers, then text runs
    starts: np.ndarray  # (units,) rows of unit starts in the positions read (see `positions`)
    ends: np.ndarray  # (units,) rows of unit ends
    size: np.ndarray  # (units, 1) length of the text
    low: np.ndarray  # (units, 1) fewest spaces after it
    high: np.ndarray  # (units, 1) most spaces after it
    word_units: np.ndarray  # (words,) the unit of each word
    offsets: np.ndarray  # (words, 1) its place in the unit
    patterns: np.ndarray  # (words, 1)
    masks: np.ndarray  # (words, 1)
    folds: int  # the last `folds` words may end with spaces
    fold_units: np.ndarray  # (folds,) their units
    fold_at: np.ndarray  # (folds, 1) where the text ends in them
    fold_text: np.ndarray  # (folds, 1) the bytes of the text in them
    room: np.ndarray  # (units, 1) spaces the words of each unit hold
    flexible: np.ndarray  # (flexible units,)
    stamp_words: int  # the first words, from the line start, that hold the time stamp
    reach: int  # how far past a unit's start its words may end


@functools.lru_cache(maxsize=4 * MAX_TEMPLATES)
def text_plan(template: Template) -> TextPlan:
    """The text checks of a template (see `TextPlan`)."""
    units = units_of(template)
    words, folds = [], []
    room = []
    for u, unit in enumerate(units):
        count = -(-len(unit.text) // 8)
        room.append(8 * count - len(unit.text) if unit.flexible else 0)
        for offset in range(0, 8 * count, 8):
            part = unit.text[offset : offset + 8]
            care = int.from_bytes(unit.care[offset : offset + 8], "little") * 255
            word = (u, offset, int.from_bytes(part, "little") & care, care)
            last = offset + 8 >= len(unit.text)
            (folds if last and unit.flexible and room[-1] else words).append(word)
    stamp_words = 0
    while stamp_words < len(words) and words[stamp_words][:2] == (0, 8 * stamp_words):
        stamp_words += 1
    if units[0].start != 0:
        stamp_words = 0
    every = words + folds
    # the positions read: line starts, the ends of numbers, the starts of numbers and of text
    # runs that begin a unit, line ends (a text run's length follows from its unit's text)
    runs = len(template.slots)
    numbers = [k for k, slot in enumerate(template.slots) if slot.kind in NUMBER_SLOTS]
    texts = sorted({u.start - runs - 1 for u in units if runs < u.start <= 2 * runs} - {*numbers})
    starts = numbers + texts
    row = {0: 0, 2 * runs + 1: 1 + len(numbers) + len(starts)}
    row |= {1 + k: 1 + i for i, k in enumerate(numbers)}
    row |= {runs + 1 + k: 1 + len(numbers) + i for i, k in enumerate(starts)}
    column = lambda values, dtype=np.int64: np.array(values, dtype=dtype)[:, None]  # noqa: E731
    return TextPlan(
        end_slots=np.array(numbers, dtype=np.intp),
        start_slots=np.array(starts, dtype=np.intp),
        starts=np.array([row[unit.start] for unit in units], dtype=np.intp),
        ends=np.array([row[unit.end] for unit in units], dtype=np.intp),
        size=column([len(unit.text) for unit in units]),
        low=column([unit.min_spaces if unit.flexible else 0 for unit in units]),
        high=column([MAX_SPACES if unit.flexible else 0 for unit in units]),
        word_units=np.array([w[0] for w in every], dtype=np.intp),
        offsets=column([w[1] for w in every]),
        patterns=column([w[2] for w in every], np.uint64),
        masks=column([w[3] for w in every], np.uint64),
        folds=len(folds),
        fold_units=np.array([w[0] for w in folds], dtype=np.intp),
        fold_at=column([len(units[w[0]].text) - w[1] for w in folds]),
        fold_text=LOW_BYTES[[len(units[w[0]].text) - w[1] for w in folds]][:, None],
        room=column(room),
        flexible=np.array([u for u, unit in enumerate(units) if unit.flexible], dtype=np.intp),
        stamp_words=stamp_words,
        reach=max([len(u.text) + 8 for u in units] + [len(u.text) + 7 + MAX_SPACES for u in units]),
    )


def positions(plan: TextPlan, starts, ends, run_starts, run_ends, first) -> np.ndarray:
    """The places of lines that a template's checks and numbers need: (rows, lines), the rows
    being the line starts, `plan.end_slots`' ends, `plan.start_slots`' starts, the line ends."""
    return np.concatenate(
        [
            starts[None],
            run_ends[first + plan.end_slots[:, None]],
            run_starts[first + plan.start_slots[:, None]],
            ends[None],
        ]
    )


def text_fits(plan: TextPlan, buffer: np.ndarray, at: np.ndarray):
    """Whether each line's text between numbers, and its runs that are text, are the template's
    (`at`: see `positions`); and the words of the line's start that hold its time stamp.

    Every byte of a line is checked here or as a number or a time stamp digit, so the runs of a
    line of the template's run count are where the template has them."""
    start = at[plan.starts]
    spaces = at[plan.ends] - start - plan.size  # (units, lines)
    ok = ((spaces >= plan.low) & (spaces <= plan.high)).all(axis=0)
    found = words(buffer, start[plan.word_units] + plan.offsets, plan.reach)
    plain = len(found) - plan.folds
    ok &= ((found[:plain] & plan.masks[:plain]) == plan.patterns[:plain]).all(axis=0)
    if plan.folds:  # these words hold spaces after the text, as many as the line has
        fold_spaces = np.clip(spaces[plan.fold_units], 0, 8 - plan.fold_at)
        spread = LOW_BYTES[plan.fold_at + fold_spaces] & ~plan.fold_text
        mask = plan.masks[plain:] | spread
        pattern = plan.patterns[plain:] | (spread & np.uint64(SPACES))
        ok &= ((found[plain:] & mask) == pattern).all(axis=0)
    if len(plan.flexible):  # spaces beyond the words of the text, in the units that have any
        most = spaces[plan.flexible].max(axis=1, initial=0)
        more = plan.flexible[most > plan.room[plan.flexible, 0]]
        count = np.clip(spaces[more] - plan.room[more], 0, MAX_SPACES)
        begin = start[more] + plan.size[more] + plan.room[more]
        for offset in range(0, int(count.max(initial=0)), 8):
            mask = LOW_BYTES[np.clip(count - offset, 0, 8)]
            found_spaces = words(buffer, begin + offset, plan.reach)
            ok &= ((found_spaces & mask) == (np.uint64(SPACES) & mask)).all(axis=0)
    return ok, found[: plan.stamp_words]


def stamp_words_of(millis: int) -> int:
    """Words from a line's start that hold its time stamp (`[YYYY-mm-dd HH:MM:SS,fff`)."""
    return (20 + (1 + millis if millis else 0)) // 8 + 1


@functools.lru_cache(maxsize=8)
def stamp_checks(millis: int) -> list[tuple[int, int, int]]:
    """(pattern, mask, carry) of each word of a time stamp: its digits and the date's dashes;
    the other characters are the template's text, checked with it."""
    digits = [*range(1, 5), 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, *range(21, 21 + millis)]
    checks = []
    for j in range(stamp_words_of(millis)):
        pattern = mask = carry = 0
        for place in range(8 * j, 8 * j + 8):
            shift = 8 * (place - 8 * j)
            if place in digits:
                pattern, mask, carry = (
                    pattern | 48 << shift,
                    mask | 255 << shift,
                    carry | 0x76 << shift,
                )
            elif place in (5, 8):
                pattern, mask, carry = (
                    pattern | 45 << shift,
                    mask | 255 << shift,
                    carry | 0x7F << shift,
                )
        checks.append((pattern, mask, carry))
    return checks


@functools.lru_cache(maxsize=4 * MAX_TEMPLATES)
def column_forms(template: Template) -> tuple[Form | None, ...]:
    """The forms of the numbers of a template's step, value and ignored runs, as in its line."""
    return tuple(column_form(slot.text) for slot in template.slots if slot.kind in NUMBER_SLOTS)


def read_template(reader, number, buffer, starts, ends, run_starts, run_ends, first):
    """Which of these lines are exactly of template `number`, and their steps, times and
    values."""
    template, (plan, forms) = reader.templates[number], reader.plans[number]
    at = positions(plan, starts, ends, run_starts, run_ends, first)
    ok, stamp_words = text_fits(plan, buffer, at)

    # numbers
    columns = plan.end_slots.tolist()
    end = at[1 : 1 + len(columns)]
    value, readable, whole, integer = parse_columns(
        buffer, at[1 + len(columns) : 1 + 2 * len(columns)], end, forms
    )
    ok &= readable.all(axis=0)
    for i, k in enumerate(columns):
        if template.slots[k].kind in ("step", "ignored"):
            ok &= whole[i]
    step = integer[columns.index(template.step_slot)]
    values = value[[columns.index(k) for k in template.value_slots]].T

    # the time stamp
    count = stamp_words_of(template.millis)
    if len(stamp_words) >= count:
        stamp = stamp_words[:count].T
    else:
        stamp = unaligned(buffer)[starts[:, None] + 8 * np.arange(count)]
    wall_time, good = reader.wall_times(stamp, template.millis)
    ok &= good
    return ok, step, wall_time, values


def read_columns(
    handle: BinaryIO, chunk_bytes: int = CHUNK_BYTES, total_bytes: int = 0
) -> LogColumns:
    """The rows of a binary log stream of `total_bytes` (0: unknown), read `chunk_bytes` at a time.

    Limitations: about 100 MB/s of CPU on a 2-core machine (checking and parsing with numpy
    costs about 70 ns a number, and a row's 27 bytes of fresh memory about 12 ns), so a 200 MB
    log takes about 2 seconds; lines of shapes not learned (more than MAX_TEMPLATES, `nan`
    values, numbers of more than 8 characters in many lines) go through the generic reader one
    by one.
    """
    allocator.keep_freed_memory()
    try:
        return read_chunks(handle, Reader(total_bytes=total_bytes), chunk_bytes)
    finally:
        allocator.release()


def read_chunks(handle: BinaryIO, reader: Reader, chunk_bytes: int) -> LogColumns:
    """The rows of a binary log stream, given to `reader` a chunk of whole lines at a time.

    The stream is read straight into the reader's chunk buffer; the part line after a chunk's
    last newline moves to the buffer's front for the next."""
    held = 0  # bytes in the buffer after FRONT: the part line carried over, then what was read
    while True:
        memory = reader.room(held + chunk_bytes)
        count = handle.readinto(memoryview(memory)[FRONT + held : FRONT + held + chunk_bytes])
        new = memory[FRONT + held : FRONT + held + count]
        new[new == 13] = 10  # `\r` ends lines too; the empty lines this makes are skipped
        held += count
        if not count:
            if held:
                reader.lines(held)
            return reader.columns()
        searched = max(count - 4096, 0)  # the last line is rarely longer
        newlines = np.flatnonzero(new[searched:] == 10)
        if not len(newlines) and searched:
            searched, newlines = 0, np.flatnonzero(new == 10)
        if not len(newlines):
            continue  # a line longer than a chunk
        cut = held - count + searched + int(newlines[-1])  # the last newline
        carried = memory[FRONT + cut + 1 : FRONT + held].copy()
        reader.lines(cut)
        memory[FRONT : FRONT + len(carried)] = carried
        held = len(carried)


def open_binary(path: Path) -> BinaryIO:
    """A binary handle on a plain or gzipped log."""
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_log_columns(path: Path, chunk_bytes: int = CHUNK_BYTES) -> LogColumns:
    """The rows of one console log as columns; the errors of `logs.read_log`."""
    try:
        with open_binary(path) as handle:
            size = 0 if isinstance(handle, gzip.GzipFile) else path.stat().st_size
            columns = read_columns(handle, chunk_bytes, size)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise InputError(
            f"cannot read log {path}: {error}. Check that the file is complete"
        ) from None
    if not len(columns.step):
        if path.stat().st_size == 0:
            raise InputError(f"log {path} is empty. Give a log written by a training run")
        raise InputError(f"log {path} has no 'Step' lines. Give an EOLE or OpenNMT-py training log")
    return columns


def read_log_table(path: Path, chunk_bytes: int = CHUNK_BYTES) -> pd.DataFrame:
    """The per-file table of one console log (`split, step, metric, value, wall_time`)."""
    return read_log_columns(path, chunk_bytes).table()
