"""Semantic IDs for a catalogue: item vectors -> residual k-means codes -> unique token tuples.

Why: generative recommendation names every item by a short code path (`<a_7><b_12><c_3><d_0>`),
so items that look alike share a prefix and the model can generate them token by token. LC-Rec /
AtSpeed learn the codes with an RQ-VAE over text embeddings; here residual k-means stands in for it
(the same idea without training: each level clusters what the previous levels left unexplained).
When no item text or features exist, `cooccurrence_embeddings` makes vectors from the interaction
log alone (PPMI over a sliding window, then truncated SVD, as in word2vec-style factorisations).

The last level is not learnt: it numbers the items that share all earlier codes 0, 1, 2, ... so
every item's ID is unique, as the `<d_·>` level of the Beauty index does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD

LEVEL_PREFIXES = tuple("abcdefghijklmnopqrstuvwxyz")  # <a_·> first level, <b_·> second, ... as in Beauty
KMEANS_INITS = 1  # k-means++ restarts per level; fixed so the IDs depend only on the data and the seed


def cooccurrence_embeddings(
    sequences: Sequence[Sequence[int]], num_items: int, dim: int = 32, window: int = 3, seed: int = 0
) -> np.ndarray:
    """[I, dim] unit item vectors: items that appear near each other in a sequence point the same way.

    Counts item pairs at most `window` positions apart (both directions), weights them by positive
    PMI, so popular items do not look similar to everything, then keeps the top singular directions
    (at most I - 1; unused columns stay zero). Items with no co-occurrence carry no signal and get a
    seeded random direction instead of a shared zero vector: otherwise all of them would fall into
    one cluster at every level and form a collision group too large for the last level.
    """
    if num_items < 1 or dim < 1 or window < 1:
        raise ValueError(f"need num_items, dim and window >= 1, got {num_items}, {dim}, {window}.")
    weights = _ppmi(_cooccurrence_counts(sequences, num_items, window))  # [I, I] sparse, symmetric
    vectors = np.zeros((num_items, dim))  # [I, dim]
    k = min(dim, num_items - 1)
    if weights.nnz and k >= 1:
        svd = TruncatedSVD(n_components=k, algorithm="randomized", random_state=seed)
        vectors[:, :k] = svd.fit_transform(weights)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # [I, 1]
    silent = norms[:, 0] < 1e-12
    vectors[~silent] /= norms[~silent]
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((num_items, dim))  # drawn for all items, so a row depends only on the seed
    vectors[silent] = noise[silent] / np.linalg.norm(noise[silent], axis=1, keepdims=True)
    return vectors


def _cooccurrence_counts(sequences: Sequence[Sequence[int]], num_items: int, window: int) -> sp.csr_matrix:
    rows, cols = [], []
    for n, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)
        if seq.size and (seq.min() < 0 or seq.max() >= num_items):
            raise ValueError(f"sequence {n}: item ids must be 0 … {num_items - 1}, got {seq.tolist()}.")
        for offset in range(1, min(window, len(seq) - 1) + 1):
            rows.append(seq[:-offset])
            cols.append(seq[offset:])
    if not rows:
        return sp.csr_matrix((num_items, num_items))
    r, c = np.concatenate(rows), np.concatenate(cols)
    keep = r != c  # an item repeated next to itself says nothing about its neighbours
    r, c = r[keep], c[keep]
    ones = np.ones(len(r))
    counts = sp.coo_matrix((ones, (r, c)), shape=(num_items, num_items)).tocsr()
    return (counts + counts.T).tocsr()  # sums duplicate pairs


def _ppmi(counts: sp.csr_matrix) -> sp.csr_matrix:
    """max(0, log p(i, j) / (p(i) p(j))) on the stored entries."""
    coo = counts.tocoo()
    total = coo.data.sum()
    row_sum = np.asarray(counts.sum(axis=1)).ravel()  # [I]
    pmi = np.log(coo.data * total / (row_sum[coo.row] * row_sum[coo.col]))
    keep = pmi > 0
    shape = counts.shape
    return sp.coo_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=shape).tocsr()


def residual_kmeans_ids(
    embeddings: np.ndarray, levels: int = 3, codes_per_level: int = 256, seed: int = 0
) -> np.ndarray:
    """[I, levels + 1] codes: `levels` residual k-means codes, then a code that makes each row unique.

    Level l clusters the residuals left by levels 0 … l-1 (one codebook per level, shared by all
    items) into min(codes_per_level, distinct residuals) clusters. Items that end with the same
    `levels` codes are numbered 0, 1, 2, ... in item order; a group larger than `codes_per_level`
    cannot be numbered and is an error.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"embeddings must be a non-empty [items, dim] array, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf.")
    if levels < 1 or codes_per_level < 1:
        raise ValueError(f"need levels >= 1 and codes_per_level >= 1, got {levels}, {codes_per_level}.")
    if levels + 1 > len(LEVEL_PREFIXES):
        raise ValueError(f"at most {len(LEVEL_PREFIXES) - 1} levels (one token prefix per level).")
    codes = np.zeros((len(x), levels + 1), dtype=np.int64)  # [I, L + 1]
    residual = x.copy()  # [I, D]
    for level in range(levels):
        codes[:, level], centers = _kmeans(residual, codes_per_level, seed)
        residual -= centers[codes[:, level]]
    codes[:, levels] = _disambiguate(codes[:, :levels], codes_per_level)
    return codes


def _kmeans(x: np.ndarray, max_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels [I] and centers [K, D]; K is capped by the distinct rows so no cluster is empty."""
    scale = np.abs(x).max() or 1.0
    distinct = len(np.unique(np.round(x / scale, 9), axis=0))  # rows equal up to float noise are one point
    k = min(max_clusters, distinct)
    if k == 1:
        return np.zeros(len(x), dtype=np.int64), x.mean(axis=0, keepdims=True)
    km = KMeans(n_clusters=k, n_init=KMEANS_INITS, random_state=seed).fit(x)
    return km.labels_.astype(np.int64), km.cluster_centers_


def _disambiguate(prefix: np.ndarray, codes_per_level: int) -> np.ndarray:
    """[I] rank of each item among the items with the same prefix (item order)."""
    _, group, sizes = np.unique(prefix, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)  # [I]
    if sizes.max() > codes_per_level:
        g = int(sizes.argmax())
        members = np.flatnonzero(group == g)
        raise ValueError(
            f"{sizes[g]} items (e.g. {members[:5].tolist()}) share the codes {prefix[members[0]].tolist()}, but "
            f"the last level has only codes_per_level={codes_per_level} codes to tell them apart. Raise "
            "codes_per_level or levels, or give those items embeddings that differ."
        )
    order = np.argsort(group, kind="stable")  # items grouped, item order inside a group
    starts = np.cumsum(sizes) - sizes  # [G] first position of each group in `order`
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - starts[group[order]]
    return rank


def add_disambiguation_level(index: Mapping[int, Sequence[str]]) -> dict[int, tuple[str, ...]]:
    """`index` with one more token per ID that numbers the items sharing an ID 0, 1, 2, ... (item order),
    as the last level of `residual_kmeans_ids` does: every ID becomes unique, and the earlier tokens stay.

    For indexes made elsewhere (LC-Rec's Beauty has 9 IDs shared by 21 items). An item whose ID was
    unique gets code 0, so the new level is `<e_0>` for almost every item of a 4-token index.
    """
    items = sorted(index)
    length = len(index[items[0]])
    if length + 1 > len(LEVEL_PREFIXES):
        raise ValueError(f"IDs of {length} tokens cannot take one more level (at most {len(LEVEL_PREFIXES)}).")
    group = {sid: g for g, sid in enumerate(dict.fromkeys(tuple(index[i]) for i in items))}
    codes = np.array([[group[tuple(index[i])]] for i in items], dtype=np.int64)  # [I, 1] one code per distinct ID
    rank = _disambiguate(codes, codes_per_level=len(items))  # [I]
    prefix = LEVEL_PREFIXES[length]
    return {i: (*index[i], f"<{prefix}_{int(r)}>") for i, r in zip(items, rank, strict=True)}


def ids_to_tokens(codes: np.ndarray) -> dict[int, tuple[str, ...]]:
    """Code matrix [I, L] -> index {item: ("<a_7>", "<b_12>", ...)}, as in `<name>.index.json`."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or not 1 <= codes.shape[1] <= len(LEVEL_PREFIXES):
        raise ValueError(f"codes must be an [items, levels] array with 1 … 26 levels, got shape {codes.shape}.")
    if not np.issubdtype(codes.dtype, np.integer) or (codes < 0).any():
        raise ValueError("codes must be non-negative integers.")
    return {
        item: tuple(f"<{p}_{int(c)}>" for p, c in zip(LEVEL_PREFIXES, row, strict=False))
        for item, row in enumerate(codes)
    }
