"""A whole pickled `nn.Module`, only behind --unsafe-load-pickle (it runs code in the file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from attn_entropy_cli.errors import InputError, UsageError
from attn_entropy_cli.loaders.base import UNSAFE_PICKLE_OPTION, LoadOptions, load_torch_file
from attn_entropy_cli.loaders.factory import GenericAdapter
from attn_entropy_cli.loaders.nanogpt import HFTokenizer


@dataclass
class PickledModuleAdapter(GenericAdapter):
    """`torch.save(model)` files, tokenised with --tokenizer."""

    format_name = "pickle"
    description = "pickled model"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> PickledModuleAdapter:
        """Unpickle the module (allowed explicitly) and pair it with --tokenizer."""
        if not options.unsafe_load_pickle:
            raise UsageError(
                f"--format-hint pickle runs code stored in {path}. If you trust the file, "
                f"add {UNSAFE_PICKLE_OPTION}"
            )
        if options.tokenizer is None:
            raise UsageError(f"a pickled model has no tokenizer. Pass --tokenizer for {path}")
        model = load_torch_file(Path(path), unsafe_load_pickle=True)
        if not isinstance(model, torch.nn.Module):
            raise InputError(
                f"{path} holds a {type(model).__name__}, not a pickled torch.nn.Module. "
                "Pass another --format-hint"
            )
        return cls.from_model(path, model, HFTokenizer(options.tokenizer), options)
