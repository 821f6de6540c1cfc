"""The `compute` command: per-layer, per-head attention entropy of a checkpoint."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import typer

from attn_entropy_cli.cli import app
from attn_entropy_cli.errors import UsageError

STDOUT_FORMATS = ("table", "csv", "json")

CheckpointArg = typer.Argument(..., help="Checkpoint file or folder.", show_default=False)
DataArg = typer.Argument(..., help="Text file, one example per line.", show_default=False)
TgtOpt = typer.Option(None, "--tgt", help="Target side, line for line.")
TypesOpt = typer.Option(
    None,
    "--types",
    metavar="TYPE,...",
    help="Attention types to report: enc_self, self, context (default all).",
)
LayersOpt = typer.Option(
    None, "--layers", metavar="N,...", help="Layers to report, 0-based (default all)."
)
OutputOpt = typer.Option(
    None, "-o", "--output", help="Write the long table (.csv, .json, .parquet)."
)
TokenizerOpt = typer.Option(
    None, "--tokenizer", help="Hugging Face tokenizer folder, for checkpoints without one."
)


def split_list(values: list[str] | None) -> list[str]:
    """Values given as repeated options and/or comma-separated lists."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def parse_layers(values: list[str] | None) -> tuple[int, ...] | None:
    """0-based layer numbers from --layers."""
    parts = split_list(values)
    if not parts:
        return None
    try:
        layers = tuple(int(part) for part in parts)
    except ValueError:
        raise UsageError(
            f"--layers takes 0-based layer numbers, not {','.join(parts)!r}. Example: --layers 0,5"
        ) from None
    if min(layers) < 0:
        raise UsageError(f"--layers {min(layers)} is negative. Layers count from 0")
    return layers


def render(result) -> str:
    """One row per (attn_type, layer), one column per head, then the aggregated value."""
    from attn_entropy_cli import schema

    table = result.table
    n_heads = int(table[schema.HEAD].max()) + 1
    header = f"{'attn_type':<10} {'layer':>5} " + " ".join(
        f"{f'head {h}':>8}" for h in range(n_heads)
    )
    lines = [f"entropy ({result.unit}) over {result.n_examples} examples", header]
    for (attn_type, layer), group in table.groupby([schema.ATTN_TYPE, schema.LAYER], sort=False):
        values = group.sort_values(schema.HEAD)[schema.ENTROPY]
        cells = " ".join(f"{value:8.4f}" for value in values)
        lines.append(f"{attn_type:<10} {layer:>5} {cells}")
    total = f"{result.aggregate:.4f} {result.unit}"
    lines.append(f"{result.aggregation} over the selected layers: {total}")
    return "\n".join(lines)


@app.command()
def compute(
    checkpoint: Path = CheckpointArg,
    data: Path = DataArg,
    start: int = typer.Option(0, "--start", help="First line of the slice, 0-based."),
    limit: int | None = typer.Option(None, "--limit", help="Most lines to take."),
    max_length: int | None = typer.Option(None, "--max-length", help="Tokens per example."),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per forward pass."),
    field: str | None = typer.Option(None, "--field", help="Text field of a .jsonl file."),
    tgt: Path | None = TgtOpt,
    tsv: bool = typer.Option(False, "--tsv", help="DATA lines are source<TAB>target."),
    types: list[str] | None = TypesOpt,
    layers: list[str] | None = LayersOpt,
    aggregation: str = typer.Option("mean", "--aggregation", help="mean, max or min."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    bits: bool = typer.Option(False, "--bits", help="Report bits instead of nats."),
    output: Path | None = OutputOpt,
    fmt: str = typer.Option("table", "--format", help="stdout: table, csv or json."),
    format_hint: str | None = typer.Option(
        None, "--format-hint", help="Force the checkpoint format: hf, nanogpt, eole, pickle."
    ),
    tokenizer: Path | None = TokenizerOpt,
    factory: str | None = typer.Option(
        None, "--factory", help="module:function returning (model, tokenizer) for a path."
    ),
    unsafe_load_pickle: bool = typer.Option(
        False, "--unsafe-load-pickle", help="Allow checkpoints that run pickled code."
    ),
) -> None:
    """Entropy of every attention head of a checkpoint over a slice of a dataset.

    Prints one row per (attn_type, layer) with one column per head, then the aggregated
    value; -o writes the long table.

    Example: attnent compute sample_runs/nanogpt/ckpt.pt sample_runs/data/src-val.txt --limit 20
    """
    from attn_entropy_cli import report
    from attn_entropy_cli.compute import ComputeOptions, compute_entropy
    from attn_entropy_cli.data import DataOptions
    from attn_entropy_cli.loaders.base import LoadOptions

    if fmt not in STDOUT_FORMATS:
        raise UsageError(f"unknown --format {fmt!r}. Use one of {', '.join(STDOUT_FORMATS)}")
    if output is not None:
        out_format = report.format_from_suffix(output)
    options = ComputeOptions(
        types=tuple(split_list(types)) or None,
        layers=parse_layers(layers),
        aggregation=aggregation,
        batch_size=batch_size,
        max_length=max_length,
        bits=bits,
    )
    data_options = DataOptions(data, start, limit, field, tgt, tsv)
    load_options = LoadOptions(
        format_hint, tokenizer, factory, unsafe_load_pickle, device=device, dtype=dtype
    )
    with ExitStack() as stack:
        bars = []

        def progress(done: int, total: int) -> None:
            # the bar opens with the first batch, so errors before it stay one clean line
            if not bars:
                bar = typer.progressbar(length=total, label="batches", file=sys.stderr)
                bars.append(stack.enter_context(bar))
            bars[0].update(1)

        result = compute_entropy(checkpoint, data_options, load_options, options, progress)
    if output is not None:
        report.write_table(result.table, output, out_format)
    if fmt == "table":
        print(render(result))
    else:
        report.write_table(result.table, None, fmt)
