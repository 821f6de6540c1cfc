"""Which module of a model is which attention, and how to observe it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


class WeightsHook(Protocol):
    """How to get per-head attention probabilities out of one kind of attention module.

    The capture calls `request` from a forward pre-hook and `extract` from the forward hook of
    the same call. A hook object may keep per-call state between the two (calls of one module
    do not nest).
    """

    def request(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Return the (args, kwargs) that make `module` return per-head probabilities."""
        ...

    def extract(
        self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """Split the module's output into (probs, key_mask, output the caller expected).

        `probs` is (batch, heads, q, k), never averaged over heads. `key_mask` is None, or a
        bool tensor broadcastable to probs, True where the query may attend to the key; when
        None, keys with probability exactly 0 are taken as masked.
        """
        ...


@dataclass(frozen=True)
class AttentionSite:
    """One attention module of a model and where it sits: (attn_type, layer)."""

    module: torch.nn.Module  # the module whose forward computes one attention
    name: str  # its dotted name in the model, for error messages
    attn_type: str  # "enc_self", "self" or "context"
    layer: int  # 0-based layer index within its attn_type
    query_side: str = "src"  # which Batch.query_masks entry marks its real query positions
    probs: WeightsHook | None = None  # None: observed through its SDPA call
