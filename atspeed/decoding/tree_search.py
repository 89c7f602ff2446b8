"""Beam search by tree attention: HF beam search semantics, one shared KV cache per request.

The loop is HF's (processors, beam step, stopping) with the forward replaced: the prompt is
prefilled once and every step feeds the K beams' new tokens as one level of the tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from atspeed.decoding import beam as B_
from atspeed.decoding import tree as T_

LogitsProcessorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TreeForward(Protocol):
    """What the core needs from a model (atspeed.hf.model.TreeLM provides it)."""

    dtype: torch.dtype

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def keep_slots(self, index: torch.Tensor) -> None: ...


@dataclass
class BeamSearchResult:
    sequences: torch.Tensor  # [B * R, prompt_len + generated]
    sequences_scores: torch.Tensor  # [B * R]
    beam_indices: torch.Tensor  # [B * R, generated]
    scores: tuple[torch.Tensor, ...] | None = None  # per step, processed log-probs [B * K, V]
    logits: tuple[torch.Tensor, ...] | None = None  # per step, raw logits [B * K, V]
    steps: int = 0
    peak_cache_slots: int = 0
    stats: dict = field(default_factory=dict)


def tree_beam_search(
    lm: TreeForward,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: B_.BeamConfig,
    logits_processor: LogitsProcessorFn,
    stopping: B_.StoppingFn,
    *,
    num_return_sequences: int,
    fill_value: int,
    output_scores: bool = False,
    output_logits: bool = False,
    compact_every: int = 16,
) -> BeamSearchResult:
    """input_ids / attention_mask: [B, n], one row per request (left-padded)."""
    Bsz, _ = input_ids.shape
    K = cfg.num_beams
    state = B_.init_beams(input_ids, cfg, fill_value)
    tree = T_.tree_from_prompt(attention_mask, K)
    logits = lm.prefill(input_ids, attention_mask)  # [B, V]
    V = logits.shape[-1]
    logits = logits[:, None, :].expand(Bsz, K, V)  # the K beams are copies of the prompt
    all_scores = () if output_scores else None
    raw_logits = () if output_logits else None
    depth, peak = 0, tree.num_slots
    while True:
        flat_logits = logits.reshape(Bsz * K, V)
        flat_running = state.running_sequences[:, :, : state.cur_len].reshape(Bsz * K, -1)
        log_probs = logits_processor(flat_running, torch.log_softmax(flat_logits, dim=-1))
        if output_logits:
            raw_logits += (flat_logits.clone(),)
        if output_scores:
            all_scores += (log_probs.clone(),)
        state, parents = B_.beam_step(state, log_probs.view(Bsz, K, V), cfg, stopping, all_scores)
        if B_.is_done(state, cfg):
            break
        tree = T_.reorder(tree, parents)
        mask, positions = T_.level_inputs(tree, depth, lm.dtype)
        tokens = state.running_sequences[:, :, state.cur_len - 1]  # [B, K]
        logits = lm.forward(tokens, positions, mask)  # [B, K, V]
        tree = T_.grow(tree)
        depth += 1
        peak = max(peak, tree.num_slots)
        if compact_every and depth % compact_every == 0:
            plan = T_.compaction_plan(tree)
            if plan is not None:
                lm.keep_slots(plan[0])
                tree = plan[1]
    sequences, scores, beam_indices = B_.finalize(state, cfg, num_return_sequences)
    return BeamSearchResult(
        sequences=sequences,
        sequences_scores=scores,
        beam_indices=beam_indices,
        scores=all_scores,
        logits=raw_logits,
        steps=depth + 1,
        peak_cache_slots=peak,
    )
