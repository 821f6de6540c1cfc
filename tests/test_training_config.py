"""Reading the four attention-entropy options from EOLE training configs."""

import json
from pathlib import Path

import pytest

from attn_entropy_cli.errors import AttnentWarning, InputError, UsageError
from attn_entropy_cli.training_config import (
    ALL,
    EntropyConfig,
    entropy_options_for,
    find_run_config,
    read_entropy_config,
    resolve,
)

SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "sample_runs"


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_real_run_yaml_and_checkpoint_config():
    run_a = read_entropy_config(SAMPLE_RUNS / "runA" / "runA.yaml")
    assert run_a == EntropyConfig(True, None, None, "mean", SAMPLE_RUNS / "runA" / "runA.yaml")
    assert read_entropy_config(SAMPLE_RUNS / "runB" / "runB.yaml").aggregation == "max"
    assert read_entropy_config(SAMPLE_RUNS / "runD" / "runD.yaml").log_attention_entropy is False
    checkpoint = SAMPLE_RUNS / "runLM" / "model" / "step_300" / "config.json"
    run_lm = read_entropy_config(checkpoint)
    assert (run_lm.types, run_lm.aggregation, run_lm.source) == (("std",), "mean", checkpoint)


def test_top_level_and_training_section(tmp_path):
    top = write(
        tmp_path,
        "attention_entropy_types: [context, self]\n"
        "attention_entropy_layers: [1]\n"
        "attention_entropy_aggregation: min\n",
    )
    assert read_entropy_config(top) == EntropyConfig(None, ("context", "self"), (1,), "min", top)

    both = write(
        tmp_path,
        "attention_entropy_aggregation: min\ntraining:\n  attention_entropy_aggregation: max\n",
        "both.yaml",
    )
    assert read_entropy_config(both).aggregation == "max"
    assert read_entropy_config(write(tmp_path, "seed: 1\n", "none.yaml")).is_empty()


def test_command_line_wins():
    config = EntropyConfig(True, ("context",), (0, 1), "max", Path("run.yaml"))
    merged = resolve(EntropyConfig(types=("self",), aggregation="min"), config)
    assert merged == EntropyConfig(
        True, ("self",), (0, 1), "min", Path("run.yaml"), ("log_attention_entropy", "layers")
    )
    assert resolve(EntropyConfig(layers=(1,)), None) == EntropyConfig(layers=(1,))
    assert merged.option_name("types") == "--types"
    assert merged.option_name("layers") == "attention_entropy_layers in run.yaml"
    assert merged.describe_source() == (
        "attention-entropy options from run.yaml: attention_entropy_layers [0, 1]"
    )


def test_all_on_the_command_line_overrides_the_config():
    config = EntropyConfig(True, ("std",), (1,), "max", Path("run.yaml"))
    merged = resolve(EntropyConfig(types=ALL, layers=ALL), config)
    assert (merged.types, merged.layers, merged.aggregation) == (None, None, "max")
    assert merged.describe_source() == (
        "attention-entropy options from run.yaml: attention_entropy_aggregation max"
    )
    assert resolve(EntropyConfig(types=ALL), None).types is None


def test_eole_only_types_are_dropped_with_a_warning(tmp_path):
    path = write(tmp_path, "training:\n  attention_entropy_types: [std, align]\n")
    with pytest.warns(AttnentWarning, match="names align, which attnent does not measure"):
        assert read_entropy_config(path).types == ("std",)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "attention_entropy_aggregation: median\n",
            "attention_entropy_aggregation in {path} is 'median'. Use one of mean, max, min",
        ),
        (
            "attention_entropy_types: [cross]\n",
            "attention_entropy_types in {path} names 'cross'. Use enc_self, self, context, std",
        ),
        (
            "attention_entropy_layers: [first]\n",
            "attention_entropy_layers in {path} is ['first'], not a list of layer indices. "
            "Write it as e.g. [0, 1]",
        ),
        (
            "log_attention_entropy: sometimes\n",
            "log_attention_entropy in {path} is 'sometimes', not true or false. Fix the config",
        ),
        ("- a\n- b\n", "config {path} is not a mapping of options. Give an EOLE training config"),
    ],
)
def test_bad_values_name_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as error:
        read_entropy_config(path)
    assert str(error.value) == message.format(path=path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(UsageError, match="does not exist. Check the path given to --config"):
        read_entropy_config(tmp_path / "absent.yaml")
    with pytest.raises(InputError, match="cannot read config .*bad.yaml"):
        read_entropy_config(write(tmp_path, "a: [1, 2\n", "bad.yaml"))


def test_find_run_config(tmp_path):
    assert find_run_config(SAMPLE_RUNS / "runA") == SAMPLE_RUNS / "runA" / "runA.yaml"
    step = SAMPLE_RUNS / "runLM" / "model" / "step_200"
    assert find_run_config(step) == step / "config.json"
    assert find_run_config(SAMPLE_RUNS / "data" / "src-val.txt") is None

    # a run folder without YAML: its latest checkpoint's config.json
    run = tmp_path / "run"
    for n in (100, 200):
        (run / "model" / f"step_{n}").mkdir(parents=True)
        (run / "model" / f"step_{n}" / "config.json").write_text(json.dumps({"training": {}}))
    assert find_run_config(run) == run / "model" / "step_200" / "config.json"

    # Hugging Face's config.json is not a training config
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert find_run_config(hf) is None

    # several YAML files, none named after the folder: none is guessed
    (run / "a.yaml").write_text("seed: 1\n")
    (run / "b.yaml").write_text("seed: 2\n")
    with pytest.warns(AttnentWarning, match="holds 2 YAML files"):
        assert find_run_config(run) is None


def test_options_for_compute(tmp_path):
    cli = EntropyConfig(aggregation="min")
    run_b = entropy_options_for([SAMPLE_RUNS / "runB"], None, cli)
    assert (run_b.aggregation, run_b.log_attention_entropy) == ("min", True)
    assert run_b.source == SAMPLE_RUNS / "runB" / "runB.yaml"
    given = write(tmp_path, "training:\n  attention_entropy_layers: [1]\n")
    from_file = entropy_options_for([SAMPLE_RUNS / "runB"], given, cli)
    assert (from_file.layers, from_file.aggregation, from_file.source) == ((1,), "min", given)
    assert entropy_options_for([SAMPLE_RUNS / "data"], None, cli) == cli
    assert from_file.describe_source() == (
        f"attention-entropy options from {given}: attention_entropy_layers [1]"
    )
