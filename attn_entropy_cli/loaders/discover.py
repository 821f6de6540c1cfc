"""Finding the attention modules of a model by its module tree, for formats without a map."""

from __future__ import annotations

import re

import torch

from attn_entropy_cli.capture.hooks import MultiheadAttentionWeights
from attn_entropy_cli.capture.sites import AttentionSite

# names of cross-attention modules in Hugging Face models (BART, GPT-2, T5, Whisper...)
CROSS_NAMES = ("encoder_attn", "crossattention", "EncDecAttention", "cross_attn")
NUMBER = re.compile(r"^\d+$")


def is_attention(module: torch.nn.Module) -> bool:
    """True for torch's MultiheadAttention and for classes named `...Attention`."""
    return isinstance(module, torch.nn.MultiheadAttention) or type(module).__name__.endswith(
        "Attention"
    )


def attention_type(name: str, encoder_decoder: bool) -> tuple[str, str]:
    """(attn_type, query side) of a module from its dotted name."""
    parts = name.split(".")
    if not encoder_decoder:
        return "self", "src"
    if any(part in CROSS_NAMES for part in parts):
        return "context", "tgt"
    if "encoder" in parts:
        return "enc_self", "src"
    return "self", "tgt"


def discover_sites(model: torch.nn.Module, encoder_decoder: bool = False) -> list[AttentionSite]:
    """The innermost attention modules of `model`, numbered by layer within each type.

    Limitations: a module counts as attention by its class name (`...Attention`) or as
    `torch.nn.MultiheadAttention`; the layer order is the order of the numbers in the names.
    """
    found = [(name, module) for name, module in model.named_modules() if is_attention(module)]
    names = [name for name, _ in found]
    innermost = [
        (name, module)
        for name, module in found
        if not any(other.startswith(name + ".") for other in names if other != name)
        and (name != "" or len(found) == 1)
    ]
    by_type: dict[str, list[tuple[tuple[int, ...], str, torch.nn.Module, str]]] = {}
    for name, module in innermost:
        attn_type, side = attention_type(name, encoder_decoder)
        order = tuple(int(part) for part in name.split(".") if NUMBER.match(part))
        by_type.setdefault(attn_type, []).append((order, name, module, side))
    sites = []
    for attn_type, entries in by_type.items():
        for layer, (_, name, module, side) in enumerate(sorted(entries, key=lambda e: e[:2])):
            probs = (
                MultiheadAttentionWeights()
                if isinstance(module, torch.nn.MultiheadAttention)
                else None
            )
            sites.append(
                AttentionSite(module, name or type(module).__name__, attn_type, layer, side, probs)
            )
    return sites
