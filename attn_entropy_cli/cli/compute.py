"""The `compute` command: per-layer, per-head attention entropy of a checkpoint."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import typer

from attn_entropy_cli.cli import app
from attn_entropy_cli.errors import UsageError

STDOUT_FORMATS = ("table", "csv", "json")

PathsArg = typer.Argument(
    ...,
    metavar="CHECKPOINT... DATA",
    help="Checkpoints or run folders (several: entropy over training), then the data file.",
    show_default=False,
)
TgtOpt = typer.Option(None, "--tgt", help="Target side, line for line.")
TypesOpt = typer.Option(
    None,
    "--types",
    metavar="TYPE,...",
    help="Attention types: enc_self, self, context, std (EOLE's logged head), or all "
    "(overrides a config's); default all.",
)
LayersOpt = typer.Option(
    None,
    "--layers",
    metavar="N,...",
    help="Layers to report, 0-based, or all (overrides a config's); default all.",
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


def parse_all(option: str, parts: list[str]) -> bool:
    """True when an option says `all`; refuses `all` next to other values."""
    if "all" not in parts:
        return False
    if len(parts) > 1:
        raise UsageError(f"{option} all means every one. Give all alone, or a list without it")
    return True


def parse_types(values: list[str] | None) -> tuple[str, ...] | str | None:
    """Attention types from --types: a tuple, ALL, or None when not given."""
    from attn_entropy_cli.training_config import ALL

    parts = split_list(values)
    if parse_all("--types", parts):
        return ALL
    return tuple(parts) or None


def parse_layers(values: list[str] | None) -> tuple[int, ...] | str | None:
    """0-based layer numbers from --layers, ALL, or None when not given."""
    from attn_entropy_cli.training_config import ALL

    parts = split_list(values)
    if not parts:
        return None
    if parse_all("--layers", parts):
        return ALL
    try:
        layers = tuple(int(part) for part in parts)
    except ValueError:
        raise UsageError(
            f"--layers takes 0-based layer numbers or all, not {','.join(parts)!r}. "
            "Example: --layers 0,5"
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


def render_compat(result) -> str:
    """EOLE's logged number next to attnent's, and the difference taken apart."""
    attn_type, layer, head = result.std
    # the difference of the two numbers as printed, so that the line reads as a subtraction
    difference = round(result.eole, 6) - round(result.attnent, 6)
    batches = f"{result.n_batches} batch{'es' if result.n_batches != 1 else ''}"
    lines = [
        f"EOLE-compatible entropy ({result.unit}): {attn_type} layer {layer} head {head} "
        f"(EOLE's 'std'), {result.n_sentences} sentences in {batches} of {result.batch_size} "
        f"{result.batch_type}",
        f"  EOLE would log        {result.eole:.6f}",
        f"  attnent's definition  {result.attnent:.6f}",
        f"  difference            {difference:+.6f} = padded rows {result.padded_rows:+.6f}"
        f" + per-sentence averaging {result.sentence_weighting:+.6f} + clamp {result.clamp:+.1e}",
    ]
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


def render_trajectory(steps, aggregation: str) -> str:
    """One row per checkpoint step, from `trajectory.step_aggregates`."""
    lines = [f"{'step':>8}  {aggregation:>10}"]
    for step, value in zip(steps["step"], steps["entropy"], strict=True):
        lines.append(f"{int(step):>8}  {value:>10.4f}")
    lines.append(
        "per head: write the table with -o FILE.csv and draw it with 'attnent plot FILE.csv'"
    )
    return "\n".join(lines)


@app.command()
def compute(
    paths: list[Path] = PathsArg,
    start: int = typer.Option(0, "--start", help="First line of the slice, 0-based."),
    limit: int | None = typer.Option(None, "--limit", help="Most lines to take."),
    max_length: int | None = typer.Option(None, "--max-length", help="Tokens per example."),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per forward pass."),
    field: str | None = typer.Option(None, "--field", help="Text field of a .jsonl file."),
    tgt: Path | None = TgtOpt,
    tsv: bool = typer.Option(False, "--tsv", help="DATA lines are source<TAB>target."),
    types: list[str] | None = TypesOpt,
    layers: list[str] | None = LayersOpt,
    aggregation: str | None = typer.Option(
        None, "--aggregation", help="mean, max or min [default: the config's, else mean]."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="EOLE training config whose attention_entropy_* options to use."
    ),
    eole_compat: bool = typer.Option(
        False, "--eole-compat", help="Also compute the number EOLE's validation would log."
    ),
    eole_batch_size: int | None = typer.Option(
        None, "--eole-batch-size", help="--eole-compat batch size [default: valid_batch_size]."
    ),
    eole_batch_type: str | None = typer.Option(
        None, "--eole-batch-type", help="--eole-compat: sents or tokens [default: batch_type]."
    ),
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
    from attn_entropy_cli.eole_compat import CompatOptions
    from attn_entropy_cli.loaders.base import LoadOptions
    from attn_entropy_cli.training_config import EntropyConfig, entropy_options_for
    from attn_entropy_cli.trajectory import compute_trajectory, expand_checkpoints, step_aggregates

    if fmt not in STDOUT_FORMATS:
        raise UsageError(f"unknown --format {fmt!r}. Use one of {', '.join(STDOUT_FORMATS)}")
    out_format = output_format(output)
    if len(paths) < 2:
        raise UsageError(
            "compute needs a checkpoint and a data file. Example: attnent compute CKPT DATA.txt"
        )
    *checkpoints, data = paths

    # the four attention_entropy_* options: command line, else the run's training config
    command_line = EntropyConfig(
        types=parse_types(types), layers=parse_layers(layers), aggregation=aggregation
    )
    chosen = entropy_options_for(checkpoints, config, command_line)
    if chosen.describe_source() is not None:
        print(chosen.describe_source(), file=sys.stderr)
    options = ComputeOptions(
        types=chosen.types,
        layers=chosen.layers,
        aggregation=chosen.aggregation or "mean",
        batch_size=batch_size,
        max_length=max_length,
        bits=bits,
        types_name=chosen.option_name("types"),
        layers_name=chosen.option_name("layers"),
    )
    data_options = DataOptions(data, start, limit, field, tgt, tsv)
    load_options = LoadOptions(
        format_hint, tokenizer, factory, unsafe_load_pickle, device=device, dtype=dtype
    )
    compat = CompatOptions(eole_batch_size, eole_batch_type, chosen) if eole_compat else None
    refs = expand_checkpoints(checkpoints, load_options)
    if compat is not None and len(refs) > 1:
        raise UsageError(
            f"--eole-compat takes one checkpoint, not {len(refs)}. Name one step_N folder"
        )

    with ExitStack() as stack:
        bars = []

        def progress(done: int, total: int) -> None:
            # the bar opens with the first batch, so errors before it stay one clean line;
            # it is for a person watching, so a log file or pipe gets none
            if not sys.stderr.isatty():
                return
            if not bars:
                label = "checkpoints" if len(refs) > 1 else "batches"
                bar = typer.progressbar(length=total, label=label, file=sys.stderr)
                bars.append(stack.enter_context(bar))
            bars[0].update(1)

        if len(refs) > 1:
            result = None
            table = compute_trajectory(checkpoints, data_options, load_options, options, progress)
        else:
            result = compute_entropy(
                refs[0].path, data_options, load_options, options, progress, compat
            )
            table = result.table

    if output is not None:
        report.write_table(table, output, out_format)
    if fmt != "table":
        report.write_table(table, None, fmt)
    elif result is not None:
        print(render(result))
    else:
        print(render_trajectory(step_aggregates(table, options.aggregation), options.aggregation))
    if result is not None and result.compat is not None:
        print(render_compat(result.compat))


def output_format(output: Path | None) -> str | None:
    """The table format of -o from its suffix; compute's --format is for stdout only."""
    from attn_entropy_cli import report

    if output is None:
        return None
    if output.suffix.lower().lstrip(".") not in ("", *report.TABLE_FORMATS):
        raise UsageError(
            f"cannot tell the table format of {output} from its suffix. "
            "Name the file .csv, .json or .parquet"
        )
    return report.format_from_suffix(output)
