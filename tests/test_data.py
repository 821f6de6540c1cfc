"""Data slices: text, JSON lines and TSV pairs into examples."""

import warnings

import pytest

pytest.importorskip("torch", reason="the loaders' Example lives beside torch code")

from attn_entropy_cli.data import DataOptions, read_examples  # noqa: E402
from attn_entropy_cli.errors import AttnentWarning, InputError, UsageError  # noqa: E402


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_start_and_limit_choose_the_slice_and_keep_line_numbers(tmp_path):
    data = write(tmp_path / "d.txt", ["a", "b", "c", "d"])
    examples = read_examples(DataOptions(data, start=1, limit=2))
    assert [(e.src, e.line) for e in examples] == [("b", 1), ("c", 2)]


def test_blank_lines_are_skipped_with_one_warning(tmp_path):
    data = write(tmp_path / "d.txt", ["a", "", "  ", "b"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = read_examples(DataOptions(data))
    assert [e.src for e in examples] == ["a", "b"]
    assert [str(w.message) for w in caught if w.category is AttnentWarning] == [
        f"skipped 2 blank lines of {data}"
    ]


def test_jsonl_field(tmp_path):
    data = write(tmp_path / "d.jsonl", ['{"text": "a", "x": 1}', '{"text": "b"}'])
    assert [e.src for e in read_examples(DataOptions(data))] == ["a", "b"]
    with pytest.raises(InputError, match=r"has no text field 'body' \(it has: text, x\)"):
        read_examples(DataOptions(data, field="body"))


def test_target_file_line_for_line_and_tsv(tmp_path):
    src = write(tmp_path / "s.txt", ["a", "b"])
    tgt = write(tmp_path / "t.txt", ["x", "y"])
    assert [(e.src, e.tgt) for e in read_examples(DataOptions(src, tgt=tgt))] == [
        ("a", "x"),
        ("b", "y"),
    ]
    pairs = write(tmp_path / "p.tsv", ["a\tx", "b\ty"])
    assert [(e.src, e.tgt) for e in read_examples(DataOptions(pairs, tsv=True))] == [
        ("a", "x"),
        ("b", "y"),
    ]


def test_target_count_mismatch_is_an_error(tmp_path):
    src = write(tmp_path / "s.txt", ["a", "b"])
    tgt = write(tmp_path / "t.txt", ["x"])
    with pytest.raises(InputError, match="t.txt has 1 lines and .*s.txt has 2"):
        read_examples(DataOptions(src, tgt=tgt))


def test_empty_slice_and_missing_file(tmp_path):
    data = write(tmp_path / "d.txt", ["a"])
    with pytest.raises(InputError, match="from line 6 is empty"):  # 1-based, as elsewhere
        read_examples(DataOptions(data, start=5))
    with pytest.raises(UsageError, match="does not exist"):
        read_examples(DataOptions(tmp_path / "nope.txt"))
    with pytest.raises(UsageError, match=f"data file {tmp_path} is a folder. Give a text"):
        read_examples(DataOptions(tmp_path))


def test_jsonl_source_field_with_a_plain_text_target(tmp_path):
    src = write(tmp_path / "s.jsonl", ['{"body": "a"}', '{"body": "b"}'])
    tgt = write(tmp_path / "t.txt", ["x", "y"])
    examples = read_examples(DataOptions(src, field="body", tgt=tgt))
    assert [(e.src, e.tgt) for e in examples] == [("a", "x"), ("b", "y")]
    both = write(tmp_path / "t.jsonl", ['{"body": "x"}', '{"body": "y"}'])
    examples = read_examples(DataOptions(src, field="body", tgt=both))
    assert [(e.src, e.tgt) for e in examples] == [("a", "x"), ("b", "y")]
