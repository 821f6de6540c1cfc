"""The command line as a user types it: export, compare, plot, help and start-up."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from attn_entropy_cli.cli import main


def run_cli(args, capsys):
    """Run `attnent ARGS`; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return done.value.code, out, err


def test_help_names_every_command(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for command in ("export", "compare", "plot", "compute"):
        assert command in out


@pytest.mark.parametrize("command", ["export", "compare", "plot", "compute"])
def test_every_command_has_help_with_an_example(command, capsys):
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and "Example: attnent" in out


def test_start_up_imports_neither_torch_nor_matplotlib(sample_runs, tmp_path):
    probe = (
        "import sys\n"
        "from attn_entropy_cli.cli import main\n"
        "for args in (['--help'], ['export', {a!r}], ['compare', {a!r}]):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, args\n"
        "heavy = [m for m in ('torch', 'matplotlib') if m in sys.modules]\n"
        "open({out!r}, 'w').write(','.join(heavy) or 'none')\n"
    ).format(a=str(sample_runs / "runA"), out=str(tmp_path / "heavy.txt"))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "heavy.txt").read_text() == "none"


def test_export_csv_to_stdout_and_file(sample_runs, tmp_path, capsys):
    code, out, err = run_cli(["export", sample_runs / "runA"], capsys)
    assert code == 0 and err == ""
    table = pd.read_csv(io.StringIO(out))
    assert list(table.columns) == ["run", "source", "split", "step", "metric", "value", "wall_time"]
    assert len(table) == 984
    target = tmp_path / "runs.json"
    code, out, _ = run_cli(
        ["export", sample_runs / "runA", sample_runs / "runB", "-o", target], capsys
    )
    assert code == 0 and out == ""
    records = json.loads(target.read_text())
    assert {r["run"] for r in records} == {"runA", "runB"}


def test_export_parquet(sample_runs, tmp_path, capsys):
    pytest.importorskip("pyarrow", reason="parquet needs pyarrow")
    target = tmp_path / "runs.parquet"
    code, _, _ = run_cli(["export", sample_runs / "runA", "-o", target], capsys)
    assert code == 0 and len(pd.read_parquet(target)) == 984


def test_compare_flags_not_computed_run(sample_runs, capsys):
    code, out, err = run_cli(
        ["compare", sample_runs / "runA", sample_runs / "runB", sample_runs / "runD"], capsys
    )
    assert code == 0
    assert "runD: not-computed" in out and "runB: uniform" in out
    assert "attention_entropy (valid)" in out and "ppl (progress)" in out
    assert "accuracy (valid)" in out
    assert err.startswith("Warning: run runD: 24 attention_entropy values of exactly 0")


def test_compare_json_and_fail_on(sample_runs, capsys):
    code, out, err = run_cli(
        [
            "compare",
            sample_runs / "runA",
            sample_runs / "runD",
            "-f",
            "json",
            "--fail-on",
            "not-computed,collapse",
        ],
        capsys,
    )
    assert code == 3
    assert json.loads(out)["flags"][0]["flag"] == "not-computed"
    assert err.splitlines()[-1] == (
        "Error: flags raised: runD not-computed. Fix the runs or drop them from --fail-on"
    )


def test_compare_passes_gate_when_no_flag(sample_runs, capsys):
    code, _, _ = run_cli(["compare", sample_runs / "runA", "--fail-on", "uniform"], capsys)
    assert code == 0


def last_error(err):
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["compare", "nope"], 2, "Error: run path nope does not exist. Check the path"),
        (
            ["export", "{tmp}/void"],
            2,
            "Error: folder {tmp}/void holds no training logs (*.log) or "
            "TensorBoard event files. Give a run folder, a log file or an event file",
        ),
        (
            ["export", "{tmp}/empty.log"],
            1,
            "Error: log {tmp}/empty.log is empty. Give a log written by a training run",
        ),
        (
            ["export", "{tmp}/notes.log"],
            1,
            "Error: log {tmp}/notes.log has no 'Step' lines. "
            "Give an EOLE or OpenNMT-py training log",
        ),
        (
            ["compare", "{runs}/runA", "--metric", "bleu"],
            2,
            "Error: no run has metric 'bleu'. Choose from: accuracy, attention_entropy, aux, "
            "bsz_sents, bsz_src, bsz_tgt, elapsed, lr, mtp_xent, ppl, sents, srcper, tgtper, xent",
        ),
        (
            ["compare", "{runs}/runA", "--split", "test"],
            2,
            "Error: no run has split 'test'. Choose from: progress, train, valid",
        ),
        (
            ["compare", "{runs}/runA", "--fail-on", "boom"],
            2,
            "Error: unknown flag 'boom' in --fail-on. "
            "Use not-computed, uniform, collapse, diverged",
        ),
        (
            ["compare", "{runs}/runA", "--at-steps", "1,x"],
            2,
            "Error: --at-steps '1,x' is not a list of steps. Use e.g. 100,200",
        ),
        (
            ["compare", "{runs}/runA", "--baseline", "runZ"],
            2,
            "Error: baseline 'runZ' is not one of the runs. Choose from: runA",
        ),
        (
            ["compare", "{runs}/runA", "--format", "xml"],
            2,
            "Error: unknown format 'xml'. Use one of table, csv, json, markdown",
        ),
        (
            ["plot", "{runs}/runA", "-o", "{tmp}/x.gif"],
            2,
            "Error: cannot draw to {tmp}/x.gif. Name a .png, .svg or .pdf file with -o",
        ),
        (
            ["compare", "--bogus", "{runs}/runA"],
            2,
            "Error: No such option: --bogus. Run 'attnent compare --help' for the options.",
        ),
    ],
)
def test_bad_input_gets_one_error_line(args, code, message, sample_runs, tmp_path, capsys):
    (tmp_path / "void").mkdir()
    (tmp_path / "empty.log").write_text("")
    (tmp_path / "notes.log").write_text("hello\n")
    fill = {"tmp": tmp_path, "runs": sample_runs}
    got, _, err = run_cli([a.format(**fill) for a in args], capsys)
    assert got == code
    assert last_error(err) == message.format(**fill)
    assert "Traceback" not in err


def test_corrupt_event_file_is_one_error_line(sample_runs, tmp_path, capsys):
    (source,) = (sample_runs / "runA" / "tensorboard").rglob("*tfevents*")
    target = tmp_path / source.name
    data = bytearray(source.read_bytes())
    data[30] ^= 0xFF
    target.write_bytes(bytes(data))
    code, _, err = run_cli(["export", target], capsys)
    assert code == 1
    assert last_error(err) == (
        f"Error: event file {target} is unreadable (corrupt record at byte 0). "
        "Remove it or give another run"
    )


def test_plot_runs_and_input_is_untouched(sample_runs, tmp_path, capsys):
    run = tmp_path / "runA"
    shutil.copytree(sample_runs / "runA", run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    target = tmp_path / "curves.svg"
    code, _, err = run_cli(["plot", run, "--metric", "attention_entropy", "-o", target], capsys)
    assert code == 0 and err.strip() == f"wrote {target}"
    assert target.read_text().startswith("<?xml")
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_plot_entropy_table(tmp_path, capsys):
    rows = [
        ("c", t, layer, h, 0.1 + h + layer, 100)
        for t in ("self",)
        for layer in range(2)
        for h in range(3)
    ]
    table = tmp_path / "entropy.csv"
    pd.DataFrame(
        rows, columns=["checkpoint", "attn_type", "layer", "head", "entropy", "step"]
    ).to_csv(table, index=False)
    code, _, _ = run_cli(["plot", table, "-o", tmp_path / "heat.png", "--bits"], capsys)
    assert code == 0 and (tmp_path / "heat.png").stat().st_size > 1000
    code, _, err = run_cli(["plot", table, "-o", tmp_path / "h.png", "--heatmap-at", "5"], capsys)
    assert code == 2
    assert last_error(err) == f"Error: --heatmap-at 5 is not in {table}. Steps: 100"


def test_version_and_module_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "attn_entropy_cli", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("attnent ")


def test_entropy_table_in_bits_is_not_converted_twice(tmp_path):
    from attn_entropy_cli.cli.runs import entropy_figure

    rows = [("c", "self", 0, h, 1.0 + h, "bits") for h in range(2)]
    table = tmp_path / "bits.csv"
    columns = ["checkpoint", "attn_type", "layer", "head", "entropy", "unit"]
    pd.DataFrame(rows, columns=columns).to_csv(table, index=False)
    figure = entropy_figure(table, None, bits=True)
    colour_bar = figure.axes[-1]
    assert colour_bar.get_ylabel() == "entropy (bits)"
    assert figure.axes[0].images[0].get_array().max() == 2.0
