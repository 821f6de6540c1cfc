"""Console logs: every format of the foundation issue, read from real lines."""

from __future__ import annotations

import gzip
import shutil

import pytest

from attn_entropy_cli.errors import InputError
from attn_entropy_cli.runs import logs, read_runs

EOLE_064 = (
    "[2026-12-03 16:26:07,446 INFO] Step 100/  400; acc: 35.5; ppl: 72.50; xent: 4.28; "
    "aux: 0.000; mtp: 0.000; attn_ent: 3.318; lr: 2.50e-02; sents:     320; bsz:  927/ 886/32; "
    "9460/9045 tok/s;    158 sec;"
)
EOLE_OLDER = EOLE_064.replace("mtp: 0.000; ", "")
EOLE_BEFORE_ENTROPY = EOLE_OLDER.replace("attn_ent: 3.318; ", "")
ONMT_3 = (
    "[2023-05-04 10:11:12,345 INFO] Step 100/ 1000; acc: 10.5; ppl: 1234.5; xent: 7.1; "
    "lr: 0.00275; sents:    1234; bsz: 1234/1230/12; 12345/12300 tok/s;    123 sec;"
)
ONMT_2 = (
    "[2021-02-03 04:05:06,789 INFO] Step 50/100000; acc:   3.95; ppl: 3063.2; xent: 8.0; "
    "lr: 0.00001; 12345/23456 tok/s;     12 sec"
)


def values(rows):
    return {(split, metric): value for split, _, metric, value, _ in rows}


def test_eole_064_step_line():
    rows, orphans = logs.parse_lines([EOLE_064])
    got = values(rows)
    assert orphans == 0
    assert {r[1] for r in rows} == {100}
    assert got[("progress", "accuracy")] == 35.5
    assert got[("progress", "ppl")] == 72.50
    assert got[("progress", "xent")] == 4.28
    assert got[("progress", "aux")] == 0.0
    assert got[("progress", "mtp_xent")] == 0.0
    assert got[("progress", "attention_entropy")] == 3.318
    assert got[("progress", "lr")] == 2.5e-2
    assert got[("progress", "sents")] == 320
    assert (got[("progress", "bsz_src")], got[("progress", "bsz_tgt")]) == (927, 886)
    assert got[("progress", "bsz_sents")] == 32
    assert (got[("progress", "srcper")], got[("progress", "tgtper")]) == (9460, 9045)
    assert got[("progress", "elapsed")] == 158


def test_older_eole_without_mtp_and_without_entropy():
    older = values(logs.parse_lines([EOLE_OLDER])[0])
    assert ("progress", "mtp_xent") not in older
    assert older[("progress", "attention_entropy")] == 3.318
    before = values(logs.parse_lines([EOLE_BEFORE_ENTROPY])[0])
    assert ("progress", "attention_entropy") not in before
    assert before[("progress", "ppl")] == 72.50


@pytest.mark.parametrize("line", [ONMT_3, ONMT_2])
def test_opennmt_py_lines(line):
    rows, _ = logs.parse_lines([line])
    got = values(rows)
    assert got[("progress", "lr")] in (0.00275, 0.00001)
    assert ("progress", "ppl") in got and ("progress", "xent") in got
    assert ("progress", "tgtper") in got and ("progress", "elapsed") in got


def test_unknown_and_appended_fields_are_kept():
    line = EOLE_064 + " BLEU: 23.45 TER: 61.2"
    line = line.replace("lr:", "new_field: 7.5; lr:")
    got = values(logs.parse_lines([line])[0])
    assert got[("progress", "new_field")] == 7.5
    assert got[("progress", "bleu")] == 23.45
    assert got[("progress", "ter")] == 61.2


def test_validation_block_takes_the_step_of_the_step_line_before_it(sample_runs):
    rows, _ = logs.parse_lines((sample_runs / "runA" / "train.log").read_text().splitlines())
    block = {(sp, st, m): v for sp, st, m, v, _ in rows if sp != "progress"}
    assert block[("valid", 50, "ppl")] == 83.98
    assert block[("valid", 50, "accuracy")] == 36.4108
    assert block[("train", 50, "ppl")] == 298.919
    assert block[("train", 400, "accuracy")] == 35.5625
    assert len(block) == 8 * 4


def test_non_metric_lines_are_skipped(sample_runs):
    text = (sample_runs / "runA" / "train.log").read_text().splitlines()
    rows, _ = logs.parse_lines(text)
    steps = sorted({r[1] for r in rows})
    assert steps == list(range(10, 401, 10))


def test_validation_before_any_step_is_counted_not_attached():
    lines = ["[2026-12-03 16:25:56,525 INFO] Validation perplexity: 83.98", EOLE_064]
    rows, orphans = logs.parse_lines(lines)
    assert orphans == 1
    assert all(split == "progress" for split, *_ in rows)


def test_wall_time_from_prefix():
    (row, *_), _ = logs.parse_lines([EOLE_064])
    expected = logs.parse_wall_time("2026-12-03 16:26:07", "446")
    assert row[4] == pytest.approx(expected)
    assert expected % 1 == pytest.approx(0.446)


def write_log(path, steps, ppl):
    lines = [
        EOLE_064.replace("Step 100/", f"Step {s}/").replace("ppl: 72.50", f"ppl: {ppl}")
        for s in steps
    ]
    path.write_text("\n".join(lines) + "\n")


def test_resumed_run_keeps_later_value(tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    write_log(run / "train.log", [10, 20, 30, 20, 30, 40], 50.0)
    text = (run / "train.log").read_text().splitlines()
    text[3] = text[3].replace("ppl: 50.0", "ppl: 40.0")  # second step 20, after the restart
    (run / "train.log").write_text("\n".join(text) + "\n")
    table = read_runs([run])
    ppl = table[table.metric == "ppl"].set_index("step")["value"]
    assert list(ppl.index) == [10, 20, 30, 40]
    assert ppl[20] == 40.0


def test_rotated_and_gzipped_logs_are_read_in_order(tmp_path):
    run = tmp_path / "rotated"
    run.mkdir()
    write_log(run / "train.log", [50, 60], 30.0)
    write_log(run / "train.log.1", [30, 40], 40.0)
    write_log(run / "plain", [10, 20], 50.0)
    with open(run / "plain", "rb") as src, gzip.open(run / "train.log.2.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (run / "plain").unlink()
    order = logs.rotation_order((run / n) for n in ["train.log", "train.log.2.gz", "train.log.1"])
    assert [p.name for p in order] == ["train.log.2.gz", "train.log.1", "train.log"]
    table = read_runs([run])
    ppl = table[table.metric == "ppl"]
    assert list(ppl.step) == [10, 20, 30, 40, 50, 60]
    assert list(ppl.value) == [50.0, 50.0, 40.0, 40.0, 30.0, 30.0]


def test_gzipped_log_file_given_directly(tmp_path, sample_runs):
    target = tmp_path / "train.log.gz"
    with open(sample_runs / "runA" / "train.log", "rb") as src, gzip.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain = read_runs([sample_runs / "runA" / "train.log"], names=["a"])
    zipped = read_runs([target], names=["a"])
    assert plain.drop(columns="wall_time").equals(zipped.drop(columns="wall_time"))


def test_empty_log_and_log_without_steps(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_text("")
    with pytest.raises(InputError, match="is empty"):
        logs.read_log(empty)
    chatter = tmp_path / "chatter.log"
    chatter.write_text("[2026-12-03 16:23:23,936 INFO] Logging initialized\n")
    with pytest.raises(InputError, match="has no 'Step' lines"):
        logs.read_log(chatter)
