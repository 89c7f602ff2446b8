"""benchmarks/align_counts.py: accepted levels over seeds from --count-progress tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import benchmark_script


@pytest.fixture(scope="module")
def counts():
    with benchmark_script("align_counts") as module:
        yield module


def table(tmp_path: Path, seed: int, rows: dict[str, str]) -> Path:
    """A count table in the shape `bench_align.py --count-progress` prints (strict and relaxed, K = 1 and 5)."""
    lines = [f"`python benchmarks/bench_align.py --seed {seed} --count-progress`", "",
             "| draft | strict K=1 | strict K=5 | relaxed K=1 | relaxed K=5 |", "|---|---|---|---|---|"]
    lines += [f"| {d} | {cells} |" for d, cells in rows.items()]
    path = tmp_path / f"seed{seed}-counts.md"
    path.write_text("\n".join(lines + ["", "| K | draft | other table |", "|---|---|---|", "| 1 | a | x |"]) + "\n")
    return path


def test_a_count_table_is_read_by_verification_k_and_draft(counts, tmp_path):
    seed, values = counts.read_counts(table(tmp_path, 3, {"a": "2.5 | 1.5 | 1.2 | 1.1"}))
    assert seed == 3
    assert values == {("strict", 1, "a"): 2.5, ("strict", 5, "a"): 1.5, ("relaxed", 1, "a"): 1.2,
                      ("relaxed", 5, "a"): 1.1}


def test_a_run_not_yet_counted_is_left_out(counts, tmp_path):
    _, values = counts.read_counts(table(tmp_path, 0, {"a": "2.5 | — | 1.2 | 1.1"}))
    assert ("strict", 5, "a") not in values


def test_a_draft_missing_in_one_seed_is_marked_and_left_out_of_the_lead(counts, tmp_path):
    rows = {"a": "2.0 | 1.0 | 1.0 | 1.0", "c": "1.0 | 0.5 | 1.0 | 1.0"}
    runs = [counts.read_counts(table(tmp_path, 0, {**rows, "b": "1.0 | 9.0 | 1.0 | 1.0"})),
            counts.read_counts(table(tmp_path, 1, {**rows, "b": "3.0 | — | 1.0 | 1.0"}))]
    text = counts.report(runs, [], [Path("s0"), Path("s1")], [])
    assert "9.000 ± 0.000 (1)" in text  # b, strict K=5: one seed only
    assert "- K=5: a (1.000) over c (0.500): beyond the spread (not counted in every seed: b)" in text


def test_a_table_without_a_seed_is_refused(counts, tmp_path):
    path = tmp_path / "x.md"
    path.write_text("| draft | strict K=1 |\n|---|---|\n| a | 1.0 |\n")
    with pytest.raises(SystemExit, match="--seed"):
        counts.read_counts(path)


def test_a_missing_file_is_one_error_line(counts, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["align_counts.py", str(tmp_path / "seed0-counts.md")])
    with pytest.raises(SystemExit):
        counts.main()
    assert "no such file: " in capsys.readouterr().err
