"""nanoGPT checkpoints: the built-in GPT, strict loading, vocabularies, refusals."""

import pickle

import pytest

torch = pytest.importorskip("torch", reason="checkpoints need torch")

from attn_entropy_cli.errors import InputError  # noqa: E402
from attn_entropy_cli.loaders import detect_format, open_checkpoint  # noqa: E402
from attn_entropy_cli.loaders.base import Example, LoadOptions  # noqa: E402
from attn_entropy_cli.loaders.gpt import GPT, GPTConfig  # noqa: E402

CHARS = " abcdefghijklmnopqrstuvwxyz.,"
MODEL_ARGS = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, bias=True, vocab_size=len(CHARS))


def write_checkpoint(folder, *, vocabulary="inside", compiled=False, model_args=MODEL_ARGS):
    """A real nanoGPT-layout ckpt.pt in `folder`, with its vocabulary inside, beside, or none."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**model_args))
    state = model.state_dict()
    if compiled:
        state = {"_orig_mod." + k: v for k, v in state.items()}
    stoi = {c: i for i, c in enumerate(CHARS)}
    content = {"model": state, "model_args": dict(model_args), "iter_num": 250}
    if vocabulary == "inside":
        content["meta"] = {"stoi": stoi, "itos": dict(enumerate(CHARS))}
    elif vocabulary == "beside":
        with open(folder / "meta.pkl", "wb") as handle:
            pickle.dump(
                {"vocab_size": len(CHARS), "stoi": stoi, "itos": dict(enumerate(CHARS))}, handle
            )
    path = folder / "ckpt.pt"
    torch.save(content, path)
    return path


def test_builtin_gpt_gives_the_logits_of_transformers_gpt2():
    transformers = pytest.importorskip("transformers", reason="the comparison needs it")
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50, bias=True)
    ours = GPT(config).eval()
    hf_config = transformers.GPT2Config(
        vocab_size=50,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=4,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    theirs = transformers.GPT2LMHeadModel(hf_config).eval()
    # HF's Conv1D stores (in, out): nanoGPT's Linear weights transposed
    transposed = (
        "attn.c_attn.weight",
        "attn.c_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    )
    state = {}
    for key, value in ours.state_dict().items():
        state[key] = value.t() if key.endswith(transposed) else value
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected and all(".attn.bias" in k or "masked_bias" in k for k in missing)
    ids = torch.randint(0, 50, (2, 16))
    with torch.inference_mode():
        assert torch.allclose(ours(ids), theirs(ids).logits, atol=1e-5)


@pytest.mark.parametrize("compiled", [False, True])
def test_checkpoint_loads_strictly_with_or_without_compile_prefix(tmp_path, compiled):
    path = write_checkpoint(tmp_path, compiled=compiled)
    assert detect_format(path, LoadOptions()) == "nanogpt"
    adapter = open_checkpoint(tmp_path, LoadOptions())  # the out_dir works too
    assert adapter.step == 250 and adapter.max_positions == 32 and not adapter.model.training
    assert [(s.name, s.layer) for s in adapter.sites()] == [
        ("transformer.h.0.attn", 0),
        ("transformer.h.1.attn", 1),
    ]


def test_vocabulary_from_meta_pkl_beside_the_checkpoint(tmp_path):
    path = write_checkpoint(tmp_path, vocabulary="beside")
    adapter = open_checkpoint(path, LoadOptions())
    tokens, cut = adapter.encode(Example("abc", None, 0), 2)
    assert tokens == {"src": [1, 2]} and cut


def test_meta_pkl_with_code_is_refused(tmp_path):
    path = write_checkpoint(tmp_path, vocabulary="none")
    with open(tmp_path / "meta.pkl", "wb") as handle:
        pickle.dump({"stoi": {"a": 0}, "hook": print}, handle)
    with pytest.raises(InputError, match="meta.pkl is not a plain-data vocabulary"):
        open_checkpoint(path, LoadOptions())


def test_missing_vocabulary_names_the_fix(tmp_path):
    path = write_checkpoint(tmp_path, vocabulary="none")
    with pytest.raises(InputError, match="has no character vocabulary. Put nanoGPT's meta.pkl"):
        open_checkpoint(path, LoadOptions())


def test_unknown_character_names_the_line(tmp_path):
    adapter = open_checkpoint(write_checkpoint(tmp_path), LoadOptions())
    with pytest.raises(InputError, match=r"line 4 of the data has 'Q'"):
        adapter.encode(Example("aQ", None, 3), None)


def test_mismatched_weights_are_refused(tmp_path):
    path = write_checkpoint(tmp_path)
    content = torch.load(path, weights_only=True)
    content["model_args"]["n_layer"] = 3
    torch.save(content, path)
    with pytest.raises(InputError, match="do not match its model_args"):
        open_checkpoint(path, LoadOptions())


class Pickled(torch.nn.Module):
    """A module saved whole, which only unpickling code can restore."""


def test_checkpoint_that_needs_pickled_code_is_refused_naming_the_option(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(Pickled(), path)
    with pytest.raises(InputError, match="pass --unsafe-load-pickle; it runs code"):
        open_checkpoint(path, LoadOptions())
