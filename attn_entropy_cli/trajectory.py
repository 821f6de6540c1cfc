"""Entropy over training: many checkpoints (or a run folder's) into one long table with `step`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from attn_entropy_cli import schema
from attn_entropy_cli.errors import AttnentWarning, InputError, UsageError
from attn_entropy_cli.loaders.base import CHECKPOINT_FOLDER, named_step


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint of a trajectory, before it is loaded."""

    path: Path  # the checkpoint file or folder
    format: str  # a key of loaders.FORMATS
    step: int | None  # from its name; the adapter's own step wins when it has one
    architecture: str | None = None  # a short description, where cheap to read (EOLE)


def run_checkpoints(folder: Path) -> list[Path]:
    """Every checkpoint in a run folder: `step_N` / `checkpoint-N` folders, else `.pt` files."""
    folders = [
        p
        for p in folder.rglob("*")
        if p.is_dir() and CHECKPOINT_FOLDER.match(p.name) and (p / "config.json").is_file()
    ]
    if folders:
        return folders
    return [p for p in folder.rglob("*.pt") if p.is_file()]


def expand_checkpoints(paths: Sequence[Path], options=None) -> list[CheckpointRef]:
    """The checkpoints named by `paths` (checkpoints or run folders), in step order.

    A folder that holds `step_N` or `checkpoint-N` folders is a run folder, even when it also
    looks like a checkpoint itself (EOLE's `model/` links its latest step). Checkpoints whose
    name carries no step keep their place after those that do. `options` is the
    `loaders.base.LoadOptions` the checkpoints will be opened with; its format hint counts.
    """
    from attn_entropy_cli.loaders import detect_format
    from attn_entropy_cli.loaders.base import LoadOptions

    options = options or LoadOptions()
    format_hint = options.format_hint

    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise UsageError(f"checkpoint {path} does not exist. Check the path")
        inside = run_checkpoints(path) if path.is_dir() else []
        if path.is_dir() and any(CHECKPOINT_FOLDER.match(p.name) for p in inside):
            found.extend(inside)
        elif format_hint is not None or not path.is_dir() or looks_like_checkpoint(path, options):
            found.append(path)
        elif inside:
            found.extend(inside)
        else:
            raise InputError(
                f"{path} is neither a checkpoint nor a run folder holding checkpoints "
                "(step_N, checkpoint-N or .pt). Give checkpoint paths"
            )

    refs, seen = [], set()
    for path in found:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        name = format_hint or detect_format(path, options)
        refs.append(CheckpointRef(path, name, named_step(path), architecture(path, name)))
    refs.sort(key=lambda ref: (ref.step is None, ref.step or 0))
    check_same_kind(refs)
    return refs


def looks_like_checkpoint(folder: Path, options) -> bool:
    """True when a folder is a checkpoint of a detectable format."""
    from attn_entropy_cli.loaders import detect_format

    try:
        detect_format(folder, options)
    except InputError:
        return False
    return True


def architecture(path: Path, format_name: str) -> str | None:
    """A cheap description of a checkpoint's architecture, where its format allows one."""
    if format_name == "eole":
        from attn_entropy_cli.loaders.eole import eole_architecture

        return eole_architecture(path)
    return None


def check_same_kind(refs: Sequence[CheckpointRef]) -> None:
    """Refuse a list that mixes formats or architectures, naming the first two that differ."""
    for ref in refs[1:]:
        first = refs[0]
        if ref.format != first.format:
            raise InputError(
                f"the checkpoints mix formats: {first.path} is {first.format} and {ref.path} is "
                f"{ref.format}. Give checkpoints of one run"
            )
        if ref.architecture != first.architecture:
            raise InputError(
                f"the checkpoints mix architectures: {first.path} is {first.architecture} and "
                f"{ref.path} is {ref.architecture}. Give checkpoints of one run"
            )


def trajectory_table(
    refs: Sequence[CheckpointRef],
    compute_one: Callable[[Path], pd.DataFrame],
    describe: Callable[[pd.DataFrame], str] | None = None,
) -> pd.DataFrame:
    """One long table with a `step` column: `compute_one` runs once per checkpoint, in order.

    `compute_one(path)` loads the checkpoint once and returns its entropy table (with `step`
    when the adapter knows it); the caller keeps the data slice and batching the same for all.
    `describe(table)` gives a layout signature (types, layers, heads); two checkpoints whose
    signatures differ are refused, naming both.
    """
    describe = describe or layout
    tables, first = [], None
    for index, ref in enumerate(refs):
        table = compute_one(ref.path)
        if schema.STEP not in table.columns or table[schema.STEP].isna().all():
            table = table.assign(**{schema.STEP: ref.step if ref.step is not None else index})
            if ref.step is None:
                warnings.warn(
                    f"{ref.path} says nothing of its step; using its place {index} in the list",
                    AttnentWarning,
                    stacklevel=2,
                )
        signature = describe(table)
        if first is None:
            first = (ref.path, signature)
        elif signature != first[1]:
            raise InputError(
                f"the checkpoints mix architectures: {first[0]} has {first[1]} and {ref.path} "
                f"has {signature}. Give checkpoints of one run"
            )
        tables.append(table)
    combined = pd.concat(tables, ignore_index=True)
    keys = [schema.STEP, schema.ATTN_TYPE, schema.LAYER, schema.HEAD]
    order = {t: i for i, t in enumerate(dict.fromkeys(combined[schema.ATTN_TYPE]))}
    combined = combined.sort_values(
        keys, key=lambda c: c.map(order) if c.name == schema.ATTN_TYPE else c, kind="stable"
    )
    return combined.reset_index(drop=True)


def layout(table: pd.DataFrame) -> str:
    """Heads per (attn_type, layer) of an entropy table, as one string: `self 0-1 x 4 heads`."""
    parts = []
    grouped = table.groupby(schema.ATTN_TYPE, sort=False)
    for attn_type, group in grouped:
        layers = sorted(group[schema.LAYER].unique())
        heads = group.groupby(schema.LAYER)[schema.HEAD].nunique().max()
        parts.append(f"{attn_type} layers {layers[0]}-{layers[-1]} x {heads} heads")
    return ", ".join(parts)


def compute_trajectory(
    paths: Sequence[Path], data, load_options, options, progress=None
) -> pd.DataFrame:
    """`compute` over every checkpoint `paths` name (or their run folders), one long table.

    Each checkpoint is loaded once and runs over the same data slice with the same batching.

    Args:
        data, load_options, options: as for `compute.compute_entropy`.
        progress: called with (checkpoints done, checkpoints in all) after each checkpoint.
    """
    from attn_entropy_cli.compute import STD_ONLY_EOLE, compute_entropy

    refs = expand_checkpoints(paths, load_options)
    if "std" in (options.types or ()) and refs[0].format != "eole":
        raise UsageError(STD_ONLY_EOLE)
    done = []

    def one(path: Path) -> pd.DataFrame:
        table = compute_entropy(path, data, load_options, options).table
        done.append(path)
        if progress is not None:
            progress(len(done), len(refs))
        return table

    return trajectory_table(refs, one)


def step_aggregates(table: pd.DataFrame, aggregation: str) -> pd.DataFrame:
    """One row per step of a trajectory table: `step` and the aggregated entropy, `entropy`."""
    from attn_entropy_cli.compute import aggregate

    rows = [
        (step, aggregate(group, aggregation))
        for step, group in table.groupby(schema.STEP, sort=True)
    ]
    return pd.DataFrame(rows, columns=[schema.STEP, schema.ENTROPY])
