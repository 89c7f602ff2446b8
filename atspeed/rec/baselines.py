"""Non-generative reference points for the evaluation table: most-popular items.

A generative recommender's Recall@K means little alone; the same numbers for "recommend what
everyone buys" (same split, same `atspeed.rec.metrics.evaluate`) show how much of it is sequence
modelling and how much is item popularity. SASRec, the sequential baseline, lives in
`benchmarks/sasrec.py` because it trains its own model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from atspeed.rec.data import SPLITS, EvalCase, RecDataset
from atspeed.rec.recommend import check_k


def popularity(ds: RecDataset, k: int, splits: Sequence[str] = ("train", "valid")) -> list[int]:
    """The `k` items that occur most often in `splits` (every occurrence counts), ties broken by
    lower item id so the list is the same on every run. Items never seen fill the tail in id order
    when `k` exceeds the seen items, so `k = ds.num_items` ranks the whole catalogue.

    The default splits are those before the test split: counting the test items would leak them.
    """
    check_k(k, ds.num_items)
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; expected some of {list(SPLITS)}.")
    counts = Counter(item for s in splits for seq in getattr(ds, s).values() for item in seq)
    ranked = sorted(range(ds.num_items), key=lambda item: (-counts[item], item))
    return ranked[:k]


def popularity_lists(
    ds: RecDataset,
    cases: Sequence[EvalCase],
    k: int,
    splits: Sequence[str] = ("train", "valid"),
    *,
    exclude_history: bool = False,
) -> list[list[int]]:
    """One top-`k` popularity list per case, for `evaluate(lists, [c.truth for c in cases])`.

    By default every user gets the same list, history items included: our beam search may also
    recommend an item from the user's history, so both are scored on the same terms.
    `exclude_history=True` drops every item the user has in `splits` (all of it, not only the
    recent part a case's history keeps) and fills up from further down the ranking, the convention
    of papers that never re-recommend a bought item. On Beauty no test item is in its user's
    history, so excluding can only help (slightly: Recall@10 0.0087 -> 0.0090).
    """
    held_out = [s for s in splits if cases and all(frozenset(getattr(ds, s, {}).get(c.user, ())) == c.truth
                                                    for c in cases)]
    if held_out:  # e.g. the default splits on validation cases: the answers would be counted (and excluded)
        raise ValueError(f"splits {tuple(splits)} include {held_out[0]!r}, the split these cases hold out: its "
                         "items would count toward popularity; count the splits before it (('train',) for "
                         "validation cases).")
    if not exclude_history:
        top = popularity(ds, k, splits)
        return [list(top) for _ in cases]
    ranked = popularity(ds, ds.num_items, splits)
    lists = []
    for case in cases:
        seen = set(case.history).union(*(getattr(ds, s).get(case.user, ()) for s in splits))
        lists.append([item for item in ranked if item not in seen][:k])
    return lists
