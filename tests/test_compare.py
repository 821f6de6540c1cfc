"""compare: statistics, baseline, values at steps and flags, on real and built tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from attn_entropy_cli import report
from attn_entropy_cli.compare import CompareOptions, compare_runs, merge_sources
from attn_entropy_cli.errors import UsageError
from attn_entropy_cli.runs import read_runs


def table(rows):
    """A run table from (run, split, step, metric, value) rows."""
    frame = pd.DataFrame(rows, columns=["run", "split", "step", "metric", "value"])
    return frame.assign(source="log", wall_time=0.0)


def series(run, split, metric, values, start=10, every=10):
    return [(run, split, start + i * every, metric, v) for i, v in enumerate(values)]


@pytest.fixture(scope="module")
def real():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_runs(
            ["sample_runs/runA", "sample_runs/runB", "sample_runs/runD"],
        )


def test_summary_of_real_runs(real):
    result = compare_runs(real)
    row = result.summary.set_index(["run", "split", "metric"]).loc[
        ("runA", "valid", "attention_entropy")
    ]
    assert row["n"] == 8 and row["last_step"] == 400
    assert row["last"] == pytest.approx(1.854787, abs=1e-6)
    assert row["max"] == pytest.approx(2.749470, abs=1e-6) and row["max_step"] == 50
    flags = set(zip(result.flags.run, result.flags.flag))
    assert flags == {("runB", "uniform"), ("runD", "not-computed")}
    assert result.notes == [
        "values in both a console log and TensorBoard are TensorBoard's (more digits)"
    ]


def test_tensorboard_wins_over_log(real):
    merged, both = merge_sources(real)
    assert both
    row = merged[(merged.run == "runA") & (merged.split == "progress") & (merged.step == 100)]
    entropy = row[row.metric == "attention_entropy"]
    assert len(entropy) == 1 and entropy.source.item() == "tensorboard"
    assert entropy.value.item() == pytest.approx(3.317942, abs=1e-6)


def test_steps_too_far_apart_for_one_sort_key_merge_the_same(real):
    # 2**52 apart, (run, split, metric, step) no longer fits one int64: sorted by lexsort
    merged, both = merge_sources(real)
    far, far_both = merge_sources(real.assign(step=real["step"] * 2**52))
    assert far_both == both
    pd.testing.assert_frame_equal(far.assign(step=far["step"] // 2**52), merged)


def test_statistics_by_hand():
    values = [5.0, 4.0, 3.0, 2.0, 1.0, 1.5, 1.0, 0.8, 0.9, 0.7]
    result = compare_runs(
        table(series("r", "valid", "ppl", values)),
        CompareOptions(metrics=("ppl",), splits=("valid",)),
    )
    row = result.summary.iloc[0]
    assert (row["first"], row["last"], row["min"], row["max"]) == (5.0, 0.7, 0.7, 5.0)
    assert (row["min_step"], row["max_step"], row["n"]) == (100, 10, 10)
    # steps 10..100: the last 10% of the range is steps >= 91, one point, so the last two
    assert row["tail_mean"] == pytest.approx(0.8)
    assert row["tail_trend"] == pytest.approx((0.7 - 0.9) / 10 * 1000)


def test_baseline_at_nearest_shared_step():
    rows = series("a", "valid", "ppl", [10.0, 8.0, 6.0], every=50) + series(
        "b", "valid", "ppl", [9.0, 7.0, 5.0, 4.0], every=50
    )
    result = compare_runs(
        table(rows), CompareOptions(metrics=("ppl",), splits=("valid",), baseline="a")
    )
    b = result.summary.set_index("run").loc["b"]
    assert b["baseline_step"] == 110 and b["vs_baseline"] == pytest.approx(5.0 - 6.0)
    assert any("compared at step 110" in note for note in result.notes)


def test_values_at_steps_take_the_step_at_or_before():
    rows = series("a", "valid", "ppl", [10.0, 8.0, 6.0], every=50)  # steps 10, 60, 110
    result = compare_runs(
        table(rows), CompareOptions(metrics=("ppl",), splits=("valid",), at_steps=(5, 60, 100))
    )
    got = result.at_steps.set_index("at_step")
    assert pd.isna(got.loc[5, "step"]) and math.isnan(got.loc[5, "value"])
    assert got.loc[60, "value"] == 8.0 and got.loc[100, "step"] == 60


def test_uniform_needs_three_equal_validations():
    flat = series("u", "valid", "attention_entropy", [2.7495, 2.7494, 2.7496, 2.1])
    two = series("t", "valid", "attention_entropy", [2.7495, 2.7494, 2.6, 2.1])
    flags = compare_runs(table(flat + two)).flags
    assert list(flags[flags.flag == "uniform"].run) == ["u"]


def test_collapse_by_floor_and_by_running_max():
    floor = series("f", "valid", "attention_entropy", [1.0, 0.9, 0.4])
    relative = series("r", "valid", "attention_entropy", [4.0, 3.0, 0.9])
    healthy = series("h", "valid", "attention_entropy", [4.0, 3.0, 1.1])
    flags = compare_runs(table(floor + relative + healthy)).flags
    assert sorted(flags[flags.flag == "collapse"].run) == ["f", "r"]
    options = CompareOptions(collapse_below=0.3)
    assert "f" not in set(compare_runs(table(floor), options).flags.run)


def test_diverged_on_nan_and_on_rising_ppl():
    nan = series("n", "valid", "ppl", [10.0, float("nan")])
    rising = series("r", "valid", "ppl", [10.0, 5.0, 11.0])
    fine = series("f", "valid", "ppl", [10.0, 5.0, 9.0])
    rows = [r for r in nan + rising + fine]
    rows += [(run, "valid", 10, "attention_entropy", 2.0) for run in "nrf"]
    flags = compare_runs(table(rows)).flags
    assert sorted(flags[flags.flag == "diverged"].run) == ["n", "r"]


def test_unknown_metric_split_and_baseline(real):
    with pytest.raises(UsageError, match="no run has metric 'bleu'. Choose from: accuracy"):
        compare_runs(real, CompareOptions(metrics=("bleu",)))
    with pytest.raises(UsageError, match="no run has split 'test'"):
        compare_runs(real, CompareOptions(splits=("test",)))
    with pytest.raises(UsageError, match="baseline 'runZ' is not one of the runs"):
        compare_runs(real, CompareOptions(baseline="runZ"))


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "markdown"])
def test_every_format_renders(real, fmt):
    text = report.render_comparison(compare_runs(real, CompareOptions(at_steps=(100,))), fmt)
    assert "runA" in text and "runD" in text
    if fmt == "json":
        import json

        document = json.loads(text)
        assert {"summary", "at_steps", "flags", "notes"} <= set(document)
        assert {f["flag"] for f in document["flags"]} == {"uniform", "not-computed"}
