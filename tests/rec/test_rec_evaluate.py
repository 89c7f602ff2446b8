"""evaluate_decoding(): one row per (K, method) with quality, speed and the mismatch count, each
row timed against its HF baseline (beam search, or beam sampling for the samplers); the report
writes the same rows as JSON, CSV and a PNG plot."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

from atspeed.rec.data import eval_cases
from atspeed.rec.evaluate import evaluate_decoding
from atspeed.rec.metrics import evaluate
from atspeed.rec.recipes import new_model
from atspeed.rec.recommend import build_recommender, recommend
from atspeed.rec.report import format_table, write_report


@pytest.fixture(scope="module")
def rec(tokenizer, synthetic):
    torch.manual_seed(5)
    target = new_model("tiny", tokenizer).double()
    with torch.no_grad():
        target.lm_head.weight.mul_(20.0)  # spread the scores of a random model (no near-ties)
    draft = copy.deepcopy(target)
    return build_recommender(target, tokenizer, synthetic.index, draft)


@pytest.fixture(scope="module")
def cases(synthetic):
    return eval_cases(synthetic)[:6]


@pytest.fixture(scope="module")
def rows(rec, cases):
    return evaluate_decoding(rec, cases, ks=(2, 5), warmup=1, progress=False)


def test_one_row_per_k_and_method_in_order(rows):
    assert [(r.k, r.method) for r in rows] == [
        (k, m) for k in (2, 5) for m in ("hf", "tree", "speculative", "hf-sample", "speculative-relaxed")
    ]


def test_exact_methods_show_zero_mismatches_and_samplers_are_not_compared(rows):
    by_method = {(r.k, r.method): r for r in rows}
    for k in (2, 5):
        assert by_method[k, "tree"].mismatches == 0
        assert by_method[k, "speculative"].mismatches == 0
        assert by_method[k, "hf-sample"].mismatches is None
        assert by_method[k, "speculative-relaxed"].mismatches is None


def test_relaxed_speculative_is_timed_against_hf_beam_sampling(rows):
    by_method = {(r.k, r.method): r for r in rows}
    for k in (2, 5):
        relaxed, sample = by_method[k, "speculative-relaxed"], by_method[k, "hf-sample"]
        assert (relaxed.baseline, sample.baseline) == ("hf-sample", "hf-sample")
        assert relaxed.speedup_vs_hf == pytest.approx(sample.ms_per_user / relaxed.ms_per_user)


def test_beam_search_methods_are_timed_against_hf_beam_search(rows):
    for r in rows:
        if r.method in ("hf", "tree", "speculative"):
            assert r.baseline == "hf"


def test_quality_is_recall_and_ndcg_of_the_returned_lists(rec, cases, rows):
    lists = recommend(rec, [c.history for c in cases], 5, method="tree").items
    expected = evaluate(lists, [c.truth for c in cases], ks=[5])
    row = next(r for r in rows if (r.k, r.method) == (5, "tree"))
    assert (row.recall, row.ndcg) == (expected["recall@5"], expected["ndcg@5"])


def test_speedup_is_relative_to_hf_and_accepted_levels_only_for_speculative(rows):
    for r in rows:
        assert r.speedup_vs_hf > 0
        assert (r.accepted_levels_per_round is not None) == r.method.startswith("speculative")
        if r.method in ("hf", "hf-sample"):
            assert r.speedup_vs_hf == 1.0 and r.target_calls_per_user == 4


def test_an_identical_draft_needs_fewer_target_calls(rows):
    for r in rows:
        if r.method == "speculative":
            assert r.target_calls_per_user < 4


def test_without_a_draft_only_hf_and_tree_run(rec, cases):
    plain = build_recommender(rec.target, rec.tokenizer, rec.index)
    rows = evaluate_decoding(plain, cases[:2], ks=(3,), warmup=0, progress=False)
    assert [r.method for r in rows] == ["hf", "tree"]


def test_without_hf_tree_is_the_reference_and_speedup_is_absent(rec, cases):
    rows = evaluate_decoding(rec, cases[:2], ks=(3,), methods=["tree", "speculative"], warmup=0, progress=False)
    assert [r.mismatches for r in rows] == [0, 0]
    assert all(r.speedup_vs_hf is None and r.baseline is None for r in rows)


def test_relaxed_without_hf_sample_has_no_speedup_rather_than_one_over_beam_search(rec, cases):
    rows = evaluate_decoding(rec, cases[:2], ks=(3,), methods=["hf", "speculative-relaxed"], warmup=0,
                             progress=False)
    relaxed = rows[1]
    assert (relaxed.baseline, relaxed.speedup_vs_hf) == (None, None)


def test_no_users_is_an_error(rec):
    with pytest.raises(ValueError, match="No test users"):
        evaluate_decoding(rec, [], progress=False)


def test_a_k_beyond_the_catalogue_is_refused_before_any_k_runs(rec, cases, monkeypatch):
    import atspeed.rec.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "recommend", lambda *a, **kw: pytest.fail("decoded before checking every K"))
    with pytest.raises(ValueError, match=rf"k must be between 1 and the number of items \({rec.num_items}\)"):
        evaluate_decoding(rec, cases, ks=(2, rec.num_items + 1), progress=False)


def test_an_unknown_method_is_an_error(rec, cases):
    with pytest.raises(ValueError, match="Unknown methods"):
        evaluate_decoding(rec, cases, methods=["beam"], progress=False)


def test_the_table_shows_every_row_with_dashes_where_a_value_does_not_apply(rows):
    table = format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 1 + len(rows)
    assert "lists != HF" in lines[0] and "speedup vs HF" in lines[0]
    relaxed = next(line for line in lines if "speculative-relaxed" in line)
    assert relaxed.rstrip().endswith("-")


def test_the_table_names_each_rows_baseline(rows):
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["K", "method", "baseline"]
    relaxed = next(line for line in lines if "speculative-relaxed" in line)
    assert relaxed.split()[:3] == ["2", "speculative-relaxed", "hf-sample"]


def test_the_report_writes_json_csv_and_png_with_the_same_rows(rows, tmp_path):
    paths = write_report(rows, tmp_path, meta={"dataset": "synthetic"})
    payload = json.loads(paths["json"].read_text())
    assert payload["meta"] == {"dataset": "synthetic"}
    assert payload["results"] == [r.as_dict() for r in rows]
    frame = pd.read_csv(paths["csv"])
    assert list(frame["method"]) == [r.method for r in rows]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json", "results.png"]  # no temps


def test_numpy_integer_settings_reach_the_json_report_as_plain_numbers(synthetic_dir, tmp_path):
    import numpy as np

    from atspeed.rec.experiment import evaluate_run
    from atspeed.rec.recommend import PRETRAINED

    evaluate_run(synthetic_dir, PRETRAINED / "synthetic-target", ks=[1], methods=["tree"], users=np.int64(2),
                 batch_size=np.int64(1), gamma=np.int64(3), out=tmp_path / "report", log=lambda _: None)
    meta = json.loads((tmp_path / "report" / "results.json").read_text())["meta"]
    assert (meta["users"], meta["batch_size"], meta["gamma"]) == (2, 1, 3)  # users: the count of cases decoded
