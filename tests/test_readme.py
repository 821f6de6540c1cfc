"""The README's set-up commands are the ones CI runs, and its examples name real commands."""

from __future__ import annotations

import re

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
