"""Recall@K and NDCG@K against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from atspeed.rec.metrics import evaluate, ndcg_at_k, recall_at_k


def test_recall_is_the_share_of_truth_found_in_the_top_k():
    assert recall_at_k([1, 2, 3, 4, 5], {2, 9}, k=5) == 0.5


def test_recall_only_looks_at_the_top_k():
    assert recall_at_k([1, 2, 3], {2}, k=1) == 0.0


def test_ndcg_discounts_hits_by_log2_of_position_plus_one():
    # hits at positions 2 and 3: DCG = 1/log2(3) + 1/log2(4); ideal = 1 + 1/log2(3)
    expected = (1 / math.log2(3) + 1 / 2) / (1 + 1 / math.log2(3))
    assert ndcg_at_k([5, 1, 7], {1, 7}, k=3) == pytest.approx(expected)


def test_ndcg_ideal_counts_at_most_k_relevant_items():
    assert ndcg_at_k([1, 2], {1, 2, 3}, k=2) == pytest.approx(1.0)


def test_ndcg_ideal_counts_at_most_all_relevant_items():
    assert ndcg_at_k([8, 1, 9, 9], {1}, k=4) == pytest.approx(1 / math.log2(3))


def test_perfect_ranking_scores_one_and_no_hit_scores_zero():
    assert (recall_at_k([3, 4], {3, 4}, 2), ndcg_at_k([3, 4], {3, 4}, 2)) == (1.0, pytest.approx(1.0))
    assert (recall_at_k([5, 6], {3, 4}, 2), ndcg_at_k([5, 6], {3, 4}, 2)) == (0.0, 0.0)


def test_a_repeated_item_counts_once():
    assert recall_at_k([1, 1, 1], {1, 2}, k=3) == 0.5
    assert ndcg_at_k([1, 1], {1, 2}, k=2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_invalid_generations_are_never_hits():
    assert recall_at_k([None, 2], {2}, k=2) == 1.0
    assert ndcg_at_k([None, 2], {2}, k=2) == pytest.approx(1 / math.log2(3))


def test_a_ranking_shorter_than_k_is_fine():
    assert recall_at_k([2], {2, 3}, k=10) == 0.5


def test_a_repeated_truth_item_counts_once():
    assert recall_at_k([3], [3, 3], k=1) == ndcg_at_k([3], [3, 3], k=1) == 1.0
    assert evaluate([[3, 5]], [[3, 3]], ks=(2,)) == {"recall@2": 1.0, "ndcg@2": 1.0}


@pytest.mark.parametrize(("ks", "message"), [([-1, 4], r"K must be an integer >= 1, got -1"),
                                             ([0], r"K must be an integer >= 1, got 0"),
                                             ([2.0], r"K must be an integer >= 1, got 2\.0"),
                                             ([], r"ks is empty")])
def test_evaluate_refuses_a_k_that_is_not_a_positive_integer(ks, message):
    with pytest.raises(ValueError, match=message):
        evaluate([[9, 9, 9, 1]], [{1}], ks=ks)


def test_empty_truth_is_an_error():
    with pytest.raises(ValueError, match="ground truth is empty"):
        recall_at_k([1], set(), k=1)


def test_evaluate_averages_over_users_for_every_k():
    out = evaluate([[1, 2], [3, 4]], [{2}, {9}], ks=(1, 2))
    assert out == {
        "recall@1": 0.0,
        "ndcg@1": 0.0,
        "recall@2": 0.5,
        "ndcg@2": pytest.approx(0.5 / math.log2(3)),
    }


def test_evaluate_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 rankings but 1"):
        evaluate([[1], [2]], [{1}])
