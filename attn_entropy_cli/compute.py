"""Checkpoint + data slice -> the long table of entropy per (attn_type, layer, head)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from attn_entropy_cli import schema
from attn_entropy_cli.errors import AttnentWarning, InputError, UsageError
from attn_entropy_cli.training_config import AGGREGATIONS

logger = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "auto")
STD_ONLY_EOLE = (
    "`--types std` is EOLE's logged head and exists only for EOLE model folders. Drop std"
)


@dataclass(frozen=True)
class ComputeOptions:
    """What to observe and how to report it."""

    types: tuple[str, ...] | None = None  # attention types to report, std included; None: all
    layers: tuple[int, ...] | None = None  # 0-based layers to report; None: all
    aggregation: str = "mean"  # how selected (type, layer) head-means combine: mean|max|min
    batch_size: int = 8  # examples per forward pass
    max_length: int | None = None  # tokens per side; longer examples are cut
    bits: bool = False  # report entropy in bits instead of nats
    types_name: str = "--types"  # how messages name where the types came from
    layers_name: str = "--layers"  # how messages name where the layers came from


@dataclass(frozen=True)
class ComputeResult:
    """The long table and the aggregated value."""

    table: pd.DataFrame  # schema.ENTROPY_COLUMNS (+ step), one row per (type, layer, head)
    aggregate: float  # options.aggregation over the selected (type, layer) head-means
    aggregation: str  # mean, max or min
    unit: str  # "nats" or "bits"
    n_examples: int  # examples in the slice
    compat: Any = None  # an eole_compat.CompatResult when one was asked for, else None


def resolve_device(device: str) -> str:
    """ "cpu" or "cuda" from --device; a CUDA request without CUDA is an error."""
    import torch

    if device not in DEVICES:
        raise UsageError(f"unknown --device {device!r}. Use one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was asked for, but this PyTorch sees no CUDA device. "
            "Use --device cpu or --device auto"
        )
    return device


def check_options(options: ComputeOptions, load_options) -> None:
    """Refuse option values that no checkpoint could make sense of, before loading anything."""
    from attn_entropy_cli.loaders.base import check_dtype

    check_aggregation(options.aggregation)
    check_dtype(load_options.dtype)
    if options.batch_size < 1:
        raise UsageError(f"--batch-size {options.batch_size} is below 1. Use 1 or more")
    if options.max_length is not None and options.max_length < 1:
        raise UsageError(f"--max-length {options.max_length} is below 1. Use 1 or more")
    unknown = [t for t in options.types or () if t not in schema.ATTN_TYPES]
    if unknown:
        raise UsageError(
            f"{options.types_name} names {', '.join(map(repr, unknown))}, which is no attention "
            f"type. Use {', '.join(schema.ATTN_TYPES)}"
        )


def check_std(adapter, options: ComputeOptions) -> tuple[str, int, int] | None:
    """The (attn_type, layer, head) of EOLE's `std` head when the types ask for it, else None."""
    if "std" not in (options.types or ()):
        return None
    if getattr(adapter, "format_name", None) != "eole":
        raise UsageError(STD_ONLY_EOLE)
    std = adapter.extras.get("std")
    if std is None:
        raise InputError(
            f"{adapter.path} has no decoder, so it has no 'std' attention. "
            f"Drop std from {options.types_name}"
        )
    return std


def select(options: ComputeOptions, sites: Sequence, description: str) -> set[tuple[str, int]]:
    """The (attn_type, layer) pairs chosen by the types and layers; refuses absent ones.

    `std` is left out here: it is one head of a pair chosen by `check_std`, whatever the layers.
    """
    layers: dict[str, list[int]] = {}
    for site in sites:
        layers.setdefault(site.attn_type, []).append(site.layer)
    has = "; ".join(f"{t} layers 0-{max(ls)}" for t, ls in layers.items())
    types = None if options.types is None else [t for t in options.types if t != "std"]
    for attn_type in types or ():
        if attn_type not in layers:
            raise UsageError(
                f"{options.types_name} {attn_type!r} is not in this {description}. It has: {has}"
            )
    if types == []:
        return set()  # std alone: EOLE measures its head whatever the layers say
    chosen = types or tuple(layers)
    for layer in options.layers or ():
        if not any(layer in layers[t] for t in chosen):
            raise UsageError(
                f"{options.layers_name} {layer} is not in this {description}. It has: {has}"
            )
    return {
        (t, layer)
        for t in chosen
        for layer in layers[t]
        if options.layers is None or layer in options.layers
    }


def encode_all(adapter, examples, max_length: int | None) -> list:
    """Token ids of every example, cut to the length limit, with one warning for the cuts."""
    limit = max_length
    if adapter.max_positions is not None and (limit is None or adapter.max_positions < limit):
        limit = adapter.max_positions
    encoded, cut = [], 0
    for example in examples:
        tokens, was_cut = adapter.encode(example, limit)
        check_ids(adapter, tokens, example)
        cut += was_cut
        encoded.append(tokens)
    if cut:
        reason = "--max-length" if limit == max_length else "the model's positions"
        warnings.warn(
            f"cut {cut} of {len(examples)} examples to {limit} tokens ({reason})",
            AttnentWarning,
            stacklevel=2,
        )
    if "tgt" not in adapter.sides and any(example.tgt is not None for example in examples):
        warnings.warn(
            f"{adapter.path} reads one text per example, so the target side (--tgt or --tsv) "
            "is not used",
            AttnentWarning,
            stacklevel=2,
        )
    return encoded


def check_ids(adapter, tokens: dict[str, list[int]], example) -> None:
    """Refuse token ids beyond the embedding table, and examples with no token."""
    for side, ids in tokens.items():
        if not ids:
            raise InputError(
                f"line {example.line + 1} of the data has no {side} token after tokenising. "
                "Remove the line or choose another slice"
            )
        if adapter.vocab_size is not None and max(ids) >= adapter.vocab_size:
            raise InputError(
                f"line {example.line + 1} of the data has token id {max(ids)}, beyond the "
                f"{adapter.vocab_size} embeddings of {adapter.path}. "
                "Use the tokenizer the model was trained with (--tokenizer)"
            )


def run_capture(adapter, encoded, batch_size: int, device: str, observe, progress=None) -> dict:
    """Entropy sums per observed (attn_type, layer) over every batch of the slice."""
    from attn_entropy_cli.capture import capture_attention

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} is below 1. Use 1 or more")
    if adapter.batch_limit is not None:
        batch_size = min(batch_size, adapter.batch_limit)
    # similar lengths together waste less on padding; the result does not depend on order
    order = sorted(range(len(encoded)), key=lambda i: max(len(v) for v in encoded[i].values()))
    starts = range(0, len(order), batch_size)
    with capture_attention(adapter.model, adapter.sites(), observe) as capture:
        for done, start in enumerate(starts, 1):
            items = [encoded[i] for i in order[start : start + batch_size]]
            batch = adapter.collate(items).to(device)
            capture.run(lambda batch=batch: adapter.forward(batch), batch.query_masks)
            if progress is not None:
                progress(done, len(starts))
    return capture.sums


def reported_sums(sums: dict, chosen: set, std: tuple[str, int, int] | None) -> dict:
    """The sums to tabulate: the chosen (type, layer) pairs, and `std` as a one-head copy.

    The `std` entry keeps the layer of EOLE's measured head and calls the head 0.
    """
    reported = {key: value for key, value in sums.items() if key in chosen}
    if std is not None:
        attn_type, layer, head = std
        reported[("std", layer)] = sums[(attn_type, layer)].head(head)
    return reported


def entropy_table(sums: dict, checkpoint: str, step: int | None, bits: bool, order) -> pd.DataFrame:
    """The long table from per-(type, layer) sums, in the model's type order."""
    scale = 1 / math.log(2) if bits else 1.0
    rows = []
    for (attn_type, layer), head_sums in sorted(sums.items(), key=lambda kv: order(kv[0])):
        columns = zip(
            head_sums.mean().tolist(),
            head_sums.normalized().tolist(),
            head_sums.n_rows.tolist(),
            head_sums.std().tolist(),
            strict=True,
        )
        for head, (mean, normalized, n_rows, std) in enumerate(columns):
            rows.append(
                [checkpoint, attn_type, layer, head, mean * scale, normalized, n_rows, std * scale]
            )
    table = pd.DataFrame(rows, columns=schema.ENTROPY_COLUMNS)
    if step is not None:
        table[schema.STEP] = step
    if bits:
        # nats is the unit a table without this column is in; a table in bits says so
        table[schema.UNIT] = "bits"
    return table


def check_aggregation(aggregation: str) -> None:
    """Refuse an --aggregation other than mean, max and min."""
    if aggregation not in AGGREGATIONS:
        raise UsageError(
            f"unknown --aggregation {aggregation!r}. Use one of {', '.join(AGGREGATIONS)}"
        )


def aggregate(table: pd.DataFrame, aggregation: str) -> float:
    """EOLE's aggregation: each (type, layer) averaged over heads, then mean, max or min."""
    check_aggregation(aggregation)
    per_layer = table.groupby([schema.ATTN_TYPE, schema.LAYER], sort=False)[schema.ENTROPY]
    return float(getattr(per_layer.mean(), aggregation)())


def compute_entropy(
    checkpoint: Path,
    data,
    load_options,
    options: ComputeOptions,
    progress: Callable[[int, int], None] | None = None,
    compat=None,
) -> ComputeResult:
    """Load a checkpoint, run it over a data slice and tabulate entropy per head.

    Every option is checked before the model runs. `std` in the types adds EOLE's logged head
    (EOLE folders only) as attn_type `std`, whatever the layers say.

    Args:
        data: a `data.DataOptions` naming the slice.
        load_options: a `loaders.base.LoadOptions`; its device may be "auto".
        progress: called with (batches done, batches in all) after each batch.
        compat: an `eole_compat.CompatOptions`: also compute the number EOLE's validation
            would log, on the same loaded model (EOLE folders only).
    """
    from attn_entropy_cli.data import read_examples
    from attn_entropy_cli.loaders import open_checkpoint

    check_options(options, load_options)
    if compat is not None:
        from attn_entropy_cli.eole_compat import check_batching, check_compat

        check_batching(compat)
    load_options = replace(load_options, device=resolve_device(load_options.device))
    examples = read_examples(data)
    adapter = open_checkpoint(checkpoint, load_options)
    std = check_std(adapter, options)
    chosen = select(options, adapter.sites(), adapter.description)
    if compat is not None:
        check_compat(adapter, compat)

    encoded = encode_all(adapter, examples, options.max_length)
    logger.info("%d examples from %s", len(encoded), data.path)
    observe = chosen | ({std[:2]} if std is not None else set())
    sums = run_capture(adapter, encoded, options.batch_size, load_options.device, observe, progress)
    table = entropy_table(
        reported_sums(sums, chosen, std),
        str(checkpoint),
        adapter.step,
        options.bits,
        type_order(adapter.attn_types),
    )
    return ComputeResult(
        table=table,
        aggregate=aggregate(table, options.aggregation),
        aggregation=options.aggregation,
        unit="bits" if options.bits else "nats",
        n_examples=len(examples),
        compat=compat_number(adapter, examples, compat, options),
    )


def type_order(attn_types: Sequence[str]) -> Callable[[tuple[str, int]], tuple[int, int]]:
    """Sort key of (attn_type, layer): the model's type order, then `std`, then the layer."""
    order = {t: i for i, t in enumerate([*attn_types, "std"])}
    return lambda key: (order.get(key[0], len(order)), key[1])


def compat_number(adapter, examples, compat, options: ComputeOptions):
    """The EOLE-compatible number on the loaded model, in the options' unit; None unasked."""
    if compat is None:
        return None
    from attn_entropy_cli.eole_compat import eole_compatible_entropy

    compat = replace(compat, max_length=options.max_length)
    result = eole_compatible_entropy(adapter, examples, compat)
    return result.in_bits() if options.bits else result
