"""Finding runs on disk and reading all their metrics into one long table.

The table has the columns of `schema.RUN_COLUMNS`: `run, source, split, step, metric, value,
wall_time`, one row per logged value.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from attn_entropy_cli import schema as s
from attn_entropy_cli.errors import AttnentError, AttnentWarning, InputError, UsageError
from attn_entropy_cli.runs import cache, events, fastlogs, frames, logs

LOG_NAME = re.compile(r"\.(log|out)(\.\d+)?(\.gz)?$")
EVENT_STAMP = re.compile(r"tfevents\.(\d+)")


@dataclass(frozen=True)
class RunFiles:
    """The files of one run, each list in reading order."""

    name: str
    path: Path
    logs: list[Path] = field(default_factory=list)
    event_files: list[Path] = field(default_factory=list)


def is_event_file(path: Path) -> bool:
    """Whether a file name is a TensorBoard event file's."""
    return events.EVENT_FILE_MARK in path.name


def event_order(path: Path) -> tuple[int, str]:
    """Event files in the order they were started: by the time stamp in their name."""
    match = EVENT_STAMP.search(path.name)
    return (int(match.group(1)) if match else 0, str(path))


def find_run(path: Path, name: str) -> RunFiles:
    """The logs and event files of a run folder (at any depth), or of a single file."""
    if not path.exists():
        raise UsageError(f"run path {path} does not exist. Check the path")
    if path.is_file():
        if is_event_file(path):
            return RunFiles(name, path, event_files=[path])
        return RunFiles(name, path, logs=[path])

    files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    event_files = sorted((p for p in files if is_event_file(p)), key=event_order)
    log_files = logs.rotation_order(p for p in files if LOG_NAME.search(p.name))
    if not event_files and not log_files:
        raise UsageError(
            f"folder {path} holds no training logs (*.log) or TensorBoard event files. "
            "Give a run folder, a log file or an event file"
        )
    return RunFiles(name, path, logs=log_files, event_files=event_files)


def default_names(paths: Sequence[Path]) -> list[str]:
    """Run names from paths: the folder name, or the file name without log suffixes.

    Names that would repeat take as many parent folders as make them unique.
    """

    def label(path: Path, depth: int) -> str:
        path = path.resolve()
        base = path.name if path.is_dir() else LOG_NAME.sub("", path.name)
        parents = [p.name for p in list(path.parents)[: depth - 1]][::-1]
        return "/".join([*parents, base])

    depth = [1] * len(paths)
    for _ in range(8):
        names = [label(p, d) for p, d in zip(paths, depth)]
        repeated = {n for n in names if names.count(n) > 1}
        if not repeated:
            return names
        depth = [d + 1 if n in repeated else d for n, d in zip(names, depth)]
    return [str(p) for p in paths]


Source = tuple[Path, str]  # a file and its kind, `schema.SOURCE_LOG` or `SOURCE_TENSORBOARD`
Read = tuple[cache.Entry | None, AttnentError | None, list[tuple[type[Warning], str]]]

PARALLEL_BYTES = 32 << 20  # below this much to read, a second process costs more than it saves


def source_files(run: RunFiles) -> list[Source]:
    """A run's files in reading order: logs, then event files."""
    logs_ = [(path, s.SOURCE_LOG) for path in run.logs]
    return logs_ + [(path, s.SOURCE_TENSORBOARD) for path in run.event_files]


def read_source(path: Path, kind: str, use_cache: bool) -> Read:
    """One file's entry (or the error reading it gave) and the other warnings it gave.

    The entry is taken from the cache, or read and stored there; attnent's warnings travel
    inside the entry, other libraries' warnings beside it.
    """
    if use_cache:
        entry = cache.load(path, kind)
        if entry is not None:
            return entry, None, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if kind == s.SOURCE_LOG:
                table = fastlogs.read_log_table(path)
            else:
                table = events.read_event_file(path)
        except AttnentError as error:
            failed = error
        else:
            failed = None
    ours = [str(w.message) for w in caught if issubclass(w.category, AttnentWarning)]
    others = [
        (w.category, str(w.message)) for w in caught if not issubclass(w.category, AttnentWarning)
    ]
    if failed is not None:
        return None, failed, others + [(AttnentWarning, m) for m in ours]
    entry = cache.Entry.from_table(table, ours)
    if use_cache:
        cache.save(path, kind, entry)
    return entry, None, others


def read_entries(files: Sequence[Source], use_cache: bool) -> dict[Source, Read]:
    """Every file read (or loaded from the cache), by two processes when that pays."""
    done: dict[Source, Read] = {}
    if use_cache:
        for path, kind in files:
            entry = cache.load(path, kind)
            if entry is not None:
                done[(path, kind)] = (entry, None, [])
    todo = [f for f in dict.fromkeys(files) if f not in done]
    size = sum(path.stat().st_size for path, _ in todo if path.exists())
    if len(todo) < 2 or size < PARALLEL_BYTES:
        done.update({f: read_source(*f, use_cache) for f in todo})
        return done

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forked from a server that has imported the readers once, not from this process's threads
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["attn_entropy_cli.runs"])
    biggest_first = sorted(todo, key=lambda f: -f[0].stat().st_size)
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = {f: pool.submit(read_source, *f, use_cache) for f in biggest_first}
        done.update({f: future.result() for f, future in futures.items()})
    return done


def run_entries(
    run: RunFiles, use_cache: bool = True, entries: dict[Source, Read] | None = None
) -> list[tuple[str, cache.Entry]]:
    """(kind, entry) of each of a run's files that has rows; a file that fails is skipped with
    a warning."""
    read: list[tuple[str, cache.Entry]] = []
    failures: list[AttnentError] = []
    for path, kind in source_files(run):
        entry, error, others = (entries or {}).get((path, kind)) or read_source(
            path, kind, use_cache
        )
        for category, message in others:
            warnings.warn(message, category, stacklevel=3)
        if error is not None:
            failures.append(error)
            continue
        entry.replay()
        read.append((kind, entry))

    read = [(kind, entry) for kind, entry in read if len(entry.step)]
    if not read:
        if len(failures) == 1:
            raise failures[0]
        reasons = "; ".join(str(f).split(". ")[0] for f in failures)
        raise InputError(f"run {run.path} has no readable metrics ({reasons}). Give another run")
    for failure in failures:
        warnings.warn(f"run {run.name}: skipped: {failure}", AttnentWarning, stacklevel=3)
    return read


def merged_codes(entries: list[cache.Entry], field: str) -> tuple[list[str], np.ndarray]:
    """The sorted names of one coded column over entries, and every row's code into them."""
    names = sorted({name for entry in entries for name in getattr(entry, field + "s")})
    codes = np.empty(sum(len(entry.step) for entry in entries), frames.code_dtype(len(names)))
    at = 0
    for entry in entries:
        own = getattr(entry, field + "_codes")
        here = codes[at : at + len(own)]
        if getattr(entry, field + "s") == names:
            here[:] = own  # the common case: the same names
        else:
            remap = np.array([names.index(n) for n in getattr(entry, field + "s")], codes.dtype)
            np.take(remap, own, out=here)
        at += len(own)
    return names, codes


def drop_uncomputed_entropy(
    runs: Sequence[str],
    run_codes: np.ndarray,
    metrics: Sequence[str],
    metric_codes: np.ndarray,
    value: np.ndarray,
) -> None:
    """Attention entropy of exactly 0 becomes missing, in `value` itself: EOLE writes 0.000 when
    it had no attention weights, which is not a measurement.

    `run_codes`, `metric_codes` and `value`: (rows,), codes into `runs` and `metrics`.
    """
    if s.ATTENTION_ENTROPY not in metrics:
        return
    zero = value == 0.0
    zero &= metric_codes == metrics.index(s.ATTENTION_ENTROPY)
    for run, count in zip(runs, np.bincount(run_codes[zero], minlength=len(runs)).tolist()):
        if count:
            warnings.warn(
                f"run {run}: {count} attention_entropy values of exactly 0 read as not computed "
                "(EOLE logs 0.000 when it gets no attention weights)",
                AttnentWarning,
                stacklevel=3,
            )
    value[zero] = np.nan


def read_runs(
    paths: Sequence[Path], names: Sequence[str] | None = None, use_cache: bool = True
) -> pd.DataFrame:
    """The long table of every metric of every run, in the order the runs were given.

    `run`, `source`, `split` and `metric` are categoricals (the runs' categories in the order
    given), which keeps tables of millions of rows small and fast to group.

    A step seen twice in one source (a resumed run) keeps the value read last. Files already
    read are taken from the cache (`use_cache=False` reads them all again); files to read are
    read by two processes when there are enough of them.
    """
    if names and len(names) != len(paths):
        raise UsageError(
            f"{len(names)} --name values for {len(paths)} runs. Give one --name per run"
        )
    paths = [Path(p) for p in paths]
    names = list(names) if names else default_names(paths)
    if len(set(names)) != len(names):
        raise UsageError(f"run names repeat: {', '.join(names)}. Give distinct --name values")
    runs = [find_run(p, n) for p, n in zip(paths, names)]

    entries = read_entries([f for run in runs for f in source_files(run)], use_cache)
    per_run = [run_entries(run, use_cache, entries) for run in runs]

    # one run at a time: a resumed run's repeated steps keep the value read last, in order
    all_entries = [entry for read in per_run for _, entry in read]
    splits, split_codes = merged_codes(all_entries, "split")
    metrics, metric_codes = merged_codes(all_entries, "metric")
    kinds = sorted({kind for read in per_run for kind, _ in read})
    source = np.concatenate(
        [np.full(len(e.step), kinds.index(kind), np.int8) for read in per_run for kind, e in read]
    )
    step = cache.joined([entry.step for entry in all_entries], np.int64)
    counts = [sum(len(entry.step) for _, entry in read) for read in per_run]
    run = np.repeat(np.arange(len(per_run), dtype=frames.code_dtype(len(per_run))), counts)
    keep = []
    start = 0
    for read, count in zip(per_run, counts):
        here = slice(start, start + count)
        read_kinds = [kind for kind, _ in read]
        if read_kinds == sorted(set(read_kinds)):
            # one file per source: each entry is already sorted and without repeated keys
            keep.append(None)
        else:
            order = frames.latest_sorted(
                source[here], split_codes[here], metric_codes[here], step[here]
            )
            keep.append(start + order)
        start += count
    everything = all(part is None for part in keep)
    if not everything:
        firsts = np.cumsum([0, *counts[:-1]])
        keep = np.concatenate(
            [
                np.arange(first, first + n) if part is None else part
                for part, first, n in zip(keep, firsts, counts)
            ]
        )

    def kept(values: np.ndarray) -> np.ndarray:
        return values if everything else values[keep]

    names_of = {s.RUN: names, s.SOURCE: kinds, s.SPLIT: splits, s.METRIC: metrics}
    codes_of = {
        s.RUN: kept(run),
        s.SOURCE: kept(source),
        s.SPLIT: kept(split_codes),
        s.METRIC: kept(metric_codes),
    }
    columns = {s.STEP: kept(step)}
    for name in (s.VALUE, s.WALL_TIME):
        columns[name] = kept(cache.joined([getattr(e, name) for e in all_entries], np.float64))
    # the value column is fresh, not an entry's array: changed in place
    drop_uncomputed_entropy(names, codes_of[s.RUN], metrics, codes_of[s.METRIC], columns[s.VALUE])
    for name, codes in codes_of.items():
        columns[name] = pd.Categorical.from_codes(codes, names_of[name])
    # the arrays are fresh: hand them over rather than let pandas copy them into blocks
    table = pd.DataFrame({name: columns[name] for name in s.RUN_COLUMNS}, copy=False)
    return table.astype({s.STEP: "int64", s.VALUE: "float64", s.WALL_TIME: "float64"})
