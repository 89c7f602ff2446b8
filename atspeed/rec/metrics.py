"""Top-K recommendation quality: Recall@K and NDCG@K with binary relevance.

A user's ground truth is a set of items (all their held-out items; repeats in a list count once); a
ranking is the list of item ids the model returned, best first (None for an invalid generation,
which is never a hit). An item counts once, at its first position, so repeats cannot push a score
above 1.

    Recall@K = |hits in top K| / |truth|
    NDCG@K   = DCG@K / IDCG@K,  DCG@K = sum over hit positions r (1-based) <= K of 1 / log2(r + 1),
               IDCG@K = the DCG of a perfect ranking: min(|truth|, K) hits at the top.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np

from atspeed.decoding.checks import check_int


def hits(ranked: Sequence[int | None], truth: Collection[int], k: int) -> np.ndarray:
    """[k] bool: position r of the top k holds a relevant item seen for the first time."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if not truth:
        raise ValueError("The ground truth is empty: Recall and NDCG are undefined for this user.")
    out = np.zeros(k, dtype=bool)
    seen: set[int] = set()
    for r, item in enumerate(ranked[:k]):
        if item is not None and item in truth and item not in seen:
            out[r] = True
        seen.add(item)
    return out


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))  # [k]: 1/log2(2), 1/log2(3), ...


def recall_from_hits(hit: np.ndarray, n_truth: np.ndarray) -> np.ndarray:
    """hit [U, k] bool, n_truth [U] -> [U] recall."""
    return hit.sum(-1) / n_truth


def ndcg_from_hits(hit: np.ndarray, n_truth: np.ndarray) -> np.ndarray:
    """hit [U, k] bool, n_truth [U] -> [U] NDCG (ideal: min(n_truth, k) hits at the top)."""
    k = hit.shape[-1]
    disc = _discounts(k)  # [k]
    ideal = np.cumsum(disc)[np.minimum(n_truth, k) - 1]  # [U]
    return (hit * disc).sum(-1) / ideal


def recall_at_k(ranked: Sequence[int | None], truth: Collection[int], k: int) -> float:
    return float(recall_from_hits(hits(ranked, truth, k)[None], np.array([len(set(truth))]))[0])


def ndcg_at_k(ranked: Sequence[int | None], truth: Collection[int], k: int) -> float:
    return float(ndcg_from_hits(hits(ranked, truth, k)[None], np.array([len(set(truth))]))[0])


def evaluate(
    rankings: Sequence[Sequence[int | None]], truths: Sequence[Collection[int]], ks: Iterable[int] = (5, 10, 20)
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over users: {"recall@5": ..., "ndcg@5": ..., ...}."""
    if len(rankings) != len(truths):
        raise ValueError(f"{len(rankings)} rankings but {len(truths)} ground-truth sets.")
    if not rankings:
        raise ValueError("No users to evaluate.")
    ks = sorted(set(check_int("K", k) for k in ks))
    if not ks:
        raise ValueError("ks is empty: give at least one K to evaluate at.")
    hit = np.stack([hits(r, t, ks[-1]) for r, t in zip(rankings, truths, strict=True)])  # [U, K_max]
    n_truth = np.array([len(set(t)) for t in truths])  # [U]; a repeated truth item is one item
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float(recall_from_hits(hit[:, :k], n_truth).mean())
        out[f"ndcg@{k}"] = float(ndcg_from_hits(hit[:, :k], n_truth).mean())
    return out
