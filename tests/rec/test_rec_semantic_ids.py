"""Semantic IDs from item vectors: unique, deterministic, capped codebooks, co-occurrence vectors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from atspeed.rec.semantic_ids import (
    cooccurrence_embeddings,
    ids_to_tokens,
    residual_kmeans_ids,
)


def _unique_rows(codes: np.ndarray) -> bool:
    return len({tuple(row) for row in codes}) == len(codes)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_identical_embeddings_are_told_apart_by_the_last_code():
    x = np.zeros((8, 4))
    x[5:] = np.eye(4)[:3]  # items 0-4 identical, 5-7 distinct
    codes = residual_kmeans_ids(x, levels=2, codes_per_level=8)
    assert _unique_rows(codes)
    assert len({tuple(row) for row in codes[:5, :2]}) == 1  # same embedding -> same learnt codes
    assert codes[:5, 2].tolist() == [0, 1, 2, 3, 4]  # numbered in item order


def test_same_embeddings_and_seed_give_the_same_ids():
    x = np.random.default_rng(1).standard_normal((200, 8))
    np.testing.assert_array_equal(residual_kmeans_ids(x, seed=3), residual_kmeans_ids(x, seed=3))


def test_same_sequences_and_seed_give_the_same_vectors():
    seqs = [[0, 1, 2, 3], [2, 3, 4], [5, 6, 0, 1]]
    a = cooccurrence_embeddings(seqs, num_items=9, dim=4, seed=2)
    b = cooccurrence_embeddings(seqs, num_items=9, dim=4, seed=2)
    np.testing.assert_array_equal(a, b)


def test_codes_have_one_column_per_level_plus_the_disambiguation_code():
    x = np.random.default_rng(0).standard_normal((50, 6))
    codes = residual_kmeans_ids(x, levels=4, codes_per_level=8)
    assert codes.shape == (50, 5)
    assert codes.min() >= 0 and codes[:, :4].max() < 8
    assert [t[1] for t in ids_to_tokens(codes)[0]] == ["a", "b", "c", "d", "e"]


def test_ids_to_tokens_spells_codes_with_level_prefixes():
    index = ids_to_tokens(np.array([[7, 12, 3, 0], [7, 12, 3, 1]]))
    assert index == {0: ("<a_7>", "<b_12>", "<c_3>", "<d_0>"), 1: ("<a_7>", "<b_12>", "<c_3>", "<d_1>")}


def test_clusters_per_level_are_capped_by_the_distinct_items():
    x = np.repeat(np.eye(3), 4, axis=0)  # 12 items, 3 distinct vectors
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # k-means must not be asked for more clusters than points
        codes = residual_kmeans_ids(x, levels=3, codes_per_level=256)
    assert len(set(codes[:, 0])) == 3
    assert _unique_rows(codes)


def test_collision_group_larger_than_codes_per_level_is_an_error():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="5 items .* codes_per_level=4 .* Raise codes_per_level or levels"):
        residual_kmeans_ids(x, levels=2, codes_per_level=4)


def test_items_that_cooccur_are_closer_than_items_that_never_do():
    seqs = [[0, 1, 2, 0, 1, 2], [3, 4, 5, 3, 4, 5], [1, 0, 2], [4, 3, 5]] * 3  # {0, 1, 2} and {3, 4, 5}
    x = cooccurrence_embeddings(seqs, num_items=6, dim=8)
    assert x.shape == (6, 8)
    together = [_cosine(x[i], x[j]) for g in ((0, 1, 2), (3, 4, 5)) for i in g for j in g if i < j]
    apart = [_cosine(x[i], x[j]) for i in (0, 1, 2) for j in (3, 4, 5)]
    assert min(together) > max(apart) + 0.3


def test_unseen_items_still_get_vectors_and_unique_ids():
    seqs = [[0, 1, 2], [1, 2, 3]]  # items 4 … 39 never appear
    x = cooccurrence_embeddings(seqs, num_items=40, dim=4)
    assert np.isfinite(x).all() and (np.linalg.norm(x, axis=1) > 0).all()
    codes = residual_kmeans_ids(x, levels=2, codes_per_level=16)
    assert len(ids_to_tokens(codes)) == 40 and _unique_rows(codes)


def test_sequences_with_unknown_items_are_an_error():
    with pytest.raises(ValueError, match="item ids must be 0 … 2"):
        cooccurrence_embeddings([[0, 3]], num_items=3)
