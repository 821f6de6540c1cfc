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

import pandas as pd

from attn_entropy_cli import schema as s
from attn_entropy_cli.errors import AttnentWarning, AttnentError, InputError, UsageError
from attn_entropy_cli.runs import events, logs

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


def read_files(run: RunFiles) -> pd.DataFrame:
    """All rows of one run's files; a file that fails is skipped with a warning."""
    frames: list[pd.DataFrame] = []
    failures: list[AttnentError] = []
    for path in run.logs:
        try:
            rows = logs.read_log(path)
        except AttnentError as error:
            failures.append(error)
            continue
        frame = pd.DataFrame(rows, columns=[s.SPLIT, s.STEP, s.METRIC, s.VALUE, s.WALL_TIME])
        frames.append(frame.assign(**{s.SOURCE: s.SOURCE_LOG}))
    for path in run.event_files:
        try:
            frame = events.read_event_file(path)
        except AttnentError as error:
            failures.append(error)
            continue
        frames.append(frame.assign(**{s.SOURCE: s.SOURCE_TENSORBOARD}))

    frames = [f for f in frames if not f.empty]
    if not frames:
        if len(failures) == 1:
            raise failures[0]
        reasons = "; ".join(str(f).split(". ")[0] for f in failures)
        raise InputError(f"run {run.path} has no readable metrics ({reasons}). Give another run")
    for failure in failures:
        warnings.warn(f"run {run.name}: skipped: {failure}", AttnentWarning, stacklevel=2)
    return pd.concat(frames, ignore_index=True).assign(**{s.RUN: run.name})


def drop_uncomputed_entropy(table: pd.DataFrame) -> pd.DataFrame:
    """Attention entropy of exactly 0 becomes missing: EOLE writes 0.000 when it had no
    attention weights, which is not a measurement."""
    zero = (table[s.METRIC] == s.ATTENTION_ENTROPY) & (table[s.VALUE] == 0.0)
    for run, count in table.loc[zero, s.RUN].value_counts(sort=False).items():
        warnings.warn(
            f"run {run}: {count} attention_entropy values of exactly 0 read as not computed "
            "(EOLE logs 0.000 when it gets no attention weights)",
            AttnentWarning,
            stacklevel=3,
        )
    table = table.copy()
    table.loc[zero, s.VALUE] = float("nan")
    return table


def read_runs(paths: Sequence[Path], names: Sequence[str] | None = None) -> pd.DataFrame:
    """The long table of every metric of every run, in the order the runs were given.

    A step seen twice in one source (a resumed run) keeps the value read last.
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

    table = pd.concat([read_files(run) for run in runs], ignore_index=True)
    key = [s.RUN, s.SOURCE, s.SPLIT, s.STEP, s.METRIC]
    table = table.drop_duplicates(subset=key, keep="last")
    table = drop_uncomputed_entropy(table)

    order = {name: i for i, name in enumerate(names)}
    table = table.sort_values(
        [s.RUN, s.SOURCE, s.SPLIT, s.METRIC, s.STEP],
        key=lambda col: col.map(order) if col.name == s.RUN else col,
        kind="stable",
    )
    table = table[s.RUN_COLUMNS].reset_index(drop=True)
    return table.astype({s.STEP: "int64", s.VALUE: "float64", s.WALL_TIME: "float64"})
