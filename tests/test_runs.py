"""The long run table: discovery, both sources, restarts, bad files; checked against raw files."""

from __future__ import annotations

import math
import re
import shutil
import warnings

import pandas as pd
import pytest

from attn_entropy_cli import schema as s
from attn_entropy_cli.errors import AttnentWarning, InputError, UsageError
from attn_entropy_cli.runs import events, read_runs

STEP_LINE = re.compile(r"\] Step (\d+)/\s*\d+; (.*)$")


def raw_step_values(log_path):
    """(step, field) -> value from the log, by plain string splitting (no attnent code)."""
    found = {}
    for line in log_path.read_text().splitlines():
        match = STEP_LINE.search(line)
        if not match:
            continue
        step = int(match.group(1))
        for field in match.group(2).split(";"):
            key, _, value = field.strip().partition(": ")
            if key in ("acc", "ppl", "xent", "aux", "mtp", "attn_ent", "lr", "sents"):
                found[(step, key)] = float(value)
    return found


def raw_event_scalars(path):
    """(tag, step) -> value from tensorboard's own event-file loader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found = {}
    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            if value.HasField("simple_value"):
                found[(value.tag, event.step)] = value.simple_value
            elif value.HasField("tensor"):
                found[(value.tag, event.step)] = value.tensor.float_val[0]
    return found


def test_export_of_run_a_reproduces_every_log_value(sample_runs):
    table = read_runs([sample_runs / "runA"])
    log = table[(table.source == "log") & (table.split == "progress")]
    got = {(r.step, r.metric): r.value for r in log.itertuples()}
    names = {"acc": "accuracy", "attn_ent": "attention_entropy", "mtp": "mtp_xent"}
    raw = raw_step_values(sample_runs / "runA" / "train.log")
    assert len(raw) == 40 * 8
    for (step, key), value in raw.items():
        assert got[(step, names.get(key, key))] == value


def test_export_of_run_a_reproduces_every_event_scalar(sample_runs):
    (path,) = (sample_runs / "runA" / "tensorboard").rglob("*tfevents*")
    table = read_runs([sample_runs / "runA"])
    tb = table[table.source == "tensorboard"]
    got = {(f"{r.split}/{r.metric}", r.step): r.value for r in tb.itertuples()}
    raw = raw_event_scalars(path)
    assert len(raw) == len(tb) == 40 * 7 + 2 * 8 * 7
    for key, value in raw.items():
        assert got[key] == pytest.approx(value, rel=1e-7)


def test_columns_and_types(sample_runs):
    table = read_runs([sample_runs / "runA"])
    assert list(table.columns) == s.RUN_COLUMNS
    assert set(table.source) == {"log", "tensorboard"}
    assert set(table.split) == {"progress", "train", "valid"}
    assert table.step.dtype == "int64" and table.value.dtype == "float64"
    assert table.wall_time.notna().all()


def test_zero_entropy_is_missing_with_one_warning(sample_runs):
    with pytest.warns(AttnentWarning, match=r"run runD: 24 attention_entropy values of exactly 0"):
        table = read_runs([sample_runs / "runD"])
    entropy = table[table.metric == s.ATTENTION_ENTROPY]
    assert len(entropy) == 24 and entropy.value.isna().all()
    assert table[table.metric == "ppl"].value.notna().all()


def test_names_and_order(sample_runs, tmp_path):
    table = read_runs([sample_runs / "runB", sample_runs / "runA"])
    assert list(dict.fromkeys(table.run)) == ["runB", "runA"]
    named = read_runs([sample_runs / "runA"], names=["baseline"])
    assert set(named.run) == {"baseline"}
    twins = read_runs([sample_runs / "runA" / "train.log", sample_runs / "runB" / "train.log"])
    assert list(dict.fromkeys(twins.run)) == ["runA/train", "runB/train"]
    with pytest.raises(UsageError, match="2 --name values for 1 runs"):
        read_runs([sample_runs / "runA"], names=["a", "b"])


def test_restart_with_two_event_files(sample_runs, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "restarted"
    for folder, steps, ppl in (
        ("Dec-01_10-00-00", (10, 20, 30), 9.0),
        ("Dec-01_11-00-00", (30, 40), 7.0),
    ):
        writer = SummaryWriter(str(run / "tensorboard" / folder))
        for step in steps:
            writer.add_scalar("valid/ppl", ppl, step)
            writer.add_scalar("valid/attention_entropy", 1.5, step, new_style=True)
        writer.close()
    files = sorted(run.rglob("*tfevents*"))
    # event files are named by their start time; make the second one start later
    stamp = int(files[0].name.split(".")[3]) + 100
    files[1].rename(
        files[1].with_name(re.sub(r"tfevents\.\d+", f"tfevents.{stamp}", files[1].name))
    )
    table = read_runs([run])
    ppl = table[table.metric == "ppl"].set_index("step")["value"]
    assert list(ppl.index) == [10, 20, 30, 40]
    assert ppl[30] == 7.0
    entropy = table[table.metric == "attention_entropy"]
    assert list(entropy.step) == [10, 20, 30, 40] and (entropy.value == 1.5).all()


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UsageError, match=f"run path {tmp_path / 'nope'} does not exist"):
        read_runs([tmp_path / "nope"])
    with pytest.raises(UsageError, match="holds no training logs"):
        read_runs([tmp_path])


def copy_events(sample_runs, tmp_path):
    (path,) = (sample_runs / "runA" / "tensorboard").rglob("*tfevents*")
    target = tmp_path / path.name
    shutil.copy(path, target)
    return target


def test_truncated_event_file_is_read_up_to_the_cut(sample_runs, tmp_path):
    target = copy_events(sample_runs, tmp_path)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) - 10])
    with pytest.warns(AttnentWarning, match=rf"event file {target}: truncated record at byte \d+"):
        table = read_runs([target])
    assert 0 < len(table) < 40 * 7 + 2 * 8 * 7


def test_corrupt_event_file_names_the_offset(sample_runs, tmp_path):
    target = copy_events(sample_runs, tmp_path)
    data = bytearray(target.read_bytes())
    data[30] ^= 0xFF  # inside the first record's payload
    target.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"unreadable \(corrupt record at byte 0\)"):
        read_runs([target])


def test_partly_readable_run_warns_and_reads_the_rest(sample_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sample_runs / "runA", run)
    (run / "train.log").write_text("")
    with pytest.warns(AttnentWarning, match="skipped: log .* is empty"):
        table = read_runs([run])
    assert set(table.source) == {"tensorboard"}


def test_file_that_is_neither_log_nor_events(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    with pytest.raises(InputError, match="has no 'Step' lines"):
        read_runs([notes])


def test_framing_of_intact_file(sample_runs):
    (path,) = (sample_runs / "runA" / "tensorboard").rglob("*tfevents*")
    framing = events.check_framing(path)
    assert framing.problem is None and framing.good_bytes == path.stat().st_size


def test_nan_values_stay_nan(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "[2026-12-03 16:26:07,446 INFO] Step 10/ 40; acc: 1.0; ppl: nan; xent: inf; lr: 1e-3;\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = read_runs([log])
    got = table.set_index("metric")["value"]
    assert math.isnan(got["ppl"]) and math.isinf(got["xent"])
    assert isinstance(table, pd.DataFrame)
