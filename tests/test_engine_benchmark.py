"""The engine table's timing plan: which methods are timed side by side."""

from __future__ import annotations

import pytest
from helpers import make_model

from atspeed import benchmarking
from atspeed.benchmarking import Peak, engine_cell


@pytest.fixture
def timed_groups(monkeypatch):
    """compare() replaced by one that runs each method once and records which were timed together."""
    groups = []

    def compare(methods, repeats):
        groups.append((sorted(methods), repeats))
        return {name: (1.0, fn()) for name, fn in methods.items()}

    monkeypatch.setattr(benchmarking, "compare", compare)
    return groups


def cell(batch: int, beams: int):
    m = make_model(vocab_size=32)
    return engine_cell(
        m, m, m, Peak(1e9, 1e9), batch=batch, beams=beams, prompt=5, new=2, repeats=3, methods=("hf", "tree", "engine")
    )


def test_hf_is_interleaved_with_the_engine_in_small_cells(timed_groups):
    out = cell(batch=2, beams=3)
    assert timed_groups == [(["engine", "hf", "tree"], 3)]
    assert out.differ == []


def test_hf_is_timed_apart_and_once_above_the_row_limit(timed_groups, monkeypatch):
    monkeypatch.setattr(benchmarking, "HF_APART_ROWS", 5)
    cell(batch=2, beams=3)
    assert timed_groups == [(["hf"], 1), (["engine", "tree"], 3)]
