"""The bulk log reader gives exactly the rows of the generic `logs.parse_lines`, on every format."""

from __future__ import annotations

import gzip
import io
import random
import struct

import numpy as np
import pytest
from test_logs import EOLE_064, EOLE_BEFORE_ENTROPY, EOLE_OLDER, ONMT_2, ONMT_3

from attn_entropy_cli.errors import InputError
from attn_entropy_cli.runs import fastlogs, logs

APPENDED = EOLE_064.replace("lr:", "new_field: 7.5; lr:") + " BLEU: 23.45 TER: 61.2"
FORMATS = [EOLE_064, EOLE_OLDER, EOLE_BEFORE_ENTROPY, ONMT_3, ONMT_2, APPENDED]
NOTED = EOLE_064.replace("ppl:", "note:   e; ppl:")  # a text run (`e`) after spaces that vary
VALIDATION = [
    "Train perplexity: 298.919",
    "Train accuracy: 35.5625",
    "Sentences processed: 2468",
    "Average bsz:  743/ 743/32",
    "Validation perplexity: 83.98",
    "Validation accuracy: 36.4108",
]


def exact(rows):
    """Rows with their floats as bytes, so that NaN equals NaN and -0.0 differs from 0.0."""
    return [(a, b, c, struct.pack("<d", v), struct.pack("<d", w)) for a, b, c, v, w in rows]


def assert_same(data: bytes, chunk_bytes: int = fastlogs.CHUNK_BYTES):
    """The bulk reader's rows and orphans on `data` are the generic reader's."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace")
    expected, orphans = logs.parse_lines(text)
    got = fastlogs.read_columns(io.BytesIO(data), chunk_bytes)
    assert exact(got.rows()) == exact(expected)
    assert got.orphans == orphans
    return got


def prefix(line: str, stamp: str) -> str:
    """A Step line with another time stamp."""
    return stamp + line[line.index("]") + 1 :]


def log_of(template: str, steps: int, seed: int = 0, every: int = 7) -> list[str]:
    """A log of Step lines shaped like `template`, with its numbers varied, and validation
    blocks after every `every` steps."""
    rng = random.Random(seed)
    lines = ["[2026-12-03 16:23:23,936 INFO] Logging initialized (log_file: train.log)"]
    head = template[: template.index("Step")]
    for step in range(1, steps + 1):
        line = template.replace("Step 100/", f"Step {step}/").replace("Step 50/", f"Step {step}/")
        line = line.replace("ppl: 72.50", f"ppl: {rng.uniform(1, 999):.2f}")
        line = line.replace("acc: 35.5", f"acc: {rng.uniform(0, 100):.1f}")
        line = line.replace("lr: 2.50e-02", f"lr: {rng.uniform(0, 0.1):.2e}")
        line = line.replace("sents:     320", f"sents: {rng.randint(1, 99999):>7}")
        line = line.replace("   158 sec", f"{rng.randint(0, 10**7):>6} sec")
        second = f"{(7 + step) % 60:02d}"
        lines.append(line.replace(head, head[:18] + second + head[20:]))
        if step % every == 0:
            lines.extend(head + v for v in VALIDATION)
    return lines


def data_of(lines: list[str], end: str = "\n") -> bytes:
    return (end.join(lines) + end).encode()


@pytest.mark.parametrize("run", ["runA", "runB", "runD", "runLM", "nanogpt"])
@pytest.mark.parametrize("chunk_bytes", [64, 1000, fastlogs.CHUNK_BYTES])
def test_sample_logs(sample_runs, run, chunk_bytes):
    assert_same((sample_runs / run / "train.log").read_bytes(), chunk_bytes)


@pytest.mark.parametrize("template", FORMATS)
@pytest.mark.parametrize("chunk_bytes", [64, 777, fastlogs.CHUNK_BYTES])
def test_each_format(template, chunk_bytes):
    got = assert_same(data_of(log_of(template, 60)), chunk_bytes)
    assert len(got.step) > 60


@pytest.mark.parametrize("template", [*FORMATS, NOTED])
def test_step_lines_take_the_bulk_path(template, monkeypatch):
    handed = []
    generic = fastlogs.Reader.generic

    def recorded(self, lines, step):
        handed.extend(lines)
        return generic(self, lines, step)

    monkeypatch.setattr(fastlogs.Reader, "generic", recorded)
    reader = fastlogs.Reader()
    reader.chunk(data_of(log_of(template, 20))[:-1])
    assert len(reader.templates) == 1
    assert handed and not [line for line in handed if "Step" in line]


def test_resumed_run_with_a_version_that_adds_a_field():
    older, newer = log_of(EOLE_OLDER, 40, seed=1), log_of(EOLE_064, 40, seed=2)
    mixed = [line for pair in zip(older, newer) for line in pair]
    reader = fastlogs.Reader()
    reader.chunk(data_of(mixed)[:-1])
    assert len(reader.templates) == 2
    for chunk_bytes in (64, 4096, fastlogs.CHUNK_BYTES):
        assert_same(data_of(older + newer + older), chunk_bytes)
        assert_same(data_of(mixed), chunk_bytes)


def test_validation_before_any_step_is_an_orphan():
    lines = log_of(EOLE_064, 10)
    head = lines[1][: lines[1].index("Step")]
    got = assert_same(data_of([head + v for v in VALIDATION] + lines), 64)
    assert got.orphans == 4


def test_gzip_file_gives_the_rows_of_the_plain_one(tmp_path):
    data = data_of(log_of(EOLE_064, 50))
    plain, zipped = tmp_path / "train.log", tmp_path / "train.log.gz"
    plain.write_bytes(data)
    zipped.write_bytes(gzip.compress(data))
    expected = exact(logs.read_log(plain))
    assert exact(fastlogs.read_log_columns(zipped, 100).rows()) == expected
    assert exact(fastlogs.read_log_columns(plain).rows()) == expected


def test_non_ascii_and_invalid_utf8_in_other_lines():
    lines = log_of(EOLE_064, 30)
    lines.insert(3, "[2026-12-03 16:23:24,412 INFO] vocab: ['<unk>', 'é', '日本', '\u2028']")
    data = data_of(lines).replace(b"Logging", b"Lo\xff\xfegging\xe2\x82")
    data += b"[2026-12-03 16:23:24,412 INFO] Validation accuracy: 1.5\xe2\x82\n"
    for chunk_bytes in (64, 100, fastlogs.CHUNK_BYTES):
        assert_same(data, chunk_bytes)


def test_nan_inf_and_unusual_numbers():
    lines = log_of(EOLE_064, 20)
    for i, text in enumerate(["nan", "inf", "-inf", "1e400", "-0.0", "+5", ".5", "5.", "1.2.3"]):
        lines[2 + 2 * i] = lines[2 + 2 * i].replace("ppl: ", f"ppl: {text} x", 1)
        lines[3 + 2 * i] = lines[3 + 2 * i].replace("xent: ", f"xent: {text}; q", 1)
    lines.append(EOLE_064.replace("ppl: 72.50", "ppl: 123456789.125"))
    lines.append(EOLE_064.replace("lr: 2.50e-02", "lr: 2.5E-300"))
    lines.append(EOLE_064.replace("Step 100/", "Step 123456789012/"))
    lines.append(EOLE_064.replace("acc: 35.5", "acc: -1.25e+2"))
    for chunk_bytes in (64, fastlogs.CHUNK_BYTES):
        assert_same(data_of(lines), chunk_bytes)


@pytest.mark.parametrize("end", ["\r\n", "\r"])
def test_crlf_and_cr_line_ends(end):
    lines = log_of(EOLE_064, 30)
    for chunk_bytes in (64, 65, fastlogs.CHUNK_BYTES):
        assert_same(data_of(lines, end), chunk_bytes)


def test_spacing_variants_and_odd_lines():
    lines = log_of(ONMT_3, 20)
    lines[2] = lines[2].replace("Step ", "Step    ")
    lines[3] = lines[3].replace("Step ", "Step")  # not a Step line for the generic reader
    lines[4] = lines[4].replace("acc: ", "acc:")
    lines[5] = lines[5].replace("bsz: ", "bsz:" + " " * 80)
    lines[6] = lines[6] + "   "
    lines[7] = lines[7].replace("INFO]", "WARNING]")
    lines[8] = lines[8].replace(",345", "")  # no milliseconds
    lines[9] = lines[9].replace("tok/s", "tok/ s")
    lines.append(lines[10][: len(lines[10]) // 2])  # cut short, and no newline after it
    for chunk_bytes in (64, fastlogs.CHUNK_BYTES):
        assert_same(data_of(lines)[:-1], chunk_bytes)


def test_wall_times_across_a_daylight_saving_change(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        lines = []
        for hour, minute in [(1, 59), (2, 0), (2, 30), (3, 0), (3, 1)]:
            for day in ("2026-03-29", "2026-10-25"):
                stamp = f"[{day} {hour:02d}:{minute:02d}:30,250 INFO]"
                lines.append(prefix(EOLE_064, stamp))
        assert_same(data_of(lines))
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_date_that_does_not_exist_raises_as_the_generic_reader_does():
    lines = log_of(EOLE_064, 5)
    lines[3] = lines[3].replace("2026-12-03", "2026-02-30")
    with pytest.raises(ValueError, match="day is out of range"):
        logs.parse_lines(lines)
    with pytest.raises(ValueError, match="day is out of range"):
        fastlogs.read_columns(io.BytesIO(data_of(lines)))


def test_parse_numbers_reads_as_float_does():
    rng = random.Random(5)
    runs = [b"682.40", b"2.50e-02", b"1e0", b"-0.0", b"0e99", b"9e30", b"12345678", b"-.5e1"]
    for _ in range(20000):
        runs.append(
            "".join(rng.choice("0123456789.+-eE") for _ in range(rng.randint(1, 9))).encode()
        )
        runs.append(f"{rng.uniform(-1e4, 1e4):.{rng.randint(0, 6)}f}".encode())
    data, starts, ends = bytearray(fastlogs.FRONT), [], []
    for run in runs:
        data += b";"
        starts.append(len(data))
        data += run
        ends.append(len(data))
    import numpy as np

    buffer = np.frombuffer(bytes(data + bytes(fastlogs.BACK)), dtype=np.uint8)
    value, readable, whole, integer = fastlogs.parse_numbers(
        buffer, np.array(starts), np.array(ends)
    )
    for run, v, ok, w, i in zip(runs, value, readable, whole, integer):
        assert ok == fastlogs.is_number(run.decode()), run
        if ok:
            assert struct.pack("<d", v) == struct.pack("<d", float(run)), run
        assert w == run.isdigit(), run
        if w:
            assert i == int(run), run


def test_parse_columns_reads_as_float_does():
    import numpy as np

    rng = random.Random(7)
    firsts = [b"682.40", b"35.5", b"0.000", b"12345678", b"7", b"2.50e-02", b"1.", b".5", b"+5"]
    firsts += [b"1.2.3", b"123456789", b"00", b"1.5e3", b"-0.0", b"9999.999", b"1.67e+02"]
    firsts += [b"5E7", b"12.5e-3", b"9.9e-22", b"0.000"]
    columns = []
    for first in firsts:
        column = [first]
        for _ in range(300):
            kind = rng.random()
            if kind < 0.5:  # the first run's layout with other digits
                text = "".join(
                    rng.choice("0123456789") if c in b"0123456789" else chr(c) for c in first
                )
            elif kind < 0.8:
                text = f"{rng.uniform(0, 1e4):.{rng.randint(0, 7)}f}"
            else:
                text = "".join(rng.choice("0123456789.+-eE") for _ in range(rng.randint(1, 9)))
            column.append(text.encode())
        columns.append(column)
    data, starts, ends = bytearray(fastlogs.FRONT), [], []
    for column in columns:
        for run in column:
            data += b";"
            starts.append(len(data))
            data += run
            ends.append(len(data))
    buffer = np.frombuffer(bytes(data + bytes(fastlogs.BACK)), dtype=np.uint8)
    shape = (len(columns), len(columns[0]))
    forms = tuple(fastlogs.column_form(column[0]) for column in columns)
    parsed = fastlogs.parse_columns(
        buffer, np.array(starts).reshape(shape), np.array(ends).reshape(shape), forms
    )
    runs = [run for column in columns for run in column]
    for run, v, ok, w, i in zip(runs, *(a.reshape(-1) for a in parsed)):
        assert ok == fastlogs.is_number(run.decode()), run
        if ok:
            assert struct.pack("<d", v) == struct.pack("<d", float(run)), run
        assert w == run.isdigit(), run
        if w:
            assert i == int(run), run


def test_read_log_table_errors_are_read_logs(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_text("")
    with pytest.raises(InputError, match="is empty"):
        fastlogs.read_log_table(empty)
    chatter = tmp_path / "chatter.log"
    chatter.write_text("[2026-12-03 16:23:23,936 INFO] Logging initialized\n")
    with pytest.raises(InputError, match="has no 'Step' lines"):
        fastlogs.read_log_table(chatter)
    broken = tmp_path / "broken.log.gz"
    broken.write_bytes(gzip.compress(data_of(log_of(EOLE_064, 50)))[:200])
    with pytest.raises(InputError, match="cannot read log .*Check that the file is complete"):
        fastlogs.read_log_table(broken)
    with pytest.raises(InputError, match="cannot read log .*Check that the file is complete"):
        logs.read_log(broken)


def test_read_log_table_matches_the_rows(sample_runs):
    path = sample_runs / "runA" / "train.log"
    table = fastlogs.read_log_table(path)
    assert list(table.columns) == ["split", "step", "metric", "value", "wall_time"]
    assert exact(table.itertuples(index=False, name=None)) == exact(logs.read_log(path))


@pytest.mark.parametrize("total_bytes", [0, 1, 10**9])
def test_output_arrays_grow_or_not_whatever_the_size_hint(total_bytes):
    data = data_of(log_of(EOLE_064, 300))
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    expected, _ = logs.parse_lines(text)
    for chunk_bytes in (500, fastlogs.CHUNK_BYTES):
        got = fastlogs.read_columns(io.BytesIO(data), chunk_bytes, total_bytes)
        assert exact(got.rows()) == exact(expected)


def test_text_longer_than_the_padding_between_numbers():
    long_name = "x" * (2 * fastlogs.BACK)
    line = EOLE_064.replace("lr:", f"{long_name}:{' ' * 60}7.5; lr:")
    lines = log_of(line, 30)
    lines[5] = lines[5].replace(f":{' ' * 60}7", ":   7")
    lines[6] = lines[6].replace(f":{' ' * 60}7", ":" + " " * 65 + "7")
    for chunk_bytes in (64, 3000, fastlogs.CHUNK_BYTES):
        assert_same(data_of(lines), chunk_bytes)
        assert_same(data_of(lines)[:-1], chunk_bytes)
    reader = fastlogs.Reader()
    reader.chunk(data_of(lines[:6] + lines[7:])[:-1])  # line 6 has too many spaces for it
    assert len(reader.templates) == 1


@pytest.mark.parametrize("seed", range(8))
def test_lines_with_one_character_changed(seed):
    # every kind of small damage to a Step line: each line is read by the bulk path or handed to
    # the generic reader, never read differently
    rng = random.Random(seed)
    template = [*FORMATS, NOTED, NOTED][seed]
    lines = log_of(template, 600, seed=seed)
    alphabet = " 0123456789.+-eE;:/,[]xs\t"
    for i in rng.sample(range(1, len(lines)), 300):
        line = lines[i]
        at = rng.randrange(line.index("]"), len(line) + 1)  # a bad date raises in both readers
        kind = rng.random()
        if kind < 0.35:
            line = line[:at] + rng.choice(alphabet) + line[at:]
        elif kind < 0.7:
            line = line[:at] + line[at + 1 :]
        else:
            line = line[:at] + rng.choice(alphabet) + line[at + 1 :]
        lines[i] = line
    for chunk_bytes in (3000, fastlogs.CHUNK_BYTES):
        assert_same(data_of(lines), chunk_bytes)


def test_more_metric_names_than_small_codes_hold():
    # codes are written in int16 while they fit, then in int32
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = [a + b + c + d for a in letters[:3] for b in letters for c in letters for d in letters]
    lines = log_of(EOLE_064, 3)
    head = lines[1][: lines[1].index("Step")]
    lines[2:2] = [f"{head}Validation m{name}: {i}.5" for i, name in enumerate(names[:33000])]
    got = assert_same(data_of(lines), 1 << 18)
    assert len(got.metrics) > 33000
    assert got.metric_codes.dtype == np.int32


def test_number_bytes_are_the_number_characters():
    every = np.arange(256, dtype=np.uint8)
    assert bytes(every[fastlogs.number_bytes(every)]) == b"+-.0123456789Ee"


@pytest.mark.parametrize("seed", range(4))
def test_lines_with_one_byte_changed(seed):
    # any byte, non-ASCII ones included, in the stamp's seconds and after them: a byte the
    # generic reader cannot read as the line's text never passes as a digit or a dash
    rng = random.Random(seed)
    lines = [line.encode() for line in log_of([*FORMATS, NOTED][seed], 400, seed=seed)]
    others = [b for b in range(256) if b not in b"\r\n"]
    for i in rng.sample(range(1, len(lines)), 250):
        at = rng.randrange(17, len(lines[i]))  # a bad date raises in both readers
        lines[i] = lines[i][:at] + bytes([rng.choice(others)]) + lines[i][at + 1 :]
    data = b"\n".join(lines) + b"\n"
    for chunk_bytes in (3000, fastlogs.CHUNK_BYTES):
        assert_same(data, chunk_bytes)


@pytest.mark.parametrize("where", ["seconds", "millis"])
@pytest.mark.parametrize("byte", [0x80, 0xC7, 0xF9, 0xFF])
def test_a_non_ascii_byte_in_the_stamp_is_not_a_digit(where, byte):
    lines = [line.encode() for line in log_of(EOLE_064, 20)]
    at = 19 if where == "seconds" else 23
    lines[5] = lines[5][:at] + bytes([byte]) + lines[5][at + 1 :]
    assert_same(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("chunk_bytes", [4200, 8192, 10000, 20000, fastlogs.CHUNK_BYTES])
@pytest.mark.parametrize("last", [False, True])
def test_lines_longer_than_the_newline_search(chunk_bytes, last):
    # a chunk whose last bytes hold no newline is cut at the last newline before them
    lines = log_of(EOLE_064, 60)
    head = lines[1][: lines[1].index("Step")]
    long = head + "Validation " + "x" * 9000 + ": 1.5"
    lines.insert(len(lines) if last else 30, long)
    data = data_of(lines)
    assert_same(data, chunk_bytes)
    assert_same(data[:-1], chunk_bytes)


@pytest.mark.parametrize("step", ["9223372036854775807", "9223372036854775808", "9" * 20])
def test_a_step_beyond_64_bits_is_skipped_as_an_unreadable_step_line(step):
    lines = log_of(EOLE_064, 30)
    at = next(i for i, line in enumerate(lines) if "Step 7/" in line)
    lines[at] = lines[at].replace("Step 7/", f"Step {step}/")  # a validation block follows
    got = assert_same(data_of(lines))
    assert (step == "9223372036854775807") == (int(step) in got.step)


@pytest.mark.parametrize("hinted", [False, True])
def test_output_arrays_past_a_megabyte_are_mapped_and_filled(hinted):
    # more than 1 MB a column: the arrays are mappings, populated when the size is known
    data = data_of(log_of(EOLE_064, 12000))
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    expected, _ = logs.parse_lines(text)
    assert len(expected) * 8 > 1 << 20
    got = fastlogs.read_columns(io.BytesIO(data), 1 << 20, len(data) if hinted else 0)
    assert exact(got.rows()) == exact(expected)


def test_a_step_beyond_64_bits_at_a_chunk_end_leaves_the_step_before():
    # the validation block after it, in the next chunk, keeps the step of the line before
    lines = log_of(EOLE_064, 30, every=1000)
    at = next(i for i, line in enumerate(lines) if "Step 7/" in line)
    lines[at] = lines[at].replace("Step 7/", f"Step {'9' * 20}/")
    head = lines[1][: lines[1].index("Step")]
    lines[at + 1 : at + 1] = [head + v for v in VALIDATION]
    data = data_of(lines)
    cut = len(data_of(lines[: at + 1]))  # a chunk ends with the long step's line
    got = assert_same(data, cut)
    assert 6 in got.step[got.split_codes == got.splits.index("valid")]
