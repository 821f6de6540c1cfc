"""The EOLE-compatible number against what EOLE really logged for the sample runs."""

import json
import math
import random
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the EOLE-compatible number needs torch")
pytest.importorskip(
    "eole", reason="EOLE checkpoints need the eole extra (pip install attnent[eole])"
)

from attn_entropy_cli.capture import capture_attention  # noqa: E402
from attn_entropy_cli.eole_compat import (  # noqa: E402
    CompatOptions,
    eole_compatible_entropy,
    validation_batches,
)
from attn_entropy_cli.errors import InputError, UsageError  # noqa: E402
from attn_entropy_cli.loaders import open_checkpoint  # noqa: E402
from attn_entropy_cli.loaders.base import Example, LoadOptions  # noqa: E402
from attn_entropy_cli.training_config import EntropyConfig  # noqa: E402

SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "sample_runs"
# valid/attention_entropy in each run's TensorBoard file at the checkpoint's step
LOGGED = {
    "runA": ("model/step_400", 400),
    "runB": ("model/step_400", 400),
    "runLM": ("model/step_300", 300),
}


def examples(decoder_only=False):
    """The 50 validation pairs the runs were validated on."""
    src = (SAMPLE_RUNS / "data" / "src-val.txt").read_text().splitlines()
    tgt = (SAMPLE_RUNS / "data" / "tgt-val.txt").read_text().splitlines()
    pairs = zip(src, tgt, strict=True)
    return [Example(s, None if decoder_only else t, i) for i, (s, t) in enumerate(pairs)]


def logged_value(run, step):
    """valid/attention_entropy at `step`, read from the run's TensorBoard file by attnent."""
    from attn_entropy_cli.runs import read_runs

    table = read_runs([SAMPLE_RUNS / run])
    rows = table[
        (table["source"] == "tensorboard")
        & (table["split"] == "valid")
        & (table["metric"] == "attention_entropy")
        & (table["step"] == step)
    ]
    assert len(rows) == 1
    return float(rows["value"].iloc[0])


@pytest.fixture(scope="module", params=list(LOGGED))
def run(request):
    """(run name, adapter, examples, step) per sample run, the model loaded once."""
    folder, step = LOGGED[request.param]
    adapter = open_checkpoint(SAMPLE_RUNS / request.param / folder, LoadOptions())
    return request.param, adapter, examples("tgt" not in adapter.sides), step


def test_matches_the_logged_validation_entropy(run):
    name, adapter, data, step = run
    result = eole_compatible_entropy(adapter, data)
    assert (result.batch_size, result.batch_type, result.n_batches) == (50, "sents", 1)
    assert result.n_sentences == 50
    assert result.eole == pytest.approx(logged_value(name, step), abs=2e-6)
    assert result.notes == ()


def test_difference_is_taken_apart_and_attnent_side_matches_compute(run):
    _, adapter, data, _ = run
    result = eole_compatible_entropy(adapter, data, CompatOptions(batch_size=16))
    assert result.n_batches == 4
    parts = result.clamp + result.padded_rows + result.sentence_weighting
    assert parts == pytest.approx(result.difference, abs=1e-6)
    assert 0 < result.clamp < 1e-4

    # attnent's number for the std head is the capture's, whatever the batching
    attn_type, layer, head = result.std
    tokens = [adapter.encode(e, None)[0] for e in data]
    with capture_attention(adapter.model, adapter.sites()) as capture:
        batch = adapter.collate(tokens)
        capture.run(lambda: adapter.forward(batch), batch.query_masks)
    expected = capture.sums[(attn_type, layer)].mean()[head].item()
    assert result.attnent == pytest.approx(expected, abs=1e-5)


def test_types_without_std_log_zero_like_eole(run):
    _, adapter, data, _ = run
    options = CompatOptions(entropy=EntropyConfig(types=("self",), log_attention_entropy=False))
    result = eole_compatible_entropy(adapter, data[:10], options)
    assert result.eole == 0.0
    assert result.notes[0].startswith("log_attention_entropy is false")
    assert result.notes[1] == (
        "attention_entropy_types is ['self']: EOLE's attention dict holds only 'std', "
        "so it logged 0.000"
    )


def eole_batches(tokens, batch_size, batch_type, multiple):
    """EOLE's own `DynamicDatasetIter.batch_iter` on the same examples, as index lists."""
    from eole.constants import CorpusTask
    from eole.inputters.dynamic_iterator import DynamicDatasetIter
    from eole.inputters.text_utils import text_sort_key

    iterator = object.__new__(DynamicDatasetIter)  # only the batching state is needed
    iterator.task, iterator.batch_type = CorpusTask.VALID, batch_type
    data = [
        ({"src": {"src": [str(i)], "src_ids": t["src"]}, "tgt": {"tgt_ids": t["tgt"]}}, i)
        for i, t in enumerate(tokens)
    ]
    data.sort(key=lambda item: text_sort_key(item[0]))
    batches = iterator.batch_iter(data, batch_size, batch_type, multiple)
    return [[index for _, index in batch] for batch in batches]


@pytest.mark.parametrize(
    "batch_size, batch_type, multiple",
    [(50, "sents", 1), (7, "sents", 1), (8, "sents", 4), (120, "tokens", 1), (200, "tokens", 8)],
)
def test_batches_are_eoles_own(batch_size, batch_type, multiple):
    rng = random.Random(batch_size)
    tokens = [{"src": [0] * rng.randint(1, 30), "tgt": [0] * rng.randint(2, 30)} for _ in range(60)]
    training = {"bucket_size": 1000, "batch_size_multiple": multiple}
    ours = list(validation_batches(tokens, batch_size, batch_type, training))
    assert ours == eole_batches(tokens, batch_size, batch_type, multiple)
    assert sorted(i for batch in ours for i in batch) == list(range(60))


def test_buckets_are_sorted_one_at_a_time():
    tokens = [{"src": [0] * n, "tgt": [0, 0]} for n in (5, 4, 3, 2, 1)]
    batches = list(validation_batches(tokens, 10, "sents", {"bucket_size": 2}))
    assert batches == [[1, 0], [3, 2], [4]]


def test_refuses_a_model_without_decoder(tmp_path):
    folder = tmp_path / "step_400"
    shutil.copytree(SAMPLE_RUNS / "runA" / "model" / "step_400", folder)
    (folder / "config.json").chmod(0o644)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["architecture"] = "transformer_encoder"
    del config["model"]["decoder"]
    (folder / "config.json").write_text(json.dumps(config))
    adapter = open_checkpoint(folder, LoadOptions())
    with pytest.raises(InputError) as error:
        eole_compatible_entropy(adapter, examples()[:4])
    assert str(error.value) == (
        f"{folder} has no decoder, so EOLE logs no attention entropy for it. Drop --eole-compat"
    )


def test_refuses_other_formats_and_bad_batching(run):
    _, adapter, data, _ = run

    class NotEole:
        format_name, description, path = "nanogpt", "nanoGPT ckpt.pt", Path("ckpt.pt")

    with pytest.raises(UsageError, match="ckpt.pt is a nanoGPT ckpt.pt, not an EOLE model"):
        eole_compatible_entropy(NotEole(), data)
    with pytest.raises(UsageError, match="unknown --eole-batch-type 'words'. Use one of sents"):
        eole_compatible_entropy(adapter, data, CompatOptions(batch_type="words"))
    with pytest.raises(UsageError, match="--eole-batch-size 0 is below 1. Use 1 or more"):
        eole_compatible_entropy(adapter, data, CompatOptions(batch_size=0))


def compute_run_a(types, layers=None, compat=None, bits=False, limit=5, max_length=None):
    """compute_entropy on runA's step_400 over the first `limit` validation pairs."""
    from attn_entropy_cli.compute import ComputeOptions, compute_entropy
    from attn_entropy_cli.data import DataOptions

    data = DataOptions(
        SAMPLE_RUNS / "data" / "src-val.txt",
        limit=limit,
        tgt=SAMPLE_RUNS / "data" / "tgt-val.txt",
    )
    options = ComputeOptions(types=types, layers=layers, bits=bits, max_length=max_length)
    checkpoint = SAMPLE_RUNS / "runA" / "model" / "step_400"
    return compute_entropy(checkpoint, data, LoadOptions(), options, compat=compat)


def test_std_is_the_measured_head_whatever_the_layers():
    from attn_entropy_cli import schema

    columns = [schema.ATTN_TYPE, schema.LAYER, schema.HEAD]
    context = compute_run_a(("context",)).table
    head = context[(context[schema.LAYER] == 1) & (context[schema.HEAD] == 0)]
    std = compute_run_a(("std",), layers=(0,))
    assert std.table[columns].values.tolist() == [["std", 1, 0]]
    assert std.table[schema.ENTROPY].tolist() == pytest.approx(head[schema.ENTROPY].tolist())
    assert std.aggregate == pytest.approx(head[schema.ENTROPY].item())

    both = compute_run_a(("std", "context"), layers=(0,))
    assert both.table[columns].values.tolist() == [["context", 0, h] for h in range(4)] + [
        ["std", 1, 0]
    ]
    layer_0 = context[context[schema.LAYER] == 0][schema.ENTROPY].mean()
    assert both.aggregate == pytest.approx((layer_0 + head[schema.ENTROPY].item()) / 2)


def test_compat_reuses_the_loaded_model_and_follows_bits(monkeypatch):
    from attn_entropy_cli.loaders import eole as eole_loader

    loads = []
    real_load = eole_loader.EoleAdapter.load.__func__
    monkeypatch.setattr(
        eole_loader.EoleAdapter,
        "load",
        classmethod(lambda cls, path, options: loads.append(path) or real_load(cls, path, options)),
    )
    nats = compute_run_a(None, compat=CompatOptions()).compat
    bits = compute_run_a(None, compat=CompatOptions(), bits=True).compat
    assert len(loads) == 2  # one load per compute, none for the compat number
    assert (nats.unit, bits.unit, nats.n_sentences) == ("nats", "bits", 5)
    assert bits.eole == pytest.approx(nats.eole / math.log(2))
    assert bits.clamp == pytest.approx(nats.clamp / math.log(2))


def test_compat_follows_max_length():
    full = compute_run_a(None, compat=CompatOptions()).compat
    with pytest.warns(UserWarning, match="examples to 3 tokens"):
        cut = compute_run_a(None, compat=CompatOptions(), max_length=3).compat
    assert cut.eole != pytest.approx(full.eole)
    assert cut.eole < math.log(3) + 1e-6  # at most 3 keys per row


def test_compute_eole_compat_reads_the_slice():
    from attn_entropy_cli.data import DataOptions
    from attn_entropy_cli.eole_compat import compute_eole_compat

    data = DataOptions(
        SAMPLE_RUNS / "data" / "src-val.txt", tgt=SAMPLE_RUNS / "data" / "tgt-val.txt"
    )
    checkpoint = SAMPLE_RUNS / "runB" / "model" / "step_400"
    result = compute_eole_compat(checkpoint, data, LoadOptions(device="auto"))
    assert result.eole == pytest.approx(2.722368, abs=2e-6)
