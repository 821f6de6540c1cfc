"""Capturing entropy from SDPA calls and from per-head weights, leaving outputs unchanged."""

import math

import pytest

torch = pytest.importorskip("torch", reason="capture needs torch")
import torch.nn.functional as F  # noqa: E402

from attn_entropy_cli.capture import AttentionSite, capture_attention  # noqa: E402
from attn_entropy_cli.capture.hooks import MultiheadAttentionWeights  # noqa: E402
from attn_entropy_cli.errors import InputError  # noqa: E402


class ToyAttention(torch.nn.Module):
    """q = k = x split into heads, causal SDPA; `calls` SDPA calls per forward."""

    def __init__(self, heads=2, calls=1):
        super().__init__()
        self.heads, self.calls = heads, calls

    def forward(self, x):
        b, t, c = x.shape
        q = x.view(b, t, self.heads, c // self.heads).transpose(1, 2)  # (b, nh, t, hs)
        for _ in range(self.calls):
            y = F.scaled_dot_product_attention(q, q, q, is_causal=True)
        return y.transpose(1, 2).reshape(b, t, c)


def explicit_causal(x, heads):
    """Per-head mean entropy over all rows, computed with the full matrix."""
    b, t, c = x.shape
    q = x.view(b, t, heads, c // heads).transpose(1, 2).double()
    scores = q @ q.transpose(-1, -2) / math.sqrt(c // heads)
    scores = scores.masked_fill(torch.ones(t, t).tril().logical_not(), float("-inf"))
    p = torch.softmax(scores, -1)
    return (-torch.special.xlogy(p, p).sum(-1)).mean(dim=(0, 2))  # (heads,)


def run_one(model, sites, x, masks, observe=None):
    with capture_attention(model, sites, observe) as capture:
        capture.run(lambda: model(x), masks)
    return capture.sums


def test_sdpa_call_is_captured_per_head_and_output_unchanged():
    model = ToyAttention()
    x = torch.randn(3, 5, 8)
    expected_out = model(x)
    sites = [AttentionSite(model, "attn", "self", 0)]
    out = {}
    with capture_attention(model, sites) as capture:
        capture.run(lambda: out.setdefault("y", model(x)), {"src": torch.ones(3, 5, dtype=bool)})
    assert torch.equal(out["y"], expected_out)
    sums = capture.sums[("self", 0)]
    assert sums.n_rows.tolist() == [15, 15]
    assert torch.allclose(sums.mean(), explicit_causal(x, 2), atol=1e-6)


def test_batch_size_does_not_change_the_result():
    model = ToyAttention()
    x = torch.randn(4, 6, 8)
    sites = [AttentionSite(model, "attn", "self", 0)]
    masks = torch.ones(4, 6, dtype=bool)
    masks[1, 4:] = False  # right padding: causal rows before it never see it
    with capture_attention(model, sites) as capture:
        capture.run(lambda: model(x), {"src": masks})
    whole = capture.sums[("self", 0)].mean()
    with capture_attention(model, sites) as capture:
        for i in range(4):
            capture.run(lambda i=i: model(x[i : i + 1]), {"src": masks[i : i + 1]})
    single = capture.sums[("self", 0)].mean()
    assert torch.allclose(whole, single, atol=1e-6)
    assert capture.sums[("self", 0)].n_rows.tolist() == [22, 22]


def test_two_calls_in_one_module_is_an_error_naming_it():
    model = ToyAttention(calls=2)
    sites = [AttentionSite(model, "blocks.0.attn", "self", 0)]
    with pytest.raises(InputError, match=r"blocks\.0\.attn \(self, layer 0\) computed 2"):
        run_one(model, sites, torch.randn(1, 3, 8), {"src": torch.ones(1, 3, dtype=bool)})


def test_attention_outside_known_modules_is_an_error():
    model = torch.nn.Sequential(ToyAttention(), ToyAttention())
    sites = [AttentionSite(model[0], "0", "self", 0)]
    with pytest.raises(InputError, match="outside every module"):
        run_one(model, sites, torch.randn(1, 3, 8), {"src": torch.ones(1, 3, dtype=bool)})


def test_everything_is_restored_after_an_error():
    model = ToyAttention(calls=2).train()
    sites = [AttentionSite(model, "attn", "self", 0)]
    with pytest.raises(InputError):
        run_one(model, sites, torch.randn(1, 3, 8), {"src": torch.ones(1, 3, dtype=bool)})
    assert model.training
    assert torch.backends.mha.get_fastpath_enabled()
    assert not model._forward_hooks and not model._forward_pre_hooks


def encoder_and_input(batch_first=True):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=batch_first)
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    x = torch.randn(2, 5, 16)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])  # True = padded
    return encoder, x, padding


def manual_encoder_entropy(encoder, x, padding):
    """Per-layer per-head entropies from per-head weights, padded query rows dropped."""
    results, h = [], x
    for layer in encoder.layers:
        _, w = layer.self_attn(
            h, h, h, key_padding_mask=padding, need_weights=True, average_attn_weights=False
        )
        p = w.double()  # (b, nh, t, t)
        ent = -torch.special.xlogy(p, p).sum(-1)  # (b, nh, t)
        valid = ~padding
        results.append((ent * valid[:, None]).sum((0, 2)) / valid.sum())
        h = layer(h, src_key_padding_mask=padding)
    return results


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_transformer_encoder_in_eval_mode_is_captured_per_head():
    encoder, x, padding = encoder_and_input()
    with torch.inference_mode():
        expected_out = encoder(x, src_key_padding_mask=padding)
        expected = manual_encoder_entropy(encoder, x, padding)
    sites = [
        AttentionSite(
            layer.self_attn, f"layers.{i}.self_attn", "self", i, "src", MultiheadAttentionWeights()
        )
        for i, layer in enumerate(encoder.layers)
    ]
    out = {}
    with capture_attention(encoder, sites) as capture:
        capture.run(
            lambda: out.setdefault("y", encoder(x, src_key_padding_mask=padding)),
            {"src": ~padding},
        )
    assert torch.backends.mha.get_fastpath_enabled()
    assert torch.allclose(out["y"][~padding], expected_out[~padding], atol=1e-5)
    for i in range(2):
        sums = capture.sums[("self", i)]
        assert sums.n_rows.tolist() == [8] * 4
        assert torch.allclose(sums.mean(), expected[i], atol=1e-6)


def test_multihead_attention_caller_gets_what_it_asked_for():
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 4, 8)
    sites = [AttentionSite(mha, "mha", "self", 0, "src", MultiheadAttentionWeights())]
    masks = {"src": torch.ones(1, 4, dtype=bool)}
    expected = mha(x, x, x)  # head-averaged weights by default
    got = {}
    with capture_attention(mha, sites) as capture:
        capture.run(lambda: got.setdefault("avg", mha(x, x, x)), masks)
        capture.run(lambda: got.setdefault("none", mha(x, x, x, None, False)), masks)
    assert torch.allclose(got["avg"][1], expected[1], atol=1e-6)
    assert got["avg"][1].shape == (1, 4, 4)
    assert got["none"][1] is None


def test_sites_left_out_of_observe_are_checked_but_not_measured():
    model = torch.nn.Sequential(ToyAttention(), ToyAttention())
    sites = [AttentionSite(model[i], str(i), "self", i) for i in range(2)]
    masks = {"src": torch.ones(1, 3, dtype=bool)}
    x = torch.randn(1, 3, 8)
    with capture_attention(model, sites, observe={("self", 1)}) as capture:
        capture.run(lambda: model(x), masks)
    assert list(capture.sums) == [("self", 1)]
    assert capture.calls == [1, 1]  # site 0 ran once and was counted
    assert torch.allclose(capture.sums[("self", 1)].mean(), explicit_causal(model[0](x), 2))


def test_sites_left_out_of_observe_are_counted():
    model = torch.nn.Sequential(ToyAttention(), ToyAttention(calls=2))
    sites = [AttentionSite(model[i], str(i), "self", i) for i in range(2)]
    masks = {"src": torch.ones(1, 3, dtype=bool)}
    # site 1 is not measured, yet its two calls are still counted and refused
    with pytest.raises(InputError, match=r"1 \(self, layer 1\) computed 2 attentions"):
        run_one(model, sites, torch.randn(1, 3, 8), masks, observe={("self", 0)})


class DropoutAttention(torch.nn.Module):
    """SDPA on dropped-out inputs, with SDPA's own dropout in training mode."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        q = self.drop(x).view(x.shape[0], x.shape[1], 2, 4).transpose(1, 2)
        p = 0.5 if self.training else 0.0
        return F.scaled_dot_product_attention(q, q, q, dropout_p=p, is_causal=True)


def test_training_model_is_measured_in_eval_mode_without_grad():
    model = DropoutAttention().train()
    x = torch.randn(2, 5, 8)
    sites = [AttentionSite(model, "attn", "self", 0)]
    masks = {"src": torch.ones(2, 5, dtype=bool)}
    seen = []

    def forward():
        seen.append((model.training, model.drop.training, torch.is_inference_mode_enabled()))
        return model(x)

    with capture_attention(model, sites) as capture:
        capture.run(forward, masks)
        capture.run(forward, masks)
    assert seen == [(False, False, True)] * 2
    # no dropout: both passes give the explicit entropy of the clean input
    assert torch.allclose(capture.sums[("self", 0)].mean(), explicit_causal(x, 2), atol=1e-6)
    assert model.training and model.drop.training


def test_each_modules_training_flag_is_restored():
    model = torch.nn.Sequential(ToyAttention(), torch.nn.Dropout(0.1)).train()
    model[1].eval()  # a frozen part inside a training model
    sites = [AttentionSite(model[0], "0", "self", 0)]
    run_one(model, sites, torch.randn(1, 3, 8), {"src": torch.ones(1, 3, dtype=bool)})
    assert model.training and model[0].training and not model[1].training
