"""atspeed: fast beam search for LLMs by tree attention and speculative beam search (AtSpeed, ICLR 2025)."""

from atspeed.beamsd import beam_search_by_TreeAttn
from atspeed.beamsd_replace import replace_beam_search_with_TreeAttn, restore_beam_search
from atspeed.hf.generate import tree_attention_generate
from atspeed.hf.model import UnsupportedModelError

__version__ = "0.1.0"

__all__ = [
    "beam_search_by_TreeAttn",
    "replace_beam_search_with_TreeAttn",
    "restore_beam_search",
    "tree_attention_generate",
    "UnsupportedModelError",
]
