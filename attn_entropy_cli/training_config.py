"""The four attention-entropy options of an EOLE training config, read from YAML or config.json.

EOLE 0.6.4 declares them in `eole/config/training.py` (`TrainingConfig`):
`log_attention_entropy` (default true), `attention_entropy_types` (default: every key of the
model's attention dict), `attention_entropy_layers` (default: all) and
`attention_entropy_aggregation` (mean, max or min; default mean). A YAML config may set them at
its top level or under `training:`; a checkpoint's `config.json` keeps them under `training`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from attn_entropy_cli.errors import AttnentWarning, InputError, UsageError
from attn_entropy_cli.schema import ATTN_TYPES

OPTION_NAMES = {
    "log_attention_entropy": "log_attention_entropy",
    "types": "attention_entropy_types",
    "layers": "attention_entropy_layers",
    "aggregation": "attention_entropy_aggregation",
}
AGGREGATIONS = ("mean", "max", "min")
# keys of EOLE's attention dict that attnent does not measure; named in a warning, then dropped
EOLE_ONLY_TYPES = ("align", "coverage", "cross_attns")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
# on the command line, --types all / --layers all: every one, whatever a config says
ALL = "all"
# the command-line option of each field, for messages
COMMAND_LINE_NAMES = {
    "log_attention_entropy": "log_attention_entropy",
    "types": "--types",
    "layers": "--layers",
    "aggregation": "--aggregation",
}


@dataclass(frozen=True)
class EntropyConfig:
    """The attention-entropy options a training config sets; None where it leaves the default."""

    log_attention_entropy: bool | None = None  # False: EOLE logged every attn_ent as 0.000
    # attention types to measure; None: all of them (ALL on the command line: all, overriding)
    types: tuple[str, ...] | str | None = None
    layers: tuple[int, ...] | str | None = None  # 0-based layer indices; None (or ALL): all
    aggregation: str | None = None  # "mean", "max" or "min" across (type, layer) entries
    source: Path | None = None  # the file the options were read from; None: command line
    from_source: tuple[str, ...] = ()  # fields whose value came from `source` after `resolve`

    def is_empty(self) -> bool:
        """True when no option is set."""
        return all(getattr(self, name) is None for name in OPTION_NAMES)

    def option_name(self, name: str) -> str:
        """How a message names where field `name` came from: `--types`, or the config key."""
        if name in self.from_source:
            return f"{OPTION_NAMES[name]} in {self.source}"
        return COMMAND_LINE_NAMES[name]

    def describe_source(self) -> str | None:
        """One line naming the options taken from a config file and the file; None if none."""
        taken = [n for n in ("types", "layers", "aggregation") if n in self.from_source]
        if self.source is None or not taken:
            return None
        values = ", ".join(f"{OPTION_NAMES[n]} {format_value(getattr(self, n))}" for n in taken)
        return f"attention-entropy options from {self.source}: {values}"


def format_value(value: Any) -> str:
    """A config value as a YAML-like list or word: [std, context], [0, 1], mean."""
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def read_entropy_config(path: Path) -> EntropyConfig:
    """The four options of the EOLE training config at `path` (YAML, or a checkpoint's JSON)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config {path} does not exist. Check the path given to --config")
    document = load_document(path)
    training = document.get("training")
    if training is not None and not isinstance(training, dict):
        raise InputError(f"'training' in {path} is not a mapping. Fix the config file")

    # `training:` wins over the top level, as it is the section EOLE validates
    found: dict[str, Any] = {}
    for field_name, key in OPTION_NAMES.items():
        if training is not None and key in training:
            found[field_name] = training[key]
        elif key in document:
            found[field_name] = document[key]
    return parse_options(found, path)


def load_document(path: Path) -> dict:
    """The top-level mapping of a YAML or JSON config file."""
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"cannot read config {path} ({first}). Give an EOLE YAML or config.json"
        ) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise InputError(f"config {path} is not a mapping of options. Give an EOLE training config")
    return document


def parse_options(found: dict[str, Any], path: Path) -> EntropyConfig:
    """Check and normalise raw option values read from `path`."""
    log = found.get("log_attention_entropy")
    if log is not None and not isinstance(log, bool):
        raise InputError(
            f"log_attention_entropy in {path} is {log!r}, not true or false. Fix the config"
        )

    types = found.get("types")
    if types is not None:
        types = parse_types(types, path)

    layers = found.get("layers")
    if layers is not None:
        values = [layers] if isinstance(layers, int) else layers
        if not isinstance(values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values
        ):
            raise InputError(
                f"attention_entropy_layers in {path} is {layers!r}, not a list of layer indices. "
                "Write it as e.g. [0, 1]"
            )
        layers = tuple(values)

    aggregation = found.get("aggregation")
    if aggregation is not None and aggregation not in AGGREGATIONS:
        raise InputError(
            f"attention_entropy_aggregation in {path} is {aggregation!r}. "
            f"Use one of {', '.join(AGGREGATIONS)}"
        )
    return EntropyConfig(log, types, layers, aggregation, path)


def parse_types(raw: Any, path: Path) -> tuple[str, ...]:
    """attention_entropy_types as attnent types; EOLE-only names are dropped with a warning."""
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InputError(
            f"attention_entropy_types in {path} is {raw!r}, not a list of names. "
            "Write it as e.g. [std, context]"
        )
    unknown = [v for v in values if v not in ATTN_TYPES and v not in EOLE_ONLY_TYPES]
    if unknown:
        raise InputError(
            f"attention_entropy_types in {path} names {', '.join(map(repr, unknown))}. "
            f"Use {', '.join(ATTN_TYPES)}"
        )
    dropped = [v for v in values if v in EOLE_ONLY_TYPES]
    kept = tuple(v for v in values if v in ATTN_TYPES)
    if dropped:
        warnings.warn(
            f"attention_entropy_types in {path} names {', '.join(dropped)}, which attnent does "
            f"not measure; measuring {', '.join(kept) or 'all types'} instead",
            AttnentWarning,
            stacklevel=2,
        )
    return kept or None


def resolve(command_line: EntropyConfig, config: EntropyConfig | None) -> EntropyConfig:
    """The options to use: each one given on the command line wins over the config's.

    ALL on the command line (`--types all`, `--layers all`) becomes None: every one.
    """
    given = {name: getattr(command_line, name) for name in OPTION_NAMES}
    given = {name: value for name, value in given.items() if value is not None}
    if config is None:
        chosen = replace(command_line, source=None, from_source=())
    else:
        taken = tuple(n for n in OPTION_NAMES if n not in given and getattr(config, n) is not None)
        chosen = replace(config, **given, from_source=taken)
    every = {name: None for name in ("types", "layers") if getattr(chosen, name) == ALL}
    return replace(chosen, **every)


def find_run_config(path: Path) -> Path | None:
    """The training config that belongs to a checkpoint or run folder, when there is one.

    A checkpoint folder holding `config.json` (EOLE's layout) gives that file. A run folder
    gives its own YAML (`runA/runA.yaml`, or its only YAML file), else the `config.json` of its
    latest `step_N` checkpoint. A checkpoint file (nanoGPT `.pt`) or anything else gives None.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    own = path / "config.json"
    if own.is_file() and is_eole_config(own):
        return own

    yamls = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    named = [p for p in yamls if p.stem == path.name]
    if named or len(yamls) == 1:
        return (named or yamls)[0]
    if len(yamls) > 1:
        warnings.warn(
            f"{path} holds {len(yamls)} YAML files ({', '.join(p.name for p in yamls)}) and none "
            f"is named {path.name}.yaml; reading none of them. Pass --config FILE.yaml",
            AttnentWarning,
            stacklevel=2,
        )
        return None

    from attn_entropy_cli.loaders.base import named_step  # torch: only when a folder is searched

    steps = []
    for candidate in path.rglob("step_*/config.json"):
        step = named_step(candidate.parent)
        if step is not None and is_eole_config(candidate):
            steps.append((step, candidate))
    return max(steps)[1] if steps else None


def is_eole_config(path: Path) -> bool:
    """True when a config.json is EOLE's (a `model` or `training` section), not Hugging Face's."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (
        isinstance(document, dict)
        and "model_type" not in document
        and (isinstance(document.get("model"), dict) or isinstance(document.get("training"), dict))
    )


def entropy_options_for(
    checkpoints: Sequence[Path], config: Path | None, command_line: EntropyConfig
) -> EntropyConfig:
    """The options `compute` should use: `--config`, else the first checkpoint's own config.

    Options given on the command line win. The result's `source` names the file read (None
    when none was), so the caller can say which on stderr.
    """
    if config is not None:
        return resolve(command_line, read_entropy_config(config))
    found = find_run_config(Path(checkpoints[0])) if checkpoints else None
    return resolve(command_line, None if found is None else read_entropy_config(found))
