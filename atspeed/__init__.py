"""atspeed: fast beam search for LLMs by tree attention and speculative beam search (AtSpeed, ICLR 2025)."""

from atspeed.lazy import export_lazily

__version__ = "0.1.0"

# imported on first use: `import atspeed.rec` must not load the original API (atspeed.beamsd)
_EXPORTS = {
    "beam_search_by_TreeAttn": "atspeed.beamsd",
    "replace_beam_search_with_TreeAttn": "atspeed.beamsd_replace",
    "restore_beam_search": "atspeed.beamsd_replace",
    "tree_attention_generate": "atspeed.hf.generate",
    "UnsupportedModelError": "atspeed.hf.model",
}
export_lazily(__name__, _EXPORTS)
