"""Any model, through the user's `module:function` that returns (model, tokenizer)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from attn_entropy_cli.capture.sites import AttentionSite
from attn_entropy_cli.errors import InputError, UsageError
from attn_entropy_cli.loaders.base import (
    Batch,
    CheckpointAdapter,
    Example,
    LoadOptions,
    Tokens,
    pad_side,
    place_model,
)
from attn_entropy_cli.loaders.discover import discover_sites


def import_factory(spec: str) -> Callable:
    """The function named by `module:function` or `path/to/file.py:function`."""
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        raise UsageError(f"--factory {spec!r} is not module:function. Example: mymodels:load")
    try:
        if module_name.endswith(".py"):
            location = importlib.util.spec_from_file_location("attnent_factory", module_name)
            if location is None or not Path(module_name).is_file():
                raise ModuleNotFoundError(module_name)
            module = importlib.util.module_from_spec(location)
            location.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise UsageError(
            f"--factory module {module_name!r} cannot be imported ({error}). "
            "Check its name, or give a path to a .py file"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UsageError(f"--factory: {module_name} has no function {function_name!r}. Fix it")
    return function


def as_ids(tokenizer: Callable, text: str) -> list[int]:
    """Token ids from a callable returning ids, or a Hugging Face-style encoding."""
    ids = tokenizer(text)
    if isinstance(ids, Mapping):
        ids = ids["input_ids"]
    if torch.is_tensor(ids):
        ids = ids.reshape(-1).tolist()
    return [int(i) for i in ids]


def input_vocabulary(model: torch.nn.Module) -> int | None:
    """Rows of the token embedding table: `get_input_embeddings()`, else the only Embedding.

    Limitations: with several `nn.Embedding`s (tokens, positions, segments) and no
    `get_input_embeddings`, the largest table is taken, so an id beyond the token table but
    below a larger position table passes this check and fails inside the model.
    """
    get = getattr(model, "get_input_embeddings", None)
    table = get() if callable(get) else None
    if isinstance(table, torch.nn.Embedding):
        return table.num_embeddings
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    return max(sizes) if sizes else None


@dataclass
class GenericAdapter(CheckpointAdapter):
    """A decoder-only or encoder-only model called as `model(ids)` or with `attention_mask`.

    Limitations: a model whose forward takes no `attention_mask` runs one example per
    forward pass, so padding never reaches its attention.
    """

    format_name = "generic"
    description = "model"

    @classmethod
    def detect(cls, path: Path) -> bool:
        """Never detected: chosen by an option."""
        return False

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> GenericAdapter:
        raise NotImplementedError

    @classmethod
    def from_model(cls, path, model, tokenizer, options: LoadOptions) -> GenericAdapter:
        """Wrap a module and a `text -> ids` callable."""
        if not isinstance(model, torch.nn.Module):
            raise InputError(
                f"the model for {path} is a {type(model).__name__}, not a torch.nn.Module. "
                "Return (model, tokenizer) with a torch module"
            )
        try:
            takes_mask = "attention_mask" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            takes_mask = False
        adapter = cls(
            path=Path(path),
            model=place_model(model, options),
            attn_types=("self",),
            vocab_size=input_vocabulary(model),
            batch_limit=None if takes_mask else 1,
            extras={"tokenize": tokenizer, "takes_mask": takes_mask},
        )
        if not adapter.sites():
            raise InputError(
                f"found no attention module in the model for {path}. attnent looks for "
                "torch.nn.MultiheadAttention and classes named ...Attention"
            )
        return adapter

    def sites(self) -> list[AttentionSite]:
        """The innermost attention modules, all of type `self`."""
        return discover_sites(self.model, encoder_decoder=False)

    def encode(self, example: Example, max_length: int | None) -> tuple[Tokens, bool]:
        """The tokenizer's ids, cut to max_length."""
        ids = as_ids(self.extras["tokenize"], example.src)
        cut = max_length is not None and len(ids) > max_length
        return {"src": ids[:max_length] if cut else ids}, cut

    def collate(self, items: Sequence[Tokens]) -> Batch:
        """Right-pad with 0; the mask goes to the model when it takes one."""
        ids, mask = pad_side([item["src"] for item in items], pad=0, left=False)
        inputs = {"ids": ids}
        if self.extras["takes_mask"]:
            inputs["attention_mask"] = mask.long()
        return Batch(inputs, {"src": mask}, len(items))

    def forward(self, batch: Batch) -> None:
        """`model(ids)`, plus `attention_mask=` when the model takes one."""
        inputs = dict(batch.inputs)
        self.model(inputs.pop("ids"), **inputs)


@dataclass
class FactoryAdapter(GenericAdapter):
    """The model and tokenizer a user's function builds from the checkpoint path."""

    format_name = "factory"
    description = "--factory model"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> FactoryAdapter:
        """Call the factory with the path and wrap what it returns."""
        function = import_factory(options.factory or "")
        result = function(str(path))
        if not isinstance(result, tuple) or len(result) != 2:
            raise InputError(
                f"--factory {options.factory} returned {type(result).__name__}, not "
                "(model, tokenizer). Return a pair"
            )
        model, tokenizer = result
        return cls.from_model(path, model, tokenizer, options)
