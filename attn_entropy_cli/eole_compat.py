"""The number EOLE's validation would log as `valid/attention_entropy`, and why it differs.

EOLE 0.6.4 computes it like this (all cited from its source):

- `trainer.py:Trainer.validate` runs the model in eval mode (no dropout) on validation batches
  and passes its `attns` dict to the loss; `utils/loss.py:LossCompute._compute_attention_entropy`
  calls `utils/attention_entropy.py:compute_batch_attention_entropy` with the training options
  `attention_entropy_types`, `attention_entropy_layers`, `attention_entropy_aggregation`, and
  returns 0.0 when `log_attention_entropy` is false, no weights came back, or anything raised.
- The dict holds one tensor, `attns["std"]` (`decoders/transformer.py:_forward_eager`): head 0
  of the last decoder layer, (batch, q, k), cross-attention in an encoder-decoder, self-attention
  in a decoder-only model. On a GPU, SDPA returns no weights and the log says 0.000.
- `compute_attention_entropy`: p = clamp(p, min=1e-8) (so masked keys count as 1e-8 each),
  H = -sum_k p log(p + 1e-8), mean over every query row of the padded batch, including the rows
  of padding; `aggregate_attention_entropy` takes the mean over the batch.
- `LossCompute._stats` and `utils/statistics.py:Statistics` weight each batch by its number of
  sentences; batches come from `inputters/dynamic_iterator.py:DynamicDatasetIter` with the
  validation batch size and type: buckets of `bucket_size` examples in file order, each sorted
  by (source length, target length), cut into batches by `batch_iter`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from attn_entropy_cli.errors import InputError, UsageError
from attn_entropy_cli.loaders.base import Example
from attn_entropy_cli.training_config import EntropyConfig

EPS = 1e-8  # EOLE's clamp and log offset
BATCH_TYPES = ("sents", "tokens")


@dataclass(frozen=True)
class CompatOptions:
    """How to batch for the EOLE-compatible number; None takes the checkpoint's own setting."""

    batch_size: int | None = None  # validation batch size; None: training.valid_batch_size
    batch_type: str | None = None  # "sents" or "tokens"; None: training.batch_type
    entropy: EntropyConfig = field(default_factory=EntropyConfig)  # types/layers/aggregation
    max_length: int | None = None  # tokens per side, as compute's --max-length; None: all


@dataclass(frozen=True)
class CompatResult:
    """EOLE's logged number next to attnent's, with the difference taken apart."""

    eole: float  # what EOLE's validation logs as valid/attention_entropy for this data
    attnent: float  # attnent's entropy of the same head: real query rows, token-weighted
    clamp: float  # part of eole - attnent from clamping at 1e-8 (masked keys add ~1.8e-7 each)
    padded_rows: float  # part from averaging in the query rows of padding
    sentence_weighting: float  # part from averaging per sentence first, then over sentences
    std: tuple[str, int, int]  # (attn_type, layer, head) of the tensor EOLE measures
    n_sentences: int  # sentences measured
    n_batches: int  # batches, formed as EOLE's validation forms them
    batch_size: int  # the validation batch size used
    batch_type: str  # "sents" or "tokens"
    notes: tuple[str, ...] = ()  # when EOLE would log 0.000, or measure something else

    unit: str = "nats"  # of every entropy field; "bits" after `in_bits`

    @property
    def difference(self) -> float:
        """eole - attnent; equals clamp + padded_rows + sentence_weighting."""
        return self.eole - self.attnent

    def in_bits(self) -> CompatResult:
        """The same result with every entropy divided by ln 2."""
        names = ("eole", "attnent", "clamp", "padded_rows", "sentence_weighting")
        values = {name: getattr(self, name) / math.log(2) for name in names}
        return replace(self, **values, unit="bits")


def eole_compatible_entropy(
    adapter, examples: Sequence[Example], options: CompatOptions | None = None
) -> CompatResult:
    """What EOLE's validation would log as attention entropy for `examples`, and attnent's.

    `adapter` is a loaded `EoleAdapter`; the model runs once per batch, batched as EOLE's
    validation batches (see the module docstring).

    Limitations: mirrors validation with at most one data worker (`num_workers` 0 or 1); with
    more, EOLE deals the validation lines out to the workers and its batches differ.
    """
    options = options or CompatOptions()
    std, batch_size, batch_type = check_compat(adapter, options)
    if not examples:
        raise InputError("the data slice is empty. Give at least one example")

    from eole.utils.attention_entropy import compute_batch_attention_entropy

    from attn_entropy_cli.loaders.eole import weights_returned

    training = adapter.config.get("training") or {}
    limit = options.max_length
    if adapter.max_positions is not None and (limit is None or adapter.max_positions < limit):
        limit = adapter.max_positions
    tokens = [adapter.encode(example, limit)[0] for example in examples]
    side = std_query_side(adapter)
    selection = options.entropy

    # one forward per batch; EOLE's own function on EOLE's own attns dict
    device = next(adapter.model.parameters()).device
    totals = SentenceTotals()
    logged = 0.0
    with torch.inference_mode(), weights_returned(adapter.model):
        for indices in validation_batches(tokens, batch_size, batch_type, training):
            batch = adapter.collate([tokens[i] for i in indices]).to(device)
            attns = adapter.forward(batch).attns
            value = compute_batch_attention_entropy(
                attns,
                attention_types=list(selection.types) if selection.types is not None else None,
                layer_indices=list(selection.layers) if selection.layers is not None else None,
                aggregation_method=selection.aggregation or "mean",
            )
            logged += value * len(indices)
            totals.add(attns["std"], batch.query_masks[side])

    eole = logged / totals.n_sentences
    return CompatResult(
        eole=eole,
        attnent=totals.token_mean(),
        clamp=totals.clamped_mean() - totals.exact_mean(),
        padded_rows=totals.exact_mean() - totals.real_rows_sentence_mean(),
        sentence_weighting=totals.real_rows_sentence_mean() - totals.token_mean(),
        std=std,
        n_sentences=totals.n_sentences,
        n_batches=totals.n_batches,
        batch_size=batch_size,
        batch_type=batch_type,
        notes=zero_notes(adapter, selection, eole, totals.clamped_mean(), device),
    )


def check_compat(adapter, options: CompatOptions) -> tuple[tuple[str, int, int], int, str]:
    """(std head, batch size, batch type) of an EOLE adapter; refuses anything else, cheaply."""
    if getattr(adapter, "format_name", None) != "eole":
        raise UsageError(
            f"--eole-compat reproduces EOLE's logged number, and {adapter.path} is a "
            f"{adapter.description}, not an EOLE model folder. Drop --eole-compat"
        )
    std = adapter.extras.get("std")
    if std is None:
        raise InputError(
            f"{adapter.path} has no decoder, so EOLE logs no attention entropy for it. "
            "Drop --eole-compat"
        )
    training = adapter.config.get("training") or {}
    return (std, *batching(training, options, adapter.path))


def compute_eole_compat(
    checkpoint: Path, data, load_options, options: CompatOptions | None = None
) -> CompatResult:
    """Open an EOLE checkpoint, read the data slice and compute the EOLE-compatible number.

    Args:
        data: a `data.DataOptions` naming the slice (the same one `compute` reads).
        load_options: a `loaders.base.LoadOptions`; its device may be "auto".
    """
    from dataclasses import replace

    from attn_entropy_cli.compute import resolve_device
    from attn_entropy_cli.data import read_examples
    from attn_entropy_cli.loaders import open_checkpoint

    load_options = replace(load_options, device=resolve_device(load_options.device))
    adapter = open_checkpoint(checkpoint, load_options)
    return eole_compatible_entropy(adapter, read_examples(data), options)


def batching(training: dict, options: CompatOptions, path: Path | None = None) -> tuple[int, str]:
    """(batch size, batch type) of EOLE's validation: the options, else the checkpoint's."""
    check_batching(options)
    config = f"{path}/config.json" if path is not None else "the checkpoint's config"
    batch_size = options.batch_size
    if batch_size is None:
        batch_size = training.get("valid_batch_size", 32)  # EOLE's default
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(
                f"valid_batch_size in {config} is {batch_size!r}, not a positive integer. "
                "Pass --eole-batch-size N"
            )
    batch_type = options.batch_type
    if batch_type is None:
        batch_type = training.get("batch_type", "sents")
        if batch_type not in BATCH_TYPES:
            raise InputError(
                f"batch_type in {config} is {batch_type!r}, not sents or tokens. "
                "Pass --eole-batch-type sents or tokens"
            )
    return batch_size, batch_type


def check_batching(options: CompatOptions) -> None:
    """Refuse a given --eole-batch-size below 1 or an --eole-batch-type not sents or tokens."""
    if options.batch_type is not None and options.batch_type not in BATCH_TYPES:
        raise UsageError(
            f"unknown --eole-batch-type {options.batch_type!r}. Use one of {', '.join(BATCH_TYPES)}"
        )
    if options.batch_size is not None and options.batch_size < 1:
        raise UsageError(f"--eole-batch-size {options.batch_size} is below 1. Use 1 or more")


def validation_batches(
    tokens: Sequence[dict[str, list[int]]], batch_size: int, batch_type: str, training: dict
) -> Iterator[list[int]]:
    """Indices of the examples in each validation batch, in EOLE's order.

    Mirrors `DynamicDatasetIter._bucketing`, `_iter_text` and `batch_iter` for the VALID task:
    buckets of `bucket_size` examples (growing from `bucket_size_init` by
    `bucket_size_increment`), each sorted by (source length, target length), batched by
    sentence or token count (sentences times the longest side), with no shuffling.
    """
    full = training.get("bucket_size", 262144)
    size = training.get("bucket_size_init", -1)
    size = size if size > 0 else full
    increment = training.get("bucket_size_increment", 0)
    multiple = training.get("batch_size_multiple") or 1

    start = 0
    while start < len(tokens):
        bucket = list(range(start, min(start + size, len(tokens))))
        start += len(bucket)
        if size < full:
            size = min(size + increment, full)
        bucket.sort(key=lambda i: sort_key(tokens[i]))
        yield from cut_batches(bucket, tokens, batch_size, batch_type, multiple)


def cut_batches(
    order: list[int], tokens: Sequence[dict], batch_size: int, batch_type: str, multiple: int
) -> Iterator[list[int]]:
    """`DynamicDatasetIter.batch_iter`: fill until the size is reached, keep the overflow."""
    batch: list[int] = []
    longest = 0
    for index in order:
        batch.append(index)
        longest = max(longest, max_side_length(tokens[index]))
        current = len(batch) if batch_type == "sents" else len(batch) * longest
        if current < batch_size:
            continue
        overflow = 1 if current > batch_size else 0
        if multiple > 1:
            overflow += (len(batch) - overflow) % multiple
        if overflow == 0:
            yield batch
            batch, longest = [], 0
        elif overflow < len(batch):
            yield batch[:-overflow]
            batch = batch[-overflow:]
            longest = max(max_side_length(tokens[i]) for i in batch)
    if batch:
        yield batch


def sort_key(tokens: dict[str, list[int]]) -> tuple[int, ...]:
    """`inputters/text_utils.py:text_sort_key`: (source length, target length)."""
    return tuple(len(tokens[side]) for side in ("src", "tgt") if side in tokens)


def max_side_length(tokens: dict[str, list[int]]) -> int:
    """`DynamicDatasetIter._get_max_length`: the longer side of an example."""
    return max(len(ids) for ids in tokens.values())


def std_query_side(adapter) -> str:
    """The side whose query rows the `std` tensor has: the decoder's."""
    return "tgt" if "tgt" in adapter.sides else "src"


class SentenceTotals:
    """Per-sentence sums over `attns["std"]` rows, for the four ways to average them."""

    def __init__(self) -> None:
        self.n_sentences = 0
        self.n_batches = 0
        self.clamped = 0.0  # sum over sentences of the mean clamped H over all rows
        self.exact = 0.0  # the same without the clamp
        self.real_sentence = 0.0  # sum over sentences of the mean exact H over real rows
        self.real_total = 0.0  # sum of exact H over all real rows
        self.real_rows = 0

    def add(self, std: torch.Tensor | None, query_valid: torch.Tensor) -> None:
        """Add one batch: std (batch, q, k) probabilities, query_valid (batch, q) bool."""
        if std is None:
            raise InputError(
                "EOLE returned no attns['std'] for this model (its last decoder layer has no "
                "softmax attention). Drop --eole-compat"
            )
        p = std.float()
        clamped = p.clamp(min=EPS)
        h_clamped = -(clamped * torch.log(clamped + EPS)).sum(-1)  # (batch, q)
        h_exact = -torch.special.xlogy(p, p).sum(-1)  # (batch, q)
        valid = query_valid[:, : p.shape[1]].to(p.device)
        rows = valid.sum(-1).clamp(min=1)  # (batch,)

        self.n_sentences += p.shape[0]
        self.n_batches += 1
        self.clamped += h_clamped.mean(-1).sum().item()
        self.exact += h_exact.mean(-1).sum().item()
        self.real_sentence += (torch.where(valid, h_exact, 0.0).sum(-1) / rows).sum().item()
        self.real_total += torch.where(valid, h_exact, 0.0).sum().item()
        self.real_rows += int(valid.sum().item())

    def clamped_mean(self) -> float:
        """EOLE's formula, sentence-weighted."""
        return self.clamped / self.n_sentences

    def exact_mean(self) -> float:
        """Unclamped entropy, padded rows included, sentence-weighted."""
        return self.exact / self.n_sentences

    def real_rows_sentence_mean(self) -> float:
        """Unclamped entropy of real rows, averaged per sentence, then over sentences."""
        return self.real_sentence / self.n_sentences

    def token_mean(self) -> float:
        """attnent's definition: the mean over every real query row."""
        return self.real_total / self.real_rows if self.real_rows else math.nan


def zero_notes(adapter, selection: EntropyConfig, eole: float, formula: float, device) -> tuple:
    """Plain-words notes on when EOLE's log would not show the number computed here."""
    notes = []
    if selection.log_attention_entropy is False:
        notes.append(
            "log_attention_entropy is false in the training config: EOLE logged 0.000; "
            "the value shown is what it logs with the option on"
        )
    if selection.types is not None and "std" not in selection.types:
        notes.append(
            f"attention_entropy_types is {list(selection.types)}: EOLE's attention dict holds "
            "only 'std', so it logged 0.000"
        )
    elif abs(eole - formula) > 1e-4:
        notes.append(f"EOLE's function gave {eole:.6f}, its formula {formula:.6f}")
    if torch.device(device).type != "cpu":
        notes.append(
            "on a GPU, EOLE's training loop gets no weights from SDPA and logs 0.000; "
            "the value shown is what its CPU path computes"
        )
    return tuple(notes)
