"""The popularity baseline: counts, tie order, per-user lists, and the issue's figures on Beauty."""

from __future__ import annotations

import pytest

from atspeed.rec.baselines import popularity, popularity_lists
from atspeed.rec.data import RecDataset, eval_cases, load_dataset
from atspeed.rec.metrics import evaluate

INDEX = {i: (f"<a_{i}>",) for i in range(5)}


def toy(train=None, valid=None, test=None) -> RecDataset:
    """5 items; by default item 2 is the most frequent in train+valid, items 0 and 3 tie behind it."""
    return RecDataset(
        name="toy",
        index=INDEX,
        train=train if train is not None else {1: (2, 3, 2), 2: (0, 2)},
        valid=valid if valid is not None else {1: (0,), 2: (3,)},
        test=test if test is not None else {1: (4, 4, 4, 4), 2: (1,)},
    )


def test_most_frequent_item_comes_first():
    assert popularity(toy(), 1) == [2]


def test_ties_are_broken_by_lower_item_id():
    assert popularity(toy(), 3) == [2, 0, 3]  # 0 and 3 both occur twice


def test_every_occurrence_counts_not_every_user():
    ds = toy(train={1: (1, 1, 1), 2: (0,), 3: (0,)}, valid={}, test={})
    assert popularity(ds, 1) == [1]


def test_test_split_is_not_counted_by_default():
    assert 4 not in popularity(toy(), 3)  # item 4 occurs four times, only in test


def test_chosen_splits_are_counted():
    assert popularity(toy(), 1, splits=("test",)) == [4]


def test_unseen_items_fill_the_tail_in_id_order():
    assert popularity(toy(), 5) == [2, 0, 3, 1, 4]


@pytest.mark.parametrize("k", [0, 6])
def test_k_outside_the_catalogue_is_an_error(k):
    with pytest.raises(ValueError, match=rf"k must be between 1 and the number of items \(5\), got {k}"):
        popularity(toy(), k)


@pytest.mark.parametrize("k", [2.5, True])
def test_k_that_is_not_an_integer_is_an_error(k):
    with pytest.raises(ValueError, match=rf"k must be an integer, got {k}"):
        popularity(toy(), k)


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="unknown split"):
        popularity(toy(), 1, splits=("training",))


def test_every_user_gets_the_same_list_by_default():
    ds = toy()
    lists = popularity_lists(ds, eval_cases(ds, "test"), 2)
    assert lists == [[2, 0], [2, 0]]


def test_history_items_are_kept_by_default():
    ds = toy()
    (case, _) = eval_cases(ds, "test")
    assert set(popularity_lists(ds, [case], 3)[0]) <= set(case.history)  # all three are in user 1's history


def test_excluding_history_fills_up_from_further_down():
    ds = toy()
    cases = eval_cases(ds, "test")  # user 1 history (2, 3, 2, 0), user 2 history (0, 2, 3)
    assert popularity_lists(ds, cases, 2, exclude_history=True) == [[1, 4], [1, 4]]


def test_excluding_history_drops_items_older_than_a_cases_recent_history():
    ds = toy()
    cases = eval_cases(ds, "test", max_history=1)  # user 1 keeps (0,), user 2 keeps (3,)
    assert popularity_lists(ds, cases, 2, exclude_history=True) == [[1, 4], [1, 4]]


@pytest.mark.parametrize("exclude_history", [False, True])
def test_counting_the_split_the_cases_hold_out_is_refused(exclude_history):
    """The default splits (train + valid) on validation cases would count the answers as popular, or
    exclude them as history: recall 0 or inflated, silently."""
    ds = toy()
    with pytest.raises(ValueError, match=r"include 'valid', the split these cases hold out"):
        popularity_lists(ds, eval_cases(ds, "valid"), 2, exclude_history=exclude_history)


def test_lists_score_with_the_shared_metric_code():
    ds = toy()
    cases = eval_cases(ds, "valid")  # user 1 truth {0}, user 2 truth {3}
    scores = evaluate(popularity_lists(ds, cases, 3, splits=("train",)), [c.truth for c in cases], ks=(3,))
    assert scores["recall@3"] == 1.0  # train ranking [2, 0, 3]: both valid items in the top 3


def test_beauty_popularity_of_train_and_valid_gives_the_issues_figures(beauty_dir):
    ds = load_dataset(beauty_dir, allow_duplicate_ids=True)
    cases = eval_cases(ds, "test")
    assert len(cases) == 3553
    scores = evaluate(popularity_lists(ds, cases, 20), [c.truth for c in cases])
    assert [round(scores[f"recall@{k}"], 4) for k in (5, 10, 20)] == [0.0064, 0.0087, 0.0124]
