"""benchmarks/align_seeds.py: the spread of bench_align.py's figures over seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import benchmark_script


@pytest.fixture(scope="module")
def seeds():
    with benchmark_script("align_seeds") as module:
        yield module


def run(seed: int, levels: dict[str, float], **settings) -> dict:
    rows = [{"verification": "strict", "k": 5, "draft": d, "accepted_levels_per_round": v,
             "target_calls_per_user": 4 / (1 + v), "speedup_vs_hf": 1 + v} for d, v in levels.items()]
    return {"settings": {"seed": seed, "out": f"/tmp/s{seed}", "lr": 1e-4, **settings}, "rows": rows}


def test_a_lead_larger_than_both_spreads_is_beyond_the_spread(seeds):
    runs = [run(s, {"start": 1.0, "a": 2.0 + 0.01 * s, "b": 1.5 - 0.01 * s}) for s in range(3)]
    cells = {d: c for (_, _, d), c in seeds.collect(runs).items()}
    assert seeds.leader(cells).startswith("a (2.010) over b (1.490): beyond")


def test_a_lead_smaller_than_a_spread_is_within_the_spread(seeds):
    runs = [run(s, {"start": 1.0, "a": 2.0 + 0.5 * s, "b": 2.2}) for s in range(3)]
    cells = {d: c for (_, _, d), c in seeds.collect(runs).items()}
    assert seeds.leader(cells).endswith("within the spread")


def test_runs_that_differ_in_more_than_the_seed_are_refused(seeds):
    runs = [run(0, {"a": 1.0}), run(1, {"a": 1.0}, lr=1e-3)]
    with pytest.raises(SystemExit, match="lr"):
        seeds.check_same_settings(runs, [Path("s0.json"), Path("s1.json")])


def test_counts_on_all_users_replace_the_timed_subsets(seeds):
    runs = [run(s, {"start": 1.0, "a": 2.0}) for s in range(2)]
    for r in runs:
        r["rows_all"] = [{**row, "accepted_levels_per_round": 3.0, "speedup_vs_hf": 9.0} for row in r["rows"]]
    cells = {d: c for (_, _, d), c in seeds.collect(runs).items()}
    assert cells["a"]["accepted_levels_per_round"] == [3.0, 3.0]  # counted on all users
    assert cells["a"]["speedup_vs_hf"] == [3.0, 3.0]  # timed: from the subset's rows
