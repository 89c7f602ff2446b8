"""Which decode runs a beam search request: the static engine wherever it applies.

The static engine (atspeed.decoding.static on a SlotCache) allocates the tree cache once for the
request's shape and decodes with tensor ops only. What it does not cover runs on the dynamic tree
path (atspeed.decoding.tree_search), which grows its cache and compacts dead beams' slots; the
reason is reported in the result's stats["engine"], so nobody has to choose between two APIs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from atspeed.decoding.beam import BeamConfig

ENGINES = ("auto", "graph", "static", "dynamic")  # graph: the static engine captured (CUDA)
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


# Speculative rounds on the static layout keep a K + N * gamma region per round, one round per new
# token at most: beyond this, the dynamic (compacting) path holds less dead cache.
MAX_STATIC_SPECULATIVE_NEW_TOKENS = 16
_ROW_STOPPING = ("MaxLengthCriteria", "EosTokenCriteria")
# Measured (benchmarks/bench_lockstep.py, the rec demo): on a CPU every computed token costs, and
# the lockstep path, which drafts only as deep as the whole batch can still accept, computes fewer
# tokens than static shapes do; it wins or ties there. The static engine is the default on GPUs.
CPU_SPECULATIVE_REASON = "on CPU strict speculative decoding runs on the lockstep path, which computes fewer tokens"


def row_processor(processors: Sequence) -> Callable | None:
    """The processors as one per-row function (sequences, lengths, log-probs), if each has a
    `per_row` form (the item trie does); else None."""
    if not all(hasattr(p, "per_row") for p in processors):
        return None

    def process(sequences: torch.Tensor, lengths: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        for p in processors:
            log_probs = p.per_row(sequences, lengths, log_probs)
        return log_probs

    return process


def static_speculative_unsupported(
    cfg: BeamConfig, adaptive: bool, processors: Sequence, stopping: Sequence
) -> str | None:
    """Why strict speculative decoding cannot run on the static engine, or None if it can."""
    if cfg.do_sample:
        return "relaxed (sampling) verification runs on the dynamic path"
    if adaptive:
        return "an adaptive draft length runs on the dynamic path"
    if new_tokens(cfg) > MAX_STATIC_SPECULATIVE_NEW_TOKENS:
        return f"max_new_tokens={new_tokens(cfg)} > {MAX_STATIC_SPECULATIVE_NEW_TOKENS} runs on the dynamic path"
    odd = [type(p).__name__ for p in processors if not hasattr(p, "per_row")]
    if odd:
        return f"logits processors {odd} have no per-row form (requests advance at their own lengths)"
    odd = [type(c).__name__ for c in stopping if type(c).__name__ not in _ROW_STOPPING]
    if odd:
        return f"stopping criteria {odd} have no per-row form"
    return None
