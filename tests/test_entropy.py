"""Entropy math against closed forms and an explicit float64 reference."""

import math

import pytest

torch = pytest.importorskip("torch", reason="the entropy math needs torch")

from attn_entropy_cli.entropy import (  # noqa: E402
    EntropySums,
    chunked_entropy,
    probs_entropy,
    sdpa_entropy,
)


def reference(q, k, keep=None, bias=None, causal=False):
    """Explicit float64 entropy per row: (batch, heads, q); causal is top-left aligned."""
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.double()
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    if causal:
        n_q, n_k = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(n_q, n_k).tril().logical_not(), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return -torch.special.xlogy(probs, probs).sum(-1)


PADDED = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])  # (batch, k): 6 and 4 keys


@pytest.mark.parametrize(
    "fill, dtype",
    [
        (float("-inf"), torch.float32),
        (torch.finfo(torch.float32).min, torch.float32),
        (torch.finfo(torch.float16).min, torch.float16),
        (-1e9, torch.float32),
        (-1e4, torch.float32),
    ],
)
def test_additive_mask_fill_values_count_as_masked(fill, dtype):
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 6, 8)
    mask = torch.zeros(2, 1, 1, 6).masked_fill(~PADDED[:, None, None], fill).to(dtype)
    entropy, n_keys = sdpa_entropy(q.to(dtype), k.to(dtype), attn_mask=mask)
    expected = reference(q.to(dtype), k.to(dtype), keep=PADDED[:, None, None])
    assert n_keys[0].eq(6).all() and n_keys[1].eq(4).all()
    assert torch.allclose(entropy.double(), expected, atol=2e-6)


def test_additive_bias_with_masked_keys_matches_reference():
    q, k = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 6, 8)
    bias = torch.randn(2, 1, 5, 6).masked_fill(~PADDED[:, None, None], -1e9)
    entropy, n_keys = sdpa_entropy(q, k, attn_mask=bias)
    keep = PADDED[:, None, None].expand(2, 1, 5, 6)
    expected = reference(q, k, keep=keep, bias=bias.masked_fill(~keep, 0.0))
    assert n_keys[1].eq(4).all()
    assert torch.allclose(entropy.double(), expected, atol=2e-6)


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_three_d_masks_broadcast_as_sdpa_does(heads, kind):
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8)
    keep = torch.rand(heads, 5, 6) > 0.3
    keep[..., 0] = True  # every row keeps a key
    mask = keep if kind == "bool" else torch.zeros(heads, 5, 6).masked_fill(~keep, -1e9)
    entropy, n_keys = sdpa_entropy(q, k, attn_mask=mask)
    assert torch.allclose(entropy.double(), reference(q, k, keep=keep[None]), atol=2e-6)
    assert torch.equal(n_keys, keep.sum(-1).expand(2, 3, 5))
    # the model's own call accepts the same mask
    v = torch.randn(2, 3, 6, 8)
    torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("n_q, n_k", [(3, 5), (5, 3)])
def test_causal_with_different_query_and_key_lengths_is_top_left(n_q, n_k):
    q, k = torch.randn(1, 2, n_q, 8), torch.randn(1, 2, n_k, 8)
    entropy, n_keys = sdpa_entropy(q, k, is_causal=True)
    assert torch.allclose(entropy.double(), reference(q, k, causal=True), atol=2e-6)
    assert n_keys[0, 0].tolist() == [min(i + 1, n_k) for i in range(n_q)]
    chunked = chunked_entropy(q, k, None, None, True, 8**-0.5)
    assert torch.allclose(chunked, entropy, atol=2e-6)


def test_grouped_query_heads_pair_as_sdpa_enable_gqa():
    # peaked scores, so each query head's entropy depends on which key head it reads
    torch.manual_seed(0)
    q, k = 4 * torch.randn(1, 8, 6, 16), 4 * torch.randn(1, 2, 6, 16)
    entropy, _ = sdpa_entropy(q, k)
    # SDPA's own pairing: with values = one-hot positions, the output rows are the probs
    v = torch.eye(6).expand(1, 2, 6, 6)
    probs = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    expected = -torch.special.xlogy(probs.double(), probs.double()).sum(-1)
    assert torch.allclose(entropy.double(), expected, atol=1e-5)
    tiled = sdpa_entropy(q, k.repeat(1, 4, 1, 1))[0]  # the other pairing differs
    assert (tiled - entropy).abs().max() > 0.1


def test_peaked_rows_never_have_negative_entropy():
    q = torch.randn(1, 4, 16, 32) * 30
    entropy, _ = sdpa_entropy(q, q, is_causal=True)
    assert entropy.min() >= 0


def test_uniform_attention_over_k_keys_is_ln_k():
    q = torch.zeros(1, 2, 5, 8)
    k = torch.randn(1, 2, 7, 8)
    entropy, n_keys = sdpa_entropy(q, k)
    assert torch.allclose(entropy, torch.full_like(entropy, math.log(7)), atol=1e-6)
    assert (n_keys == 7).all()


def test_one_hot_attention_is_zero():
    k = torch.eye(4).reshape(1, 1, 4, 4) * 1000.0
    q = torch.eye(4).reshape(1, 1, 4, 4) * 1000.0
    entropy, _ = sdpa_entropy(q, k)
    assert entropy.abs().max() < 1e-6
    probs = torch.eye(4).reshape(1, 1, 4, 4)
    entropy, n_keys = probs_entropy(probs)
    assert entropy.abs().max() == 0 and (n_keys == 1).all()


def test_causal_first_row_has_one_key_and_zero_entropy():
    q, k = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    entropy, n_keys = sdpa_entropy(q, k, is_causal=True)
    assert (n_keys[..., 0] == 1).all() and (n_keys[..., 5] == 6).all()
    assert entropy[..., 0].abs().max() < 1e-6
    assert torch.allclose(entropy.double(), reference(q, k, causal=True), atol=2e-6)


def test_masked_keys_change_nothing():
    q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8)
    keep = torch.tensor([True, True, True, False, False, False]).expand(1, 1, 4, 6)
    masked, n_keys = sdpa_entropy(q, k, attn_mask=keep)
    short, _ = sdpa_entropy(q, k[:, :, :3])
    assert torch.allclose(masked, short, atol=1e-6)
    assert (n_keys == 3).all()
    # a float mask of 0 / finfo.min means the same
    additive = torch.zeros(1, 1, 4, 6).masked_fill(~keep, torch.finfo(torch.float32).min)
    assert torch.allclose(sdpa_entropy(q, k, attn_mask=additive)[0], short, atol=1e-6)


def test_additive_bias_and_grouped_query_match_reference():
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    bias = torch.randn(2, 1, 5, 5)
    entropy, _ = sdpa_entropy(q, k, attn_mask=bias)
    expanded = k.repeat_interleave(2, dim=1)
    assert torch.allclose(entropy.double(), reference(q, expanded, bias=bias), atol=2e-6)


def test_chunked_path_equals_fused_path():
    q, k = torch.randn(1, 2, 50, 8), torch.randn(1, 2, 50, 8)
    fused, _ = sdpa_entropy(q, k, is_causal=True)
    chunked = chunked_entropy(q, k, None, None, True, 8**-0.5)
    assert torch.allclose(fused, chunked, atol=2e-6)


def test_fully_masked_rows_and_padding_queries_do_not_count():
    q, k = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    keep = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    keep[0, 0, 2] = False  # a row with no key
    entropy, n_keys = sdpa_entropy(q, k, attn_mask=keep)
    valid = torch.tensor([[True, True, True], [True, True, False]])  # a padded query
    sums = EntropySums.zeros(1)
    sums.add(entropy, n_keys, valid)
    assert sums.n_rows.item() == 4
    expected = (entropy[0, 0, :2].sum() + entropy[1, 0, :2].sum()) / 4
    assert sums.mean().item() == pytest.approx(expected.item(), abs=1e-6)


def test_normalized_entropy_of_uniform_rows_is_one():
    probs = torch.full((1, 1, 3, 4), 0.25)
    probs[0, 0, 0] = torch.tensor([1.0, 0, 0, 0])  # one key: left out of normalisation
    entropy, n_keys = probs_entropy(probs)
    sums = EntropySums.zeros(1)
    sums.add(entropy, n_keys, torch.ones(1, 3, dtype=torch.bool))
    assert sums.normalized().item() == pytest.approx(1.0, abs=1e-6)
    assert sums.n_normalized.item() == 2 and sums.n_rows.item() == 3
    assert sums.mean().item() == pytest.approx(2 * math.log(4) / 3, abs=1e-6)
    assert sums.std().item() == pytest.approx(math.log(4) * math.sqrt(2) / 3, abs=1e-6)


def test_float16_inputs_are_computed_in_float32():
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    half, _ = sdpa_entropy(q.half(), k.half(), is_causal=True)
    assert half.dtype == torch.float32
    assert torch.allclose(half.double(), reference(q.half(), k.half(), causal=True), atol=1e-5)
