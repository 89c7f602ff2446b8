"""The comparison helper is itself a specification: it must allow exactly tied hypotheses to be
permuted, compare impossible (-1e9 / -inf) hypotheses by score only, and reject everything else."""

from __future__ import annotations

import pytest
import torch

from helpers import Beams, assert_same_beams, hf_fill_value

SEQ = torch.tensor([[1, 5, 6], [1, 5, 7], [1, 8, 9], [1, 4, 4]])
IDX = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 0]], dtype=torch.int32)


def beams(order, scores, seq=SEQ, idx=IDX):
    order = torch.tensor(order)
    return Beams(seq[order], torch.tensor(scores), idx[order])


def test_identical_results_pass():
    assert_same_beams(beams([0, 1, 2, 3], [-1.0, -2.0, -3.0, -4.0]), beams([0, 1, 2, 3], [-1.0, -2.0, -3.0, -4.0]))


def test_exactly_tied_hypotheses_may_be_permuted():
    ref = beams([0, 1, 2, 3], [-1.0, -2.0, -2.0, -4.0])
    assert_same_beams(ref, beams([0, 2, 1, 3], [-1.0, -2.0, -2.0, -4.0]))


def test_untied_hypotheses_may_not_be_permuted():
    ref = beams([0, 1, 2, 3], [-1.0, -2.0, -2.5, -4.0])
    with pytest.raises(AssertionError, match="differ from HF"):
        assert_same_beams(ref, beams([0, 2, 1, 3], [-1.0, -2.0, -2.5, -4.0]))


def test_a_score_difference_of_one_ulp_fails():
    ref = beams([0, 1, 2, 3], [-1.0, -2.0, -3.0, -4.0])
    nudged = torch.nextafter(torch.tensor(-2.0), torch.tensor(0.0)).item()
    with pytest.raises(AssertionError, match="sequences_scores differ"):
        assert_same_beams(ref, beams([0, 1, 2, 3], [-1.0, nudged, -3.0, -4.0]))


def test_impossible_hypotheses_are_compared_by_score_only():
    ref = beams([0, 1, 2, 3], [-1.0, -2.0, -1e9, -1e9])
    assert_same_beams(ref, beams([0, 1, 3, 2], [-1.0, -2.0, -1e9, -1e9]))
    inf = float("-inf")
    assert_same_beams(beams([0, 1, 2, 3], [-1.0, -2.0, inf, inf]), beams([0, 1, 3, 0], [-1.0, -2.0, inf, inf]))


def test_ties_do_not_cross_requests():
    ref = beams([0, 1, 2, 3], [-1.0, -2.0, -2.0, -4.0])
    with pytest.raises(AssertionError):
        assert_same_beams(ref, beams([0, 2, 1, 3], [-1.0, -2.0, -2.0, -4.0]), rows_per_request=2)


def test_beam_indices_must_match():
    ref = beams([0, 1, 2, 3], [-1.0, -2.0, -3.0, -4.0])
    other = Beams(ref.sequences, ref.scores, ref.beam_indices.flip(0))
    with pytest.raises(AssertionError):
        assert_same_beams(ref, other)


def test_without_scores_sequences_must_be_identical():
    with pytest.raises(AssertionError):
        assert_same_beams(SEQ, SEQ[[1, 0, 2, 3]])
    assert_same_beams(SEQ, SEQ.clone())


def test_hf_fill_value_follows_hfs_precedence():
    assert hf_fill_value(None, None) == -1
    assert hf_fill_value(5, None) == -1
    assert hf_fill_value(None, [7, 8]) == 7
    assert hf_fill_value(0, 7) == 7  # pad 0 is falsy in HF's `pad or eos[0]`
    assert hf_fill_value(5, [7]) == 5
