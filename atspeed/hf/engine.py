"""Which decode runs a beam search request: the static engine wherever it applies.

The static engine (atspeed.decoding.static on a SlotCache) allocates the tree cache once for the
request's shape and decodes with tensor ops only. What it does not cover runs on the dynamic tree
path (atspeed.decoding.tree_search), which grows its cache and compacts dead beams' slots; the
reason is reported in the result's stats["engine"], so nobody has to choose between two APIs.
"""

from __future__ import annotations

from atspeed.decoding.beam import BeamConfig

ENGINES = ("auto", "static", "dynamic")
# Beyond this many new tokens a static layout (K slots per level, never compacted) attends over
# more dead slots than the dynamic path's compaction keeps: long generation stays dynamic.
MAX_STATIC_NEW_TOKENS = 64


def new_tokens(cfg: BeamConfig) -> int:
    return cfg.max_length - cfg.prompt_len


def static_unsupported(cfg: BeamConfig) -> str | None:
    """Why the static engine cannot run a request with these settings, or None if it can."""
    if cfg.do_sample:
        return "beam sampling runs on the dynamic path"
    if new_tokens(cfg) > MAX_STATIC_NEW_TOKENS:
        return (
            f"max_new_tokens={new_tokens(cfg)} > {MAX_STATIC_NEW_TOKENS}: long generation runs on the dynamic "
            "path, which compacts dead beams' cache slots"
        )
    return None
