"""Generative recommendation: items as semantic IDs, top-K items by trie-constrained beam search.

    from atspeed.rec import load_recommender, recommend, evaluate_decoding

The public entry points are imported on first use, so `import atspeed.rec` stays light.
"""

from atspeed.lazy import export_lazily

_EXPORTS = {
    "Recommender": "atspeed.rec.recommend",
    "Recommendations": "atspeed.rec.recommend",
    "METHODS": "atspeed.rec.recommend",
    "build_recommender": "atspeed.rec.recommend",
    "load_recommender": "atspeed.rec.recommend",
    "recommend": "atspeed.rec.recommend",
    "evaluate_decoding": "atspeed.rec.evaluate",
}
export_lazily(__name__, _EXPORTS)
