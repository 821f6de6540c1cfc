"""Dataset slices: lines of text, JSON lines or TSV pairs into examples."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from attn_entropy_cli.errors import AttnentWarning, InputError, UsageError
from attn_entropy_cli.loaders.base import Example


@dataclass(frozen=True)
class DataOptions:
    """Which examples of which files make the slice."""

    path: Path  # one example per line: text, JSON lines (.jsonl) or TSV with --tsv
    start: int = 0  # first line, 0-based
    limit: int | None = None  # most lines to take; None: to the end
    field: str | None = None  # the key of a JSON line holding the text; default "text"
    tgt: Path | None = None  # target side, line for line, for encoder-decoder models
    tsv: bool = False  # each line is `source<TAB>target`


def read_lines(path: Path, field: str | None) -> list[str]:
    """The lines of a text file, or one field of each line of a `.jsonl` file."""
    if Path(path).is_dir():
        raise UsageError(f"data file {path} is a folder. Give a text, .jsonl or TSV file")
    if not Path(path).is_file():
        raise UsageError(f"data file {path} does not exist. Check the path")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise InputError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}). Convert it to UTF-8"
        ) from None
    if Path(path).suffix.lower() != ".jsonl":
        if field is not None:
            raise UsageError(f"--field applies to .jsonl files, and {path} is not one. Drop it")
        return lines
    return [json_field(line, number, path, field or "text") for number, line in enumerate(lines)]


def json_field(line: str, number: int, path: Path, field: str) -> str:
    """The text under `field` of one JSON line; blank lines stay blank."""
    if not line.strip():
        return ""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"line {number + 1} of {path} is not JSON ({error.msg}). Fix it") from None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else "none"
        raise InputError(
            f"line {number + 1} of {path} has no text field {field!r} (it has: {keys}). "
            "Pass --field NAME"
        )
    return record[field]


def read_examples(options: DataOptions) -> list[Example]:
    """The examples of the slice; blank source lines are skipped with one warning.

    Limitations: the whole file (and target file) is read and parsed before the slice is
    taken, so a --start deep into a large .jsonl or TSV file costs a full parse of it.
    """
    if options.tsv and options.tgt is not None:
        raise UsageError("--tsv and --tgt both give a target side. Use one of them")
    sources = read_lines(options.path, options.field)
    targets: list[str | None] = [None] * len(sources)
    if options.tsv:
        sources, targets = split_tsv(sources, options.path)
    elif options.tgt is not None:
        # --field names the text of the .jsonl files; a plain-text target has no fields
        is_jsonl = Path(options.tgt).suffix.lower() == ".jsonl"
        targets = read_lines(options.tgt, options.field if is_jsonl else None)
        if len(targets) != len(sources):
            raise InputError(
                f"{options.tgt} has {len(targets)} lines and {options.path} has "
                f"{len(sources)}. Give a target file with one line per source line"
            )
    if options.start < 0 or (options.limit is not None and options.limit < 1):
        raise UsageError("--start must be 0 or more and --limit 1 or more. Fix the values")
    stop = len(sources) if options.limit is None else options.start + options.limit
    numbers = range(options.start, min(stop, len(sources)))
    examples = [Example(sources[i], targets[i], i) for i in numbers if sources[i].strip()]
    blank = len(numbers) - len(examples)
    if not examples:
        raise InputError(
            f"the slice of {options.path} from line {options.start + 1} is empty (the file has "
            f"{len(sources)} lines, {blank} blank in the slice). Choose another --start"
        )
    if blank:
        warnings.warn(
            f"skipped {blank} blank lines of {options.path}", AttnentWarning, stacklevel=2
        )
    return examples


def split_tsv(lines: list[str], path: Path) -> tuple[list[str], list[str | None]]:
    """Source and target columns of `source<TAB>target` lines."""
    sources, targets = [], []
    for number, line in enumerate(lines):
        if not line.strip():
            sources.append("")
            targets.append(None)
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise InputError(
                f"line {number + 1} of {path} has {len(parts)} tab-separated fields, not 2. "
                "Write each line as source<TAB>target"
            )
        sources.append(parts[0])
        targets.append(parts[1])
    return sources, targets
