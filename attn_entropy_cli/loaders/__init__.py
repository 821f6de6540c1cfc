"""Checkpoint formats: detect which one a path holds and open it through its adapter.

Each format is a `CheckpointAdapter` subclass (see `loaders.base`) in its own module, named
here by import path so that an optional package is imported only when its format is used.
"""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path

from attn_entropy_cli.errors import InputError, UsageError
from attn_entropy_cli.loaders.base import CheckpointAdapter, LoadOptions, load_torch_file

# format name (what --format-hint takes) -> "module:class"; detection tries them in this order
FORMATS = {
    "eole": "attn_entropy_cli.loaders.eole:EoleAdapter",
    "hf": "attn_entropy_cli.loaders.hf:HFAdapter",
    "nanogpt": "attn_entropy_cli.loaders.nanogpt:NanoGPTAdapter",
    "pickle": "attn_entropy_cli.loaders.pickled:PickledModuleAdapter",
    "factory": "attn_entropy_cli.loaders.factory:FactoryAdapter",
}
# formats that are chosen by an option only, never detected
NOT_DETECTED = ("pickle", "factory")


def adapter_class(name: str) -> type[CheckpointAdapter] | None:
    """The adapter class of a format, or None when its module is not part of this install."""
    module_name, class_name = FORMATS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            return None
        raise
    return getattr(module, class_name)


def detect_format(path: Path, options: LoadOptions) -> str:
    """The name of the format `path` holds, judged by its content."""
    for name in FORMATS:
        if name in NOT_DETECTED:
            continue
        cls = adapter_class(name)
        if cls is not None and cls.detect(path):
            return name
    if path.is_file() and zipfile.is_zipfile(path):
        # a torch file no adapter recognised: refuse pickled code by naming the option
        import torch

        content = load_torch_file(path, options.unsafe_load_pickle)
        if isinstance(content, torch.nn.Module):
            return "pickle"
        if isinstance(content, dict) and "model_args" in content:
            return "nanogpt"
    detected = ", ".join(n for n in FORMATS if n not in NOT_DETECTED)
    raise InputError(
        f"cannot tell the checkpoint format of {path} (tried {detected}). "
        "Pass --format-hint, or --factory module:function for other models"
    )


def open_checkpoint(path: Path, options: LoadOptions) -> CheckpointAdapter:
    """Load a checkpoint through the adapter of its format (forced or detected)."""
    path = Path(path)
    if options.factory is not None:
        name = "factory"
    elif options.format_hint is not None:
        name = options.format_hint
        if name not in FORMATS:
            raise UsageError(f"unknown --format-hint {name!r}. Use one of {', '.join(FORMATS)}")
    else:
        if not path.exists():
            raise UsageError(f"checkpoint {path} does not exist. Check the path")
        name = detect_format(path, options)
    cls = adapter_class(name)
    if cls is None:
        raise UsageError(
            f"the {name} format is not available in this install. "
            "Update attnent, or use --factory module:function"
        )
    if not path.exists() and name != "factory":
        raise UsageError(f"checkpoint {path} does not exist. Check the path")
    return cls.load(path, options)
