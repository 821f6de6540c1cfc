"""The contract every checkpoint format implements: a path in, an observable model out.

A format is one `CheckpointAdapter` subclass in its own module of `attn_entropy_cli.loaders`,
listed in `loaders.FORMATS`. `compute` uses an adapter like this:

    adapter = AdapterClass.load(path, options)          # model in eval mode, on its device
    sites = adapter.sites()                              # which module is which attention
    tokens, cut = adapter.encode(example, max_length)    # once per example of the slice
    batch = adapter.collate([tokens, ...]).to(device)    # padded tensors + query masks
    with capture_attention(adapter.model, sites) as capture:
        capture.run(lambda: adapter.forward(batch), batch.query_masks)

Sides: an encoder-only or decoder-only model reads one text per example, the side "src". An
encoder-decoder model reads "src" (encoder) and "tgt" (decoder, teacher-forced). Each
`AttentionSite.query_side` names the side whose query mask marks its real query rows:
`enc_self` -> "src", `self` -> "src" or "tgt", `context` -> "tgt".

Attention that does not go through torch's SDPA (EOLE's hand-written CPU attention,
`torch.nn.MultiheadAttention`) is observed through a `capture.WeightsHook` set as the site's
`probs`: the hook asks the module for per-head probabilities during the call (EOLE:
`return_attn=True`) and hands the caller back the output it expected. See
`capture.hooks.MultiheadAttentionWeights` for a complete example.

Checks that `compute` makes around an adapter, so adapters need not: the length limit
(min of --max-length and `max_positions`, with one warning), token ids below `vocab_size`,
--types/--layers against `sites()`, and one attention per site and forward pass.
"""

from __future__ import annotations

import pickle
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from attn_entropy_cli.capture.sites import AttentionSite
from attn_entropy_cli.errors import InputError, UsageError

# the option that lets a checkpoint run pickled code; named in every refusal
UNSAFE_PICKLE_OPTION = "--unsafe-load-pickle"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# checkpoint names that carry a step: EOLE step_N, Hugging Face checkpoint-N, ckpt_N.pt ...
NAMED_STEP = re.compile(r"(?:step|checkpoint|ckpt|iter)[-_]?(\d+)(?:\.pt)?$")
# folders that are one checkpoint of a run: EOLE step_N, Hugging Face checkpoint-N
CHECKPOINT_FOLDER = re.compile(r"^(?:step_|checkpoint-)(\d+)$")


def named_step(path: Path | str) -> int | None:
    """The step a checkpoint's name carries (step_400, checkpoint-1000, ckpt_2000.pt), or None."""
    match = NAMED_STEP.search(Path(path).name)
    return int(match.group(1)) if match else None


def check_dtype(dtype: str) -> torch.dtype:
    """The torch dtype --dtype names; anything else is refused."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}. Use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass(frozen=True)
class Example:
    """One example of the data slice: a source text and, for encoder-decoder models, a target."""

    src: str
    tgt: str | None = None  # None for encoder-only and decoder-only models
    line: int = 0  # 0-based line of the data file it came from, for error messages


# side ("src" or "tgt") -> the token ids of one example, special tokens included
Tokens = dict[str, list[int]]


@dataclass
class Batch:
    """Padded model inputs for a few examples, and which query positions are real."""

    inputs: dict[str, Any]  # keyword arguments of `adapter.forward`; tensors are (batch, seq)
    query_masks: dict[str, torch.Tensor]  # side -> (batch, seq) bool, True at real tokens
    size: int = 0  # number of examples

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on `device`."""
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.inputs.items()}
        masks = {k: v.to(device) for k, v in self.query_masks.items()}
        return Batch(moved, masks, self.size)


@dataclass(frozen=True)
class LoadOptions:
    """What the user said about opening a checkpoint; every adapter receives all of it."""

    format_hint: str | None = None  # a key of loaders.FORMATS; None: detect from the content
    tokenizer: Path | None = None  # a Hugging Face tokenizer folder, for formats without one
    factory: str | None = None  # "module:function" returning (model, tokenizer callable)
    unsafe_load_pickle: bool = False  # allow torch.load(weights_only=False): runs pickled code
    device: str = "cpu"  # "cpu" or "cuda", already resolved from "auto" and checked
    dtype: str = "float32"  # a key of DTYPES; entropy is computed in float32 regardless


@dataclass
class CheckpointAdapter(ABC):
    """One loaded checkpoint: an eval-mode model, its tokenisation and its attention sites.

    Subclasses set `format_name` and `description`, and implement `detect`, `load`, `sites`,
    `encode` and `collate`; `forward` runs `model(**batch.inputs)` unless overridden.
    """

    format_name: ClassVar[str]  # the name `--format-hint` takes, e.g. "nanogpt"
    description: ClassVar[str]  # a few words for error messages, e.g. "nanoGPT ckpt.pt"

    path: Path  # the checkpoint as the user named it
    model: torch.nn.Module  # in eval mode, on options.device, in options.dtype
    attn_types: tuple[str, ...]  # the attention types it has, e.g. ("enc_self", "self", "context")
    sides: tuple[str, ...] = ("src",)  # ("src",), or ("src", "tgt") for encoder-decoder models
    step: int | None = None  # the training step the checkpoint was saved at, when known
    max_positions: int | None = None  # longest sequence per side the model accepts; None: any
    vocab_size: int | None = None  # size of the embedding table; ids must be below it
    batch_limit: int | None = None  # most examples per forward (1: the model takes no mask)
    extras: dict[str, Any] = field(default_factory=dict)  # anything format-specific

    @classmethod
    @abstractmethod
    def detect(cls, path: Path) -> bool:
        """True when `path` holds this format, judged by content (cheap; no model built).

        Must not import optional packages (transformers, eole) and must not raise for a path
        of another format: return False instead.
        """

    @classmethod
    @abstractmethod
    def load(cls, path: Path, options: LoadOptions) -> CheckpointAdapter:
        """Build the model from `path` in eval mode on `options.device` in `options.dtype`.

        Raises UsageError when an optional package is missing (name the pip extra) and
        InputError when the contents cannot be used (name the file and what is wrong).
        """

    @abstractmethod
    def sites(self) -> list[AttentionSite]:
        """Every attention module with its (attn_type, layer), layers 0-based per attn_type.

        Each site's module must compute exactly one attention per forward pass; the capture
        stops with an error naming the module otherwise.
        """

    @abstractmethod
    def encode(self, example: Example, max_length: int | None) -> tuple[Tokens, bool]:
        """Token ids per side of one example, each side cut to `max_length` tokens.

        Returns (tokens, cut), `cut` True when any side was shortened. Raise InputError naming
        `example.line` when the text cannot be tokenised (a character outside a vocabulary).
        """

    @abstractmethod
    def collate(self, items: Sequence[Tokens]) -> Batch:
        """Pad encoded examples into one CPU batch, with a (batch, seq) query mask per side."""

    def forward(self, batch: Batch) -> None:
        """Run the model on a batch; the capture observes the attention it computes."""
        self.model(**batch.inputs)


def load_torch_file(path: Path, unsafe_load_pickle: bool = False, mmap: bool = False) -> Any:
    """Open a `torch.save` file on the CPU, without running pickled code unless allowed.

    This is the one place attnent calls `torch.load`; `mmap` maps tensors instead of reading
    them (cheap detection).
    """
    try:
        return torch.load(
            path, map_location="cpu", weights_only=not unsafe_load_pickle, mmap=mmap or None
        )
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unpickling failed"
        raise InputError(
            f"{path} needs pickled code to load ({first[:160]}). If you trust the file, "
            f"pass {UNSAFE_PICKLE_OPTION}; it runs code stored in the file"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise InputError(
            f"cannot read {path} as a PyTorch checkpoint ({error}). "
            "Check the path, or pass --format-hint"
        ) from None


def place_model(model: torch.nn.Module, options: LoadOptions) -> torch.nn.Module:
    """Move a model to the requested device and dtype and put it in eval mode."""
    return model.to(device=options.device, dtype=check_dtype(options.dtype)).eval()


def pad_side(rows: Sequence[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (batch, seq), padded on the left or the right."""
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = True
    return ids, mask
