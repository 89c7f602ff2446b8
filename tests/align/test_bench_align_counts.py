"""benchmarks/bench_align.py's untimed counting runs: the acceptance of every user counted in batches,
as if each were decoded alone, and saved so that a rerun resumes."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from helpers import benchmark_script

from atspeed.rec.data import eval_cases
from atspeed.rec.recommend import recommend

ARGS = SimpleNamespace(count_batch=8, draft_beams=10, gamma=3, seed=0)


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("bench_align") as module:
        yield module


@pytest.fixture
def with_draft(rec, draft):
    return replace(rec, draft=draft)


@pytest.fixture
def histories(dataset):
    return [c.history for c in eval_cases(dataset, "test")]


def test_a_counted_strict_run_gives_each_users_acceptance_decoded_alone(bench, with_draft, histories, tmp_path):
    counted = bench.count_run(with_draft, histories, 5, "speculative", ARGS, tmp_path)
    alone = recommend(with_draft, histories, 5, method="speculative", batch_size=1, draft_beams=10, gamma=3)
    assert counted["items"] == alone.items
    assert (counted["rounds"], counted["accepted"]) == (alone.rounds, alone.accepted_levels)


def test_a_saved_count_is_read_again(bench, with_draft, histories, tmp_path, monkeypatch):
    first = bench.count_run(with_draft, histories, 5, "speculative", ARGS, tmp_path)
    monkeypatch.setattr(bench, "recommend", lambda *a, **k: pytest.fail("decoded again"))
    assert bench.count_run(with_draft, histories, 5, "speculative", ARGS, tmp_path) == first


def test_another_draft_is_counted_anew(bench, with_draft, histories, tmp_path, target):
    first = bench.count_run(with_draft, histories, 5, "speculative", ARGS, tmp_path)
    retrained = replace(with_draft, draft=target)  # a retrained draft of the same name: here, the target itself
    redone = bench.count_run(retrained, histories, 5, "speculative", ARGS, tmp_path)
    assert first["accepted"] / first["rounds"] < 3.0
    assert redone["accepted"] / redone["rounds"] == 3.0  # the target as its own draft accepts every level


def test_a_strict_count_serves_every_seed_and_a_sampled_one_only_its_own(bench, with_draft, histories, tmp_path,
                                                                         monkeypatch):
    other_seed = SimpleNamespace(**{**vars(ARGS), "seed": 1})
    bench.count_run(with_draft, histories, 3, "speculative", ARGS, tmp_path)
    bench.count_run(with_draft, histories, 3, "speculative-relaxed", ARGS, tmp_path)
    monkeypatch.setattr(bench, "recommend", lambda *a, **k: pytest.fail("decoded again"))
    bench.count_run(with_draft, histories, 3, "speculative", other_seed, tmp_path)
    with pytest.raises(pytest.fail.Exception, match="decoded again"):
        bench.count_run(with_draft, histories, 3, "speculative-relaxed", other_seed, tmp_path)
