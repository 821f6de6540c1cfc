"""The fast event reader gives tbparse's rows, checks CRCs and reports damage by offset."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attn_entropy_cli.errors import AttnentWarning, InputError
from attn_entropy_cli.runs import events, fastevents

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"


def same_as_tbparse(path: Path) -> pd.DataFrame:
    """The fast table of a file, checked equal to tbparse's."""
    fast = events.read_event_file(path)
    pd.testing.assert_frame_equal(fast, events.read_with_tbparse(path))
    return fast


def records(path: Path) -> list[tuple[int, int]]:
    """(offset, total size) of each record of an event file."""
    data, spans, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        spans.append((offset, 16 + length))
        offset += 16 + length
    return spans


def writer_file(tmp_path: Path, write) -> Path:
    """The event file a `torch.utils.tensorboard.SummaryWriter` leaves after `write(writer)`."""
    tensorboard = pytest.importorskip("torch.utils.tensorboard")
    writer = tensorboard.SummaryWriter(log_dir=str(tmp_path / "tb"))
    write(writer)
    writer.close()
    (path,) = (tmp_path / "tb").glob("*tfevents*")
    return path


def eole_like(writer, steps=300) -> None:
    """Scalars as EOLE writes them: `progress/*` every step, `valid/*` every 50 steps."""
    rng = np.random.default_rng(0)
    for step in range(steps):
        for name in ("xent", "ppl", "accuracy", "attention_entropy", "lr"):
            writer.add_scalar(f"progress/{name}", float(rng.random()), step)
        if step % 50 == 0:
            writer.add_scalar("valid/ppl", float(rng.random() * 100), step)


@pytest.mark.parametrize("path", sorted(SAMPLES.rglob("*tfevents*")), ids=lambda p: p.parts[-3])
def test_sample_runs_read_as_tbparse_reads_them(path):
    assert len(same_as_tbparse(path))


def test_classic_and_tensor_scalars_of_summary_writer(tmp_path):
    def write(writer):
        eole_like(writer, 200)
        for step in (0, 1, 127, 128, 16_383, 16_384, 2**21, 2**35):  # every varint width
            writer.add_scalar("big/classic", step / 3, step)
            writer.add_scalar("big/tensor", step / 7, step, new_style=True)
            writer.add_scalar("big/double", step / 9, step, new_style=True, double_precision=True)
        writer.add_scalar("nan", float("nan"), 5)
        writer.add_text("notes", "text summaries are not scalars", 3)
        writer.add_histogram("weights", np.arange(10.0), 3)
        writer.add_scalar("t" * 300, 1.5, 4)  # a record longer than the bulk path takes

    table = same_as_tbparse(writer_file(tmp_path, write))
    assert {"classic", "tensor", "double"} <= set(table["metric"])
    assert (table["step"] == 2**35).sum() == 3


def test_tensorboard_writer_restart_purges_like_tbparse(tmp_path):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(tmp_path))
    for step in list(range(10)) + list(range(5, 8)):
        value = summary_pb2.Summary.Value(tag="loss", simple_value=step / 2)
        writer.add_event(
            event_pb2.Event(step=step, wall_time=step, summary=summary_pb2.Summary(value=[value]))
        )
        if step == 9:
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            writer.add_event(event_pb2.Event(step=5, wall_time=20.0, session_log=start))
    writer.close()
    (path,) = tmp_path.glob("*tfevents*")

    table = same_as_tbparse(path)
    assert table["step"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_small_chunks_give_the_same_rows(tmp_path, monkeypatch):
    path = writer_file(tmp_path, lambda w: (eole_like(w, 100), w.add_text("t", "x" * 3000, 1)))
    monkeypatch.setattr(fastevents, "CHUNK_BYTES", 512)
    same_as_tbparse(path)


def test_corrupt_payload_is_reported_and_skipped(tmp_path):
    path = writer_file(tmp_path, eole_like)
    offset, size = records(path)[40]
    data = bytearray(path.read_bytes())
    data[offset + 20] ^= 0xFF
    corrupt = tmp_path / "events.out.tfevents.1.corrupt"
    corrupt.write_bytes(data)
    without = tmp_path / "events.out.tfevents.1.without"
    without.write_bytes(data[:offset] + data[offset + size :])

    with pytest.warns(AttnentWarning) as caught:
        table = events.read_event_file(corrupt)
    message = str(caught[0].message)
    assert str(corrupt) in message and f"at byte {offset}" in message
    pd.testing.assert_frame_equal(table, events.read_with_tbparse(without))


def test_corrupt_length_stops_there(tmp_path):
    path = writer_file(tmp_path, eole_like)
    offset, _ = records(path)[40]
    data = bytearray(path.read_bytes())
    data[offset + 2] ^= 0x01
    corrupt = tmp_path / "events.out.tfevents.1.corrupt"
    corrupt.write_bytes(data)
    cut = tmp_path / "events.out.tfevents.1.cut"
    cut.write_bytes(data[:offset])

    with pytest.warns(
        AttnentWarning, match=f"corrupt record header at byte {offset}; read the 40 "
    ):
        table = events.read_event_file(corrupt)
    pd.testing.assert_frame_equal(table, events.read_with_tbparse(cut))


@pytest.mark.parametrize("keep", [-1, -7, -20])
def test_truncated_file_is_read_up_to_the_cut(tmp_path, keep):
    path = writer_file(tmp_path, eole_like)
    offset, _ = records(path)[-1]
    cut = tmp_path / "events.out.tfevents.1.cut"
    cut.write_bytes(path.read_bytes()[:keep])

    with pytest.warns(AttnentWarning, match=f"truncated record at byte {offset}"):
        table = events.read_event_file(cut)
    pd.testing.assert_frame_equal(table, events.read_with_tbparse(cut))


def test_unreadable_file_is_an_error(tmp_path):
    path = tmp_path / "events.out.tfevents.1.garbage"
    path.write_bytes(b"not an event file at all, just text\n" * 3)
    with pytest.raises(InputError, match="is unreadable"):
        events.read_event_file(path)


def test_file_without_version_falls_back_to_tbparse(tmp_path):
    path = writer_file(tmp_path, eole_like)
    first, size = records(path)[0]
    older = tmp_path / "events.out.tfevents.1.older"
    data = path.read_bytes()
    # the same scalars, steps going back, and no `brain.Event:2` record
    older.write_bytes(data[first + size :] + data[first + size :])
    with pytest.raises(fastevents.Fallback):
        fastevents.read_scalars(older)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        same_as_tbparse(older)


def test_crc_of_byte_pairs_matches_crc32c():
    import crc32c

    rng = np.random.default_rng(1)
    for length in (1, 2, 7, 40, 255):
        data = rng.integers(0, 256, (50, length + (length % 2)), dtype=np.uint8)
        pairs = np.ascontiguousarray(data.view("<u2").T)
        expected = [crc32c.crc32c(row[:length].tobytes()) for row in data]
        assert fastevents.pair_crcs(pairs, length).tolist() == expected
