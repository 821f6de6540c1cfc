"""The EOLE adapter against EOLE's own per-head attention weights, on the real sample runs."""

import inspect
import json
import math
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the EOLE adapter needs torch")
pytest.importorskip(
    "eole", reason="EOLE checkpoints need the eole extra (pip install attnent[eole])"
)

from attn_entropy_cli.capture import capture_attention  # noqa: E402
from attn_entropy_cli.errors import InputError, UsageError  # noqa: E402
from attn_entropy_cli.loaders import detect_format, open_checkpoint  # noqa: E402
from attn_entropy_cli.loaders.base import Example, LoadOptions  # noqa: E402
from attn_entropy_cli.loaders.eole import EoleAdapter, EoleAttentionWeights  # noqa: E402

SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "sample_runs"
CHECKPOINTS = {
    "runA": SAMPLE_RUNS / "runA" / "model" / "step_400",  # encoder-decoder, 4 heads
    "runB": SAMPLE_RUNS / "runB" / "model" / "step_400",  # encoder-decoder, 2 heads
    "runLM": SAMPLE_RUNS / "runLM" / "model" / "step_300",  # decoder-only, 4 heads
}
HEADS = {"runA": 4, "runB": 2, "runLM": 4}


def read_examples(decoder_only=False, limit=50):
    """The validation pairs of sample_runs/data (source only for a language model)."""
    src = (SAMPLE_RUNS / "data" / "src-val.txt").read_text().splitlines()[:limit]
    tgt = (SAMPLE_RUNS / "data" / "tgt-val.txt").read_text().splitlines()[:limit]
    return [
        Example(s, None if decoder_only else t, i)
        for i, (s, t) in enumerate(zip(src, tgt, strict=True))
    ]


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def loaded(request):
    """(run name, adapter, encoded examples) for each sample checkpoint, loaded once."""
    adapter = open_checkpoint(CHECKPOINTS[request.param], LoadOptions())
    examples = read_examples(decoder_only="tgt" not in adapter.sides)
    return request.param, adapter, [adapter.encode(e, None)[0] for e in examples]


def capture_means(adapter, tokens, batch_size):
    """{(attn_type, layer): per-head mean entropy} through attnent's capture."""
    with capture_attention(adapter.model, adapter.sites()) as capture:
        for start in range(0, len(tokens), batch_size):
            batch = adapter.collate(tokens[start : start + batch_size])
            capture.run(lambda batch=batch: adapter.forward(batch), batch.query_masks)
    return {key: sums for key, sums in capture.sums.items()}


def eole_reference(adapter, tokens):
    """Per-head entropies from the weights EOLE's attention modules return, plus attns["std"].

    Plain forward hooks record each module's own second output (batch, heads, q, k) during an
    ordinary EOLE forward on the CPU. Real query rows: source tokens that are not padding;
    decoder inputs that are neither padding nor </s> (the row after the last target token).
    """
    recorded = {}
    handles = []
    for site in adapter.sites():
        key = (site.attn_type, site.layer)

        def hook(module, args, output, key=key):
            recorded[key] = output[1].detach()

        handles.append(site.module.register_forward_hook(hook))
    batch = adapter.collate(tokens)
    try:
        with torch.no_grad():
            attns = adapter.forward(batch).attns
    finally:
        for handle in handles:
            handle.remove()

    specials = adapter.vocabs["specials"]
    src = batch.inputs["src"]
    rows = {"src": src.ne(adapter.vocabs["src"][specials["pad_token"]])}
    if batch.inputs["tgt"] is not None:
        dec_in = batch.inputs["tgt"][:, :-1]
        pad, eos = (adapter.vocabs["tgt"][specials[k]] for k in ("pad_token", "eos_token"))
        rows["tgt"] = dec_in.ne(pad) & dec_in.ne(eos)
    decoder_side = "tgt" if "tgt" in rows else "src"
    side = {"enc_self": "src", "self": decoder_side, "context": "tgt"}

    reference = {}
    for (attn_type, layer), probs in recorded.items():
        p = probs.double()  # (batch, heads, q, k)
        h = -torch.special.xlogy(p, p).sum(-1)  # (batch, heads, q)
        valid = rows[side[attn_type]][:, None, :].expand_as(h)
        n_keys = (p > 0).sum(-1)
        assert torch.all(h[valid] >= -1e-9)
        assert torch.all(h[valid] <= torch.log(n_keys[valid].double()) + 1e-6)
        reference[(attn_type, layer)] = (h * valid).sum((0, 2)) / valid.sum((0, 2))
    return reference, attns, recorded


def test_detect_by_content(tmp_path):
    assert EoleAdapter.detect(CHECKPOINTS["runA"])
    assert EoleAdapter.detect(CHECKPOINTS["runLM"])
    assert detect_format(CHECKPOINTS["runB"], LoadOptions()) == "eole"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "model": {}}))
    assert not EoleAdapter.detect(hf)
    assert not EoleAdapter.detect(tmp_path)
    assert not EoleAdapter.detect(SAMPLE_RUNS / "data" / "src-val.txt")


def test_layers_by_heads_per_type(loaded):
    name, adapter, tokens = loaded
    means = capture_means(adapter, tokens, 50)
    if name == "runLM":
        expected_types = {"self"}
        assert adapter.attn_types == ("self",) and adapter.sides == ("src",)
    else:
        expected_types = {"enc_self", "self", "context"}
        assert adapter.sides == ("src", "tgt")
    assert {t for t, _ in means} == expected_types
    for attn_type in expected_types:
        assert sorted(layer for t, layer in means if t == attn_type) == [0, 1]
    for sums in means.values():
        assert sums.mean().shape == (HEADS[name],)
        assert (sums.n_rows > 0).all()


def test_per_head_entropy_equals_eole_weights(loaded):
    _, adapter, tokens = loaded
    reference, _, recorded = eole_reference(adapter, tokens)
    means = capture_means(adapter, tokens, 50)
    assert set(means) == set(reference)
    for key, sums in means.items():
        assert torch.allclose(sums.mean(), reference[key], atol=1e-5), key
        max_keys = recorded[key].shape[-1]
        assert torch.all(sums.mean() >= 0) and torch.all(sums.mean() <= math.log(max_keys))
        normalized = sums.normalized()
        assert torch.all((normalized >= 0) & (normalized <= 1 + 1e-6))


def test_rows_do_not_depend_on_batching(loaded):
    _, adapter, tokens = loaded
    whole = capture_means(adapter, tokens, 50)
    pieces = capture_means(adapter, tokens, 7)
    for key in whole:
        assert torch.equal(whole[key].n_rows, pieces[key].n_rows)
        assert torch.allclose(whole[key].mean(), pieces[key].mean(), atol=1e-5)


def test_std_is_head_0_of_the_last_decoder_layer(loaded):
    name, adapter, tokens = loaded
    _, attns, recorded = eole_reference(adapter, tokens[:10])
    std = adapter.extras["std"]
    assert std == (("self" if name == "runLM" else "context"), 1, 0)
    assert torch.equal(attns["std"], recorded[std[:2]][:, 0])


def test_encoder_decoder_without_target_is_refused(loaded):
    _, adapter, _ = loaded
    example = Example("a source line", None, 0)
    if "tgt" not in adapter.sides:
        assert list(adapter.encode(example, None)[0]) == ["src"]
        return
    with pytest.raises(UsageError) as error:
        adapter.encode(example, None)
    assert str(error.value) == (
        f"{adapter.path} is an encoder-decoder model and needs a target side. "
        "Pass --tgt FILE or --tsv"
    )


def test_capture_leaves_eole_outputs_unchanged(loaded):
    _, adapter, tokens = loaded
    batch = adapter.collate(tokens[:12])
    with torch.no_grad():
        expected = adapter.forward(batch).dec_out
    out = {}
    with capture_attention(adapter.model, adapter.sites()) as capture:
        capture.run(lambda: out.setdefault("y", adapter.forward(batch)), batch.query_masks)
    assert torch.equal(out["y"].dec_out, expected)
    assert not adapter.model.training


def test_weights_hook_returns_what_the_caller_asked_for():
    adapter = open_checkpoint(CHECKPOINTS["runB"], LoadOptions())
    module = adapter.model.encoder.transformer_layers[0].self_attn
    hook = EoleAttentionWeights()
    x = torch.randn(2, 5, 64)
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[1, ..., 3:] = False
    args, kwargs = hook.request(module, (x,), {"attn_mask": mask})
    assert inspect.signature(module.forward).bind(*args, **kwargs).arguments["return_attn"]
    with torch.no_grad():
        output = module(*args, **kwargs)
    probs, key_mask, returned = hook.extract(module, args, kwargs, output)
    assert probs.shape == (2, 2, 5, 5) and key_mask.shape == (2, 1, 1, 5)
    assert torch.all(probs[1, :, :, 3:] == 0)
    assert returned[1] is probs  # on the CPU, EOLE returns the weights unasked


def test_encoder_only_model(tmp_path):
    folder = copy_checkpoint(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["architecture"] = "transformer_encoder"
    del config["model"]["decoder"]
    (folder / "config.json").write_text(json.dumps(config))
    adapter = open_checkpoint(folder, LoadOptions())
    assert adapter.attn_types == ("enc_self",) and adapter.extras["std"] is None
    tokens = [adapter.encode(e, None)[0] for e in read_examples(limit=8)]
    means = capture_means(adapter, tokens, 8)
    assert set(means) == {("enc_self", 0), ("enc_self", 1)}


def copy_checkpoint(tmp_path, run="runA"):
    """A writable copy of a sample checkpoint folder."""
    folder = tmp_path / "step_400"
    shutil.copytree(CHECKPOINTS[run], folder)
    for file in folder.iterdir():
        file.chmod(0o644)
    return folder


def test_missing_vocab_is_refused(tmp_path):
    folder = copy_checkpoint(tmp_path)
    (folder / "vocab.json").unlink()
    with pytest.raises(InputError) as error:
        open_checkpoint(folder, LoadOptions())
    assert str(error.value) == (
        f"{folder} has an EOLE config.json but no vocab.json. "
        "Copy vocab.json from the run's model folder next to config.json"
    )


def test_missing_weights_are_refused(tmp_path):
    folder = copy_checkpoint(tmp_path)
    (folder / "model.00.safetensors").unlink()
    with pytest.raises(InputError, match="no model.\\*.safetensors weights"):
        open_checkpoint(folder, LoadOptions())


def test_unknown_architecture_is_refused(tmp_path):
    folder = copy_checkpoint(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["architecture"] = "mamba"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError) as error:
        open_checkpoint(folder, LoadOptions())
    message = str(error.value)
    assert message.startswith(
        f"EOLE 0.6.4 cannot build the model in {folder}/config.json (architecture 'mamba'"
    )
    assert message.endswith(
        "Give a checkpoint saved by EOLE 0.6.4, or convert it with that version"
    )


def test_missing_eole_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "eole" else real(name, *a)
    )
    with pytest.raises(UsageError) as error:
        EoleAdapter.load(CHECKPOINTS["runA"], LoadOptions())
    assert str(error.value) == (
        "EOLE checkpoints need the eole package. Install it with: pip install 'attnent[eole]'"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (SDPA path)")
def test_same_numbers_on_gpu_and_cpu():
    results = {}
    for device in ("cpu", "cuda"):
        adapter = open_checkpoint(CHECKPOINTS["runA"], LoadOptions(device=device))
        tokens = [adapter.encode(e, None)[0] for e in read_examples()]
        batch = adapter.collate(tokens).to(device)
        with capture_attention(adapter.model, adapter.sites()) as capture:
            capture.run(
                lambda adapter=adapter, batch=batch: adapter.forward(batch), batch.query_masks
            )
        results[device] = {key: sums.mean() for key, sums in capture.sums.items()}
    for key, mean in results["cpu"].items():
        assert torch.allclose(mean, results["cuda"][key], atol=1e-4), key


def test_rnn_model_is_refused(tmp_path):
    folder = copy_checkpoint(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model"] = {"architecture": "rnn", "hidden_size": 64, "layers": 1}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError) as error:
        open_checkpoint(folder, LoadOptions())
    assert str(error.value) == (
        f"{folder}/config.json describes an EOLE model with a rnn and a rnn block; attnent "
        "reads transformer attention only. Give a transformer model"
    )
