"""Weights hooks for attention modules that report per-head probabilities themselves."""

from __future__ import annotations

from typing import Any

import torch

# the parameters of `nn.MultiheadAttention.forward`, in order
MHA_PARAMETERS = (
    "query",
    "key",
    "value",
    "key_padding_mask",
    "need_weights",
    "attn_mask",
    "average_attn_weights",
    "is_causal",
)


class MultiheadAttentionWeights:
    """Per-head weights of `torch.nn.MultiheadAttention`, never the head average.

    The call is made with `need_weights=True, average_attn_weights=False`; the caller gets
    back what it asked for (None, the head average, or per-head weights).

    Limitations: the weights come from MultiheadAttention's own softmax in the model's dtype,
    so a float16 or bfloat16 model's entropy carries that rounding.
    """

    def __init__(self) -> None:
        self.asked: list[tuple[bool, bool]] = []  # (need_weights, average) of running calls

    def request(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Ask for per-head weights, remembering what the caller asked for."""
        kwargs = {**dict(zip(MHA_PARAMETERS[3:], args[3:], strict=False)), **kwargs}
        need = bool(kwargs.get("need_weights", True))
        average = bool(kwargs.get("average_attn_weights", True))
        self.asked.append((need, average))
        kwargs.update(need_weights=True, average_attn_weights=False)
        return tuple(args[:3]), kwargs

    def extract(
        self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
        """Split (output, per-head weights) into probs and what the caller expected."""
        need, average = self.asked.pop()
        attn_output, weights = output
        if weights.dim() == 3:  # an unbatched call: (heads, q, k)
            weights = weights.unsqueeze(0)
        probs = weights  # (batch, heads, q, k)
        if not need:
            returned = None
        elif average:
            returned = weights.mean(dim=1)
            returned = returned.squeeze(0) if output[1].dim() == 3 else returned
        else:
            returned = output[1]
        return probs, None, (attn_output, returned)
