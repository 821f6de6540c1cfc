"""Attention entropy on tensors: per-row entropy of one attention call, and running sums.

Everything here is in nats and float32 (float64 for the sums), whatever the model's dtype.
A row is one query position of one sequence in one head; `n_keys` is the number of keys it
may attend to. Rows with no key are dropped; masked keys have probability 0 and add nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# additive-mask values at or below this are masked keys: Hugging Face and EOLE fill masks with
# finfo.min (-3.4e38 in float32, -65504 in float16), others with -1e9 or -1e4; exp(-1e4) is 0
MASKED_SCORE = -1e4
# score-matrix elements per query chunk in the explicit path (64 MiB in float32)
CHUNK_ELEMENTS = 1 << 24


def probs_entropy(
    probs: torch.Tensor, key_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and key count of each row of attention probabilities.

    Args:
        probs: (..., q, k) probabilities, each row summing to 1 over its keys.
        key_mask: None, or bool broadcastable to probs, True where a key may be attended;
            when None, keys with probability exactly 0 are taken as masked.

    Returns:
        (entropy, n_keys), each (..., q); rows that are not finite get n_keys 0.

    Limitations: without a key_mask, a key whose probability underflowed to exactly 0 is
    counted as masked, which lowers n_keys (and raises the normalised entropy) of that row.
    """
    probs = probs.float()
    entropy = -torch.special.xlogy(probs, probs).sum(-1)  # (..., q)
    keys = probs > 0 if key_mask is None else key_mask.expand_as(probs)
    n_keys = keys.sum(-1)
    n_keys = torch.where(torch.isfinite(entropy), n_keys, 0)
    return entropy, n_keys


def scores_entropy(scores: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of `softmax(scores)`; scores (..., q, k), -inf at masked keys."""
    probs = torch.softmax(scores.float(), dim=-1)
    return -torch.special.xlogy(probs, probs).sum(-1)  # (..., q)


def sdpa_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and key count of each row of one `scaled_dot_product_attention` call.

    The rows are those of `softmax(q k^T * scale + mask)`, computed in float32. Grouped-query
    attention (k with fewer heads than q) is expanded as SDPA's `enable_gqa` does.

    Args:
        q: (batch, heads, q, dim) queries.
        k: (batch, kv_heads, k, dim) keys; heads is a multiple of kv_heads.
        attn_mask: None, bool (True attends) or float (added to the scores), broadcastable
            to (batch, heads, q, k).

    Returns:
        (entropy, n_keys), each (batch, heads, q); rows with n_keys 0 hold no meaning.

    Limitations: off the CPU, and with additive masks that are not just 0/masked (ALiBi,
    relative position bias), the scores are materialised a chunk of queries at a time, which
    costs about twice an attention call instead of one. An additive mask value at or below
    -1e4 counts as a masked key (left out of n_keys), so a bias that pushes a key below -1e4
    without meaning to mask it is counted as a mask; its probability, below e^-1e4, is 0 anyway.
    """
    q, k = q.float(), k.float()
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if attn_mask is not None and attn_mask.dim() < 4:
        # SDPA broadcasts a (k,), (q, k) or (heads, q, k) mask from the right
        attn_mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    bias, keep = split_mask(attn_mask)

    # key counts per row: from the mask, or from the causal triangle (top-left aligned)
    batch, heads, n_q, n_k = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    if keep is not None:
        n_keys = keep.sum(-1).expand(batch, heads, n_q)
    elif is_causal:
        rows = torch.arange(1, n_q + 1, device=q.device).clamp(max=n_k)
        n_keys = rows.expand(batch, heads, n_q)
    else:
        n_keys = torch.full((batch, heads, n_q), n_k, device=q.device)

    if q.device.type == "cpu" and bias is None:
        entropy = fused_entropy(q, k, keep, is_causal, scale)
    else:
        entropy = chunked_entropy(q, k, bias, keep, is_causal, scale)
    return entropy, n_keys


def split_mask(
    attn_mask: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Split an SDPA mask into (additive bias, bool keep); only 0s and masked keys: no bias."""
    if attn_mask is None:
        return None, None
    if attn_mask.dtype == torch.bool:
        return None, attn_mask
    keep = attn_mask > MASKED_SCORE  # NaN is masked too
    if bool(((attn_mask == 0) | ~keep).all()):
        return None, keep
    return attn_mask.float(), keep


def fused_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    keep: torch.Tensor | None,
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    """Row entropy as `logsumexp(s) - E_p[s]`, through the fused CPU attention kernel.

    `E_p[s] = scale * q . E_p[k]`, and `E_p[k]` is an attention output whose values are the
    keys, so no (q, k) matrix is materialised. q and k are float32, k has q's heads; keep is
    None or a 4-d bool mask.

    Limitations: the two terms nearly cancel on very peaked rows, so H there carries a float32
    rounding of about 1e-6 times the largest score; it is clamped at 0 from below. The kernel
    takes no bool mask, so a float mask of keep's (broadcast) shape is built.
    """
    # shifting every key by one vector shifts a row's scores by a constant: the entropy is
    # unchanged, and logsumexp and E_p[s] come out smaller, so less precision is lost
    k = k - k.mean(dim=-2, keepdim=True)
    mask = None
    if keep is not None:
        mask = torch.zeros(keep.shape, dtype=q.dtype, device=q.device)
        mask.masked_fill_(~keep, float("-inf"))
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    expected_k, lse = kernel(q, k, k, 0.0, is_causal, attn_mask=mask, scale=scale)
    return (lse - scale * (q * expected_k).sum(-1)).clamp(min=0.0)  # (batch, heads, q)


def chunked_entropy(
    q: torch.Tensor,
    k: torch.Tensor,
    bias: torch.Tensor | None,
    keep: torch.Tensor | None,
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    """Row entropy from explicit scores, a chunk of queries at a time to bound memory."""
    batch, heads, n_q, n_k = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    chunk = max(1, CHUNK_ELEMENTS // max(1, batch * heads * n_k))
    parts = []
    for start in range(0, n_q, chunk):
        stop = min(n_q, start + chunk)
        scores = torch.matmul(q[:, :, start:stop], k.transpose(-1, -2)) * scale  # (b, h, c, k)
        if bias is not None:
            scores = scores + rows_of(bias, start, stop).float()
        if keep is not None:
            scores = scores.masked_fill(~rows_of(keep, start, stop), float("-inf"))
        if is_causal:
            rows = torch.arange(start, stop, device=q.device)[:, None]
            future = torch.arange(n_k, device=q.device)[None, :] > rows  # (c, k)
            scores = scores.masked_fill(future, float("-inf"))
        parts.append(scores_entropy(scores))
    return torch.cat(parts, dim=-1)  # (batch, heads, q)


def rows_of(mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Query rows start:stop of a mask that may broadcast over queries (size 1 there)."""
    return mask if mask.shape[-2] == 1 else mask[..., start:stop, :]


@dataclass
class EntropySums:
    """Running per-head sums of row entropies for one (attn_type, layer)."""

    n_rows: torch.Tensor  # (heads,) int64, rows with at least one key
    total: torch.Tensor  # (heads,) float64, sum of H
    total_sq: torch.Tensor  # (heads,) float64, sum of H^2
    normalized_total: torch.Tensor  # (heads,) float64, sum of H / ln(n_keys)
    n_normalized: torch.Tensor  # (heads,) int64, rows with at least two keys

    @classmethod
    def zeros(cls, heads: int) -> EntropySums:
        """Empty sums for `heads` heads, on the CPU."""
        floats = [torch.zeros(heads, dtype=torch.float64) for _ in range(3)]
        ints = [torch.zeros(heads, dtype=torch.int64) for _ in range(2)]
        return cls(ints[0], floats[0], floats[1], floats[2], ints[1])

    def add(self, entropy: torch.Tensor, n_keys: torch.Tensor, query_valid: torch.Tensor):
        """Add the rows of one call: entropy and n_keys (batch, heads, q), valid (batch, q)."""
        rows = (n_keys > 0) & query_valid[:, None, :]  # (batch, heads, q)
        entropy = torch.where(rows, entropy.double(), 0.0)
        multi = rows & (n_keys > 1)
        log_keys = torch.log(torch.where(multi, n_keys, 2).double())
        self.n_rows += rows.sum((0, 2)).cpu()
        self.total += entropy.sum((0, 2)).cpu()
        self.total_sq += (entropy * entropy).sum((0, 2)).cpu()
        self.normalized_total += torch.where(multi, entropy / log_keys, 0.0).sum((0, 2)).cpu()
        self.n_normalized += multi.sum((0, 2)).cpu()

    def head(self, index: int) -> EntropySums:
        """The sums of one head, as a one-head EntropySums."""
        part = slice(index, index + 1)
        return EntropySums(
            self.n_rows[part],
            self.total[part],
            self.total_sq[part],
            self.normalized_total[part],
            self.n_normalized[part],
        )

    def mean(self) -> torch.Tensor:
        """(heads,) token-weighted mean entropy; NaN for a head without rows."""
        return self.total / self.n_rows.double()

    def std(self) -> torch.Tensor:
        """(heads,) population standard deviation of the row entropies."""
        mean = self.mean()
        variance = self.total_sq / self.n_rows.double() - mean * mean
        return variance.clamp(min=0.0).sqrt()

    def normalized(self) -> torch.Tensor:
        """(heads,) mean of H / ln(n_keys) over rows with at least two keys."""
        return self.normalized_total / self.n_normalized.double()
