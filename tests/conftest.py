"""Shared fixtures: the real EOLE runs bundled in sample_runs/."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RUNS = ROOT / "sample_runs"


@pytest.fixture
def sample_runs() -> Path:
    """The folder of real EOLE runs (runA, runB, runD) and their validation data."""
    return SAMPLE_RUNS


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Each test reads and writes its own run-table cache, never the user's."""
    monkeypatch.setenv("ATTNENT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
