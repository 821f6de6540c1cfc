"""Observing attention during a forward pass, without changing what the model computes.

Two mechanisms, chosen per attention module by its `AttentionSite`:

- `probs=None`: the module computes attention through
  `torch.nn.functional.scaled_dot_product_attention` (SDPA). Every SDPA call made while the
  module runs is intercepted, its entropy computed from q, k, the mask, `is_causal`, `scale`
  and the grouped-query layout, and the original call runs unchanged.
- `probs=<WeightsHook>`: the module can return per-head probabilities itself
  (`torch.nn.MultiheadAttention`, EOLE's hand-written CPU attention). The hook asks for them
  for the duration of the call and gives the caller back the output it expected.

Usage:

    with capture_attention(model, sites) as capture:
        for batch in batches:
            capture.run(lambda: adapter.forward(batch), batch.query_masks)
    sums = capture.sums  # {(attn_type, layer): EntropySums}
"""

from __future__ import annotations

from attn_entropy_cli.capture.session import AttentionCapture, capture_attention
from attn_entropy_cli.capture.sites import AttentionSite, WeightsHook

__all__ = ["AttentionCapture", "AttentionSite", "WeightsHook", "capture_attention"]
