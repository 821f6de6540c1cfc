"""Many checkpoints, or a run folder, into one long table with a step column."""

from pathlib import Path

import pandas as pd
import pytest

from attn_entropy_cli import schema
from attn_entropy_cli.errors import AttnentWarning, InputError, UsageError
from attn_entropy_cli.trajectory import (
    CheckpointRef,
    compute_trajectory,
    expand_checkpoints,
    named_step,
    trajectory_table,
)

SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "sample_runs"
RUN_LM = SAMPLE_RUNS / "runLM"


def fake_table(heads=2, layers=2, value=1.0, step=None):
    """An entropy table as `compute` makes it, for one checkpoint."""
    rows = [
        ["ckpt", "self", layer, head, value + head, 0.5, 10, 0.1]
        for layer in range(layers)
        for head in range(heads)
    ]
    table = pd.DataFrame(rows, columns=schema.ENTROPY_COLUMNS)
    return table if step is None else table.assign(step=step)


class ProgressLog:
    """A progress callback that remembers its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, done, total):
        self.calls.append((done, total))


def test_named_step():
    assert named_step(Path("run/model/step_400")) == 400
    assert named_step(Path("out/checkpoint-1000")) == 1000
    assert named_step(Path("out/ckpt_2000.pt")) == 2000
    assert named_step(Path("out/ckpt.pt")) is None


def test_run_folder_expands_to_its_checkpoints_in_step_order():
    refs = expand_checkpoints([RUN_LM])
    assert [ref.step for ref in refs] == [100, 200, 300]
    assert [ref.path.name for ref in refs] == ["step_100", "step_200", "step_300"]
    assert {ref.format for ref in refs} == {"eole"}
    # EOLE's model/ folder links its latest step but is read as the run's folder of steps
    assert [ref.step for ref in expand_checkpoints([RUN_LM / "model"])] == [100, 200, 300]
    # a list is put in step order, and a checkpoint named twice counts once
    steps = [RUN_LM / "model" / f"step_{n}" for n in (300, 100, 300)]
    assert [ref.step for ref in expand_checkpoints(steps)] == [100, 300]


def test_mixed_architectures_are_refused_naming_both():
    a = SAMPLE_RUNS / "runA" / "model" / "step_400"
    lm = RUN_LM / "model" / "step_300"
    with pytest.raises(InputError) as error:
        expand_checkpoints([lm, a])
    assert str(error.value) == (
        f"the checkpoints mix architectures: {lm} is transformer_lm, layers 2, heads 4, "
        f"hidden_size 64 and {a} is transformer, layers 2, heads 4, hidden_size 64. "
        "Give checkpoints of one run"
    )


def test_mixed_formats_are_refused_naming_both():
    ckpt = SAMPLE_RUNS / "nanogpt" / "ckpt.pt"
    if not ckpt.is_file():
        pytest.skip(reason="sample_runs/nanogpt/ckpt.pt is not in this checkout")
    lm = RUN_LM / "model" / "step_300"
    with pytest.raises(InputError) as error:
        expand_checkpoints([lm, ckpt])
    assert str(error.value) == (
        f"the checkpoints mix formats: {lm} is eole and {ckpt} is nanogpt. "
        "Give checkpoints of one run"
    )


def test_paths_that_are_not_checkpoints(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        expand_checkpoints([tmp_path / "absent"])
    with pytest.raises(InputError, match="is neither a checkpoint nor a run folder"):
        expand_checkpoints([tmp_path])


def test_table_has_step_and_refuses_a_changed_layout(tmp_path):
    refs = [CheckpointRef(Path(f"step_{n}"), "eole", n) for n in (10, 20)]
    table = trajectory_table(refs, lambda path: fake_table(value=named_step(path)))
    assert table[schema.STEP].tolist() == [10] * 4 + [20] * 4
    assert table[schema.ENTROPY].tolist()[:2] == [10.0, 11.0]

    tables = iter([fake_table(heads=2), fake_table(heads=4)])
    with pytest.raises(InputError) as error:
        trajectory_table(refs, lambda path: next(tables))
    assert str(error.value) == (
        "the checkpoints mix architectures: step_10 has self layers 0-1 x 2 heads and "
        "step_20 has self layers 0-1 x 4 heads. Give checkpoints of one run"
    )

    unnamed = [CheckpointRef(Path("a.pt"), "nanogpt", None)]
    with pytest.warns(AttnentWarning, match="says nothing of its step; using its place 0"):
        assert trajectory_table(unnamed, lambda p: fake_table())[schema.STEP].eq(0).all()


def test_eole_run_trajectory_loads_each_checkpoint_once(monkeypatch):
    pytest.importorskip("eole", reason="EOLE checkpoints need the eole extra")
    from attn_entropy_cli import compute
    from attn_entropy_cli.data import DataOptions
    from attn_entropy_cli.loaders import eole as eole_loader
    from attn_entropy_cli.loaders.base import LoadOptions

    loads = []
    real_load = eole_loader.EoleAdapter.load.__func__
    monkeypatch.setattr(
        eole_loader.EoleAdapter,
        "load",
        classmethod(lambda cls, path, options: loads.append(path) or real_load(cls, path, options)),
    )
    data = DataOptions(SAMPLE_RUNS / "data" / "src-val.txt", limit=10)
    options = compute.ComputeOptions(batch_size=4)
    seen = ProgressLog()
    table = compute_trajectory([RUN_LM], data, LoadOptions(), options, seen)
    assert [p.name for p in loads] == ["step_100", "step_200", "step_300"]
    assert seen.calls == [(1, 3), (2, 3), (3, 3)]
    assert sorted(table[schema.STEP].unique()) == [100, 200, 300]
    assert len(table) == 3 * 2 * 4  # steps x layers x heads
    per_step = table.groupby(schema.STEP)[schema.ENTROPY].mean()
    assert per_step.is_monotonic_decreasing  # this LM's heads focus as it trains
