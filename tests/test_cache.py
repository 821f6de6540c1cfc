"""Cached reads give the same table and warnings; the cache follows file changes."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attn_entropy_cli import runs
from attn_entropy_cli.errors import AttnentWarning, InputError
from attn_entropy_cli.runs import cache, events, fastlogs, logs

SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"


@pytest.fixture(autouse=True)
def cache_folder(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("ATTNENT_CACHE_DIR", str(folder))
    return folder


def read(paths, **options):
    """The table of `read_runs` and attnent's warnings, as text."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = runs.read_runs(paths, **options)
    return table, [str(w.message) for w in caught if issubclass(w.category, AttnentWarning)]


def sources(path):
    """The (file, kind) pairs of a run: its log, then its event file."""
    return runs.source_files(runs.find_run(path, path.name))


def damaged_run(tmp_path) -> Path:
    """runD with a flipped byte in its event file: a warning on every read."""
    run = tmp_path / "runD"
    shutil.copytree(SAMPLES / "runD", run, ignore=shutil.ignore_patterns("model"))
    (event_file,) = run.rglob("*tfevents*")
    data = bytearray(event_file.read_bytes())
    data[200] ^= 0xFF
    event_file.write_bytes(data)
    return run


def test_cached_read_is_the_same(tmp_path, cache_folder, monkeypatch):
    paths = [SAMPLES / "runA", SAMPLES / "runB", damaged_run(tmp_path)]
    first = read(paths)
    assert cache.info().entries == 6

    def unread(*args):
        raise AssertionError("read again instead of taken from the cache")

    monkeypatch.setattr(events, "read_event_file", unread)
    monkeypatch.setattr(logs, "read_log", unread)
    monkeypatch.setattr(fastlogs, "read_log_table", unread)
    second = read(paths)
    pd.testing.assert_frame_equal(first[0], second[0])
    assert first[1] == second[1]
    assert any("corrupt record" in message for message in second[1])


def test_uncached_read_writes_nothing_and_matches(cache_folder):
    paths = [SAMPLES / "runA", SAMPLES / "runD"]
    uncached = read(paths, use_cache=False)
    assert not cache_folder.exists()
    cached = read(paths)
    pd.testing.assert_frame_equal(uncached[0], cached[0])
    assert uncached[1] == cached[1]


def test_a_changed_file_is_read_again(tmp_path):
    log = tmp_path / "train.log"
    text = (SAMPLES / "runA" / "train.log").read_text()
    log.write_text(text)
    before = read([log])[0]
    steps = [line for line in text.splitlines() if "] Step " in line]
    log.write_text(text + steps[-1].replace("Step 400/", "Step 410/") + "\n")
    os.utime(log, ns=(log.stat().st_atime_ns, log.stat().st_mtime_ns + 10**9))
    after = read([log])[0]
    assert after["step"].max() == 410 and before["step"].max() == 400


def test_two_processes_read_as_one(monkeypatch):
    paths = [SAMPLES / "runA", SAMPLES / "runB", SAMPLES / "runD"]
    one = read(paths, use_cache=False)
    monkeypatch.setattr(runs, "PARALLEL_BYTES", 0)
    two = read(paths, use_cache=False)
    pd.testing.assert_frame_equal(one[0], two[0])
    assert one[1] == two[1]


def test_clear_empties_the_cache(cache_folder):
    read([SAMPLES / "runA"])
    assert cache.info().entries == 2
    removed = cache.clear()
    assert removed.entries == 2 and cache.info().entries == 0


def test_cache_commands(cache_folder, capsys):
    import attn_entropy_cli.cli.cache  # noqa: F401  (registers `attnent cache`)
    from attn_entropy_cli.cli import main

    read([SAMPLES / "runA"])
    with pytest.raises(SystemExit) as done:
        main(["cache", "info"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"{cache_folder}: 2 cached tables")
    with pytest.raises(SystemExit) as done:
        main(["cache", "clear"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("removed 2 cached tables")
    assert cache.info().entries == 0


def test_a_damaged_entry_is_read_again(cache_folder):
    first = read([SAMPLES / "runA"])
    for stored in cache_folder.glob("*" + cache.SUFFIX):
        stored.write_bytes(stored.read_bytes()[:-5])  # a disk that lost the entry's end
    assert all(cache.load(path, kind) is None for path, kind in sources(SAMPLES / "runA"))
    again = read([SAMPLES / "runA"])
    pd.testing.assert_frame_equal(first[0], again[0])
    assert all(cache.load(path, kind) is not None for path, kind in sources(SAMPLES / "runA"))


def test_columns_stay_in_the_file_until_joined(cache_folder):
    read([SAMPLES / "runA"])
    (log, kind), _ = sources(SAMPLES / "runA")
    entry = cache.load(log, kind)
    assert isinstance(entry.value, cache.Column) and len(entry.value) == len(entry.split_codes)
    table = fastlogs.read_log_table(log)
    joined = cache.joined([entry.value, entry.value], np.float64)
    expected = np.sort(table["value"].to_numpy())
    np.testing.assert_array_equal(np.sort(joined[: len(expected)]), expected)
    np.testing.assert_array_equal(joined[: len(expected)], joined[len(expected) :])


def test_an_entry_removed_before_it_is_joined_is_one_error(cache_folder):
    read([SAMPLES / "runA"])
    (log, kind), _ = sources(SAMPLES / "runA")
    entry = cache.load(log, kind)
    cache.clear()
    with pytest.raises(InputError, match=r"^cached table .* went away while it was read"):
        cache.joined([entry.step], np.int64)


def test_clear_removes_entries_of_earlier_formats(cache_folder):
    cache_folder.mkdir()
    (cache_folder / ("0" * 40 + ".npz")).write_bytes(b"PK")
    assert cache.clear().folder == cache_folder
    assert not list(cache_folder.iterdir())
