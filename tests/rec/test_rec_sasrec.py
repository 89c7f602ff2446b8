"""benchmarks/sasrec.py (the SASRec baseline) trains and ranks end to end on the synthetic catalogue."""

from __future__ import annotations

import pytest
import torch
from helpers import benchmark_script


@pytest.fixture(scope="module")
def sasrec():
    with benchmark_script("sasrec") as module:
        yield module


@pytest.fixture(scope="module")
def result(sasrec, synthetic):
    torch.set_num_threads(1)
    return sasrec.train_and_evaluate(synthetic, sasrec.Settings(max_epochs=2), log=lambda line: None)


def test_every_test_user_gets_twenty_distinct_valid_item_ids(result, synthetic):
    from atspeed.rec.data import eval_cases

    assert len(result.rankings) == len(eval_cases(synthetic, "test"))
    for ranked in result.rankings:
        assert len(ranked) == 20 == len(set(ranked))
        assert all(0 <= item < synthetic.num_items for item in ranked)


def test_metrics_are_reported_at_5_10_and_20(result):
    assert set(result.test) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}
    assert all(0.0 <= v <= 1.0 for v in result.test.values())


def test_training_runs_the_epochs_and_keeps_the_best(result):
    assert result.epochs == 2 and result.stopped == "max_epochs"
    assert result.best_valid_ndcg10 == max(e["valid_ndcg@10"] for e in result.history)


def test_excluding_history_never_recommends_a_history_item(sasrec, synthetic):
    torch.manual_seed(0)
    model = sasrec.SASRec(synthetic.num_items, sasrec.Settings())
    histories = [(0, 1, 2, 3), (5,)]
    for history, ranked in zip(histories, sasrec.top_k(model, histories, 20, 20, exclude_history=True)):
        assert not set(history) & set(ranked)


def test_left_padding_puts_the_newest_item_last(sasrec):
    assert sasrec.left_pad([(4, 7), ()], 3).tolist() == [[0, 5, 8], [0, 0, 0]]


def test_padding_does_not_change_the_prediction(sasrec):
    torch.manual_seed(0)
    model = sasrec.SASRec(50, sasrec.Settings(max_len=8)).eval()
    short = model(sasrec.left_pad([(3, 9, 4)], 3))[:, -1]
    padded = model(sasrec.left_pad([(3, 9, 4)], 8))[:, -1]
    assert torch.allclose(short, padded, atol=1e-6)  # positions count from the right; padding is never attended


def test_the_final_fit_trains_every_epoch_without_validation_and_keeps_the_last(sasrec, synthetic):
    torch.set_num_threads(1)
    fit = sasrec.train_and_evaluate(synthetic, sasrec.Settings(max_epochs=2), log=lambda line: None,
                                    include_valid=True)
    assert (fit.epochs, fit.best_epoch) == (2, 2)
    assert [e["valid_ndcg@10"] for e in fit.history] == [None, None]
