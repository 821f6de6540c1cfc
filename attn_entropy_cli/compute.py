"""Checkpoint + data slice -> the long table of entropy per (attn_type, layer, head)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from attn_entropy_cli import schema
from attn_entropy_cli.errors import AttnentWarning, InputError, UsageError

logger = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "max", "min")
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class ComputeOptions:
    """What to observe and how to report it."""

    types: tuple[str, ...] | None = None  # attention types to report; None: all
    layers: tuple[int, ...] | None = None  # 0-based layers to report; None: all
    aggregation: str = "mean"  # how selected (type, layer) head-means combine: mean|max|min
    batch_size: int = 8  # examples per forward pass
    max_length: int | None = None  # tokens per side; longer examples are cut
    bits: bool = False  # report entropy in bits instead of nats


@dataclass
class ComputeResult:
    """The long table and the aggregated value."""

    table: pd.DataFrame  # schema.ENTROPY_COLUMNS (+ step), one row per (type, layer, head)
    aggregate: float  # options.aggregation over the selected (type, layer) head-means
    aggregation: str  # mean, max or min
    unit: str  # "nats" or "bits"
    n_examples: int  # examples in the slice


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


def select(options: ComputeOptions, sites: Sequence, description: str) -> set[tuple[str, int]]:
    """The (attn_type, layer) pairs chosen by --types and --layers; refuses absent ones."""
    layers: dict[str, list[int]] = {}
    for site in sites:
        layers.setdefault(site.attn_type, []).append(site.layer)
    has = "; ".join(f"{t} layers 0-{max(ls)}" for t, ls in layers.items())
    for attn_type in options.types or ():
        if attn_type not in layers:
            raise UsageError(f"--types {attn_type!r} is not in this {description}. It has: {has}")
    chosen = options.types or tuple(layers)
    for layer in options.layers or ():
        if not any(layer in layers[t] for t in chosen):
            raise UsageError(f"--layers {layer} is not in this {description}. It has: {has}")
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
) -> ComputeResult:
    """Load a checkpoint, run it over a data slice and tabulate entropy per head.

    Args:
        data: a `data.DataOptions` naming the slice.
        load_options: a `loaders.base.LoadOptions`; its device may be "auto".
        progress: called with (batches done, batches in all) after each batch.
    """
    from attn_entropy_cli.data import read_examples
    from attn_entropy_cli.loaders import open_checkpoint

    check_aggregation(options.aggregation)
    load_options = replace(load_options, device=resolve_device(load_options.device))
    examples = read_examples(data)
    adapter = open_checkpoint(checkpoint, load_options)
    observe = select(options, adapter.sites(), adapter.description)
    encoded = encode_all(adapter, examples, options.max_length)
    logger.info("%d examples from %s", len(encoded), data.path)
    sums = run_capture(adapter, encoded, options.batch_size, load_options.device, observe, progress)
    type_order = {t: i for i, t in enumerate(adapter.attn_types)}
    table = entropy_table(
        sums,
        str(checkpoint),
        adapter.step,
        options.bits,
        lambda key: (type_order.get(key[0], len(type_order)), key[1]),
    )
    return ComputeResult(
        table=table,
        aggregate=aggregate(table, options.aggregation),
        aggregation=options.aggregation,
        unit="bits" if options.bits else "nats",
        n_examples=len(examples),
    )
