"""The README's set-up commands are the ones CI runs, and its examples name real commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^```(?:sh|bash)\n(.*?)```", text, flags=re.S | re.M)


def test_ci_runs_the_readme_test_command():
    blocks = readme_commands()
    test_command = next(b.strip() for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci


def test_readme_quick_start_runs_compare_on_sample_runs():
    blocks = readme_commands()
    assert "attnent compare sample_runs/runA sample_runs/runB" in blocks[0]


def readme_examples():
    """(command, shown output lines) of every `$ attnent ...` example in the README."""
    examples = []
    fenced, current = False, None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced, current = not fenced, None
        elif fenced and line.startswith("$ attnent "):
            current = (line[2:], [])
            examples.append(current)
        elif fenced and current is not None and line != "...":
            current[1].append(line)
    return examples


EXAMPLES = readme_examples()


def test_readme_has_examples_of_every_command():
    commands = {command.split()[1] for command, _ in EXAMPLES}
    assert commands >= {"export", "compare", "plot", "compute"}


@pytest.mark.parametrize(("command", "shown"), EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_readme_example_runs_and_prints_what_it_shows(command, shown, tmp_path):
    if "runA/model" in command or "runLM/model" in command or "trajectory" in command:
        pytest.importorskip("eole", reason="the EOLE examples need the eole extra")
    (tmp_path / "sample_runs").symlink_to(ROOT / "sample_runs")
    if "plot trajectory.csv" in command:
        # the example before it wrote this table
        previous = next(c for c, _ in EXAMPLES if "-o trajectory.csv" in c)
        run_example(previous, tmp_path)
    head = re.search(r"\| head -(\d+)$", command)
    command = re.sub(r"\s*\|.*$", "", command)
    done = run_example(command, tmp_path)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    if head:
        printed = printed[: int(head.group(1))]
    printed += done.stderr.splitlines()
    for line in shown:
        assert line.rstrip() in [p.rstrip() for p in printed], line


def run_example(command: str, folder):
    """Run one README command line in `folder`, as the user would, through this Python."""
    args = shlex.split(command)[1:]
    env = dict(os.environ, COLUMNS="100")
    return subprocess.run(
        [sys.executable, "-m", "attn_entropy_cli", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env,
    )
