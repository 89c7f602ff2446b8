"""benchmarks/bench_align.py's untimed counting runs: the acceptance of every user counted in batches,
as if each were decoded alone, and saved so that a rerun resumes."""

from __future__ import annotations

import json
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


def test_count_only_shards_fill_the_cache_that_the_report_then_reads(bench, tmp_path, monkeypatch, capsys):
    """Two `--count-only` processes, each with its shard of the runs (side by side on a 2-core
    machine), then the run that times and reports: it decodes none of the counted runs again."""
    from click.testing import CliRunner

    from atspeed.cli import main as cli

    for args in (["data", "synthetic", tmp_path / "data", "--items", 128, "--users", 30],
                 ["train", tmp_path / "data", tmp_path / "model", "--kind", "tiny", "--max-steps", 2]):
        assert CliRunner().invoke(cli, [str(a) for a in args]).exit_code == 0
    common = ["bench_align.py", "--data", tmp_path / "data", "--target", tmp_path / "model", "--draft",
              tmp_path / "model", "--out", tmp_path / "work", "--results-dir", tmp_path / "work", "--methods", "none",
              "--steps", "1", "--batch-size", "4", "--align-eval-users", "2", "--eval-users", "6",
              "--time-users", "2", "--draft-beams", "3", "--warmup", "0", "--checkpoint", "last", "--ks", "1,3"]
    monkeypatch.setattr("sys.argv", [str(a) for a in common + ["--skip-eval"]])
    bench.main()  # training first: the count-only processes only evaluate
    counted: set[str] = set()
    for shard in ("0/2", "1/2"):
        monkeypatch.setattr("sys.argv", [str(a) for a in common + ["--count-only", "--count-shard", shard]])
        bench.main()
        files = {p.name for p in (tmp_path / "work" / "eval-all").iterdir()}
        assert len(files) == len(counted) + 5  # half of 2 K x (the tree path + 2 drafts x 2 verifications)
        counted = files
        progress = show_progress(bench, common, monkeypatch, capsys)  # what is counted so far, decoding nothing
        assert {p.name for p in (tmp_path / "work" / "eval-all").iterdir()} == counted
        assert ("— |" in progress) == (shard == "0/2") and "| start |" in progress
    assert not list((tmp_path / "work").glob("align_*"))  # no report yet

    decoded: list[int] = []  # users per decode of the reporting run
    recommend = bench.recommend
    monkeypatch.setattr(bench, "recommend", lambda rec, histories, *a, **k: (
        decoded.append(len(histories)), recommend(rec, histories, *a, **k))[1])
    monkeypatch.setattr("sys.argv", [str(a) for a in common])
    bench.main()
    assert decoded and set(decoded) == {2}  # only the timed users: no run over all 6 is decoded again
    assert {p.name for p in (tmp_path / "work" / "eval-all").iterdir()} == counted
    report = json.loads(next((tmp_path / "work").glob("align_*.json")).read_text())
    assert [(r["k"], r["draft"], r["verification"]) for r in report["rows_all"]] == [
        (k, d, v) for k in (1, 3) for d in ("start", "none") for v in ("strict", "relaxed")]


def show_progress(bench, common: list, monkeypatch, capsys) -> str:
    """bench_align --count-progress's table, with decoding forbidden."""
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(bench, "recommend", lambda *a, **k: pytest.fail("--count-progress decoded"))
        m.setattr("sys.argv", [str(a) for a in common + ["--count-progress"]])
        bench.main()
    return capsys.readouterr().out.split("Counted so far")[1]


def test_a_count_shard_outside_its_count_is_refused(bench, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["bench_align.py", "--data", "d", "--target", "t", "--draft", "d", "--out", "o",
                                     "--count-only", "--count-shard", "2/2"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "expected I/N with 0 <= I < N" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--eval-users", "6"], "--count-only fills the counts of a run with --time-users below --eval-users"),
    (["--eval-users", "6", "--time-users", "2"], "--count-only needs every method trained first; not yet: none"),
    (["--count-progress"], "--count-progress reads what --count-only processes write: give one of them"),
])
def test_count_only_is_refused_where_it_would_be_wasted_or_race(extra, message, bench, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.argv", ["bench_align.py", "--data", "d", "--target", "t", "--draft", "d", "--out",
                                     str(tmp_path), "--methods", "none", "--count-only", *extra])
    with pytest.raises(SystemExit):
        bench.main()
    assert message in capsys.readouterr().err


def test_runs_are_counted_tree_then_strict_then_relaxed_and_reported_per_k(bench, rec, draft, monkeypatch):
    """An interrupted count has whole verifications done (the cheap ones first); the rows keep their order."""
    calls = []

    def count_run(rec, histories, k, method, args, folder, cached_only):
        calls.append((k, method))
        return {"accepted": 3, "rounds": 2, "items": [[0]]}

    monkeypatch.setattr(bench, "count_run", count_run)
    monkeypatch.setattr(bench, "quality", lambda *a: {})
    monkeypatch.setattr(bench, "evaluate", lambda *a, **k: None)
    args = SimpleNamespace(ks=[1, 3], count_cache="unused", out=None)
    rows = bench.count_all(args, rec, {"a": draft}, [SimpleNamespace(history=[1], truth=2)])
    assert [method for _, method in calls] == ["tree", "tree", "speculative", "speculative", "speculative-relaxed",
                                               "speculative-relaxed"]
    assert [(r["k"], r["verification"]) for r in rows] == [(1, "strict"), (1, "relaxed"), (3, "strict"),
                                                           (3, "relaxed")]
