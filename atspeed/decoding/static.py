"""The static engine's decode: beam search by tree attention on fixed cache slots.

Cache layout of one request, fixed for a shape (B requests, P prompt slots, K beams, T new tokens):

    [prompt: P slots, left-padded] [level 1: K slots] [level 2: K slots] ... [level T-1: K slots]

Beam k's token of level t sits in slot P + (t - 1) * K + k (level T is never fed: its logits are
not needed). A beam's visibility row marks its prompt's real slots and its ancestors' slots. A
step feeds the K pending tokens into their level's slots, runs the processors and HF's beam step,
and gathers the rows of the surviving parents. Every tensor's shape is fixed by (B, P, K, T) and
every step is tensor ops, so the T steps form one replayable unit (one CUDA graph on a GPU).

The one data-dependent decision, HF's whole-batch early stop, is optional and outside the steps
(`stop_early`): where a host sync is cheap (CPU) it ends the loop as HF does; in a captured graph
all T steps run, which gives the same hypotheses (a request that cannot improve accepts no more)
and takes the same time as a batch that did not stop early.
"""

from __future__ import annotations

from typing import Protocol

import torch

from atspeed.decoding.beam import BeamConfig, BeamState, StoppingFn, gather_beams, init_beams, is_done
from atspeed.decoding.tree import additive_mask, prompt_inputs
from atspeed.decoding.tree_search import BeamSearchResult, LogitsProcessorFn, StepRecord, search_result, search_step


class SlotForward(Protocol):
    """What the static decode needs from a model (atspeed.hf.model.TreeLM on a SlotCache)."""

    dtype: torch.dtype

    def write(
        self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, start: int, logits_to_keep: int = 0
    ) -> torch.Tensor: ...


def num_slots(prompt_len: int, num_beams: int, new_tokens: int) -> int:
    """Cache slots of one request: the prompt, then K per fed level (T - 1 levels)."""
    return prompt_len + (new_tokens - 1) * num_beams


def prefill(lm: SlotForward, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Write the prompts [B, P] into slots 0 .. P-1 (with an explicit 4D mask: the model builds none,
    so nothing syncs). Returns the last position's logits [B, V]."""
    visible, positions = prompt_inputs(attention_mask)  # [B, P, P], [B, P]
    return lm.write(input_ids, positions, additive_mask(visible, lm.dtype), start=0, logits_to_keep=1)[:, -1]


def first_rows(attention_mask: torch.Tensor, num_beams: int, slots: int) -> torch.Tensor:
    """Visibility rows [B, K, S] of the K beams before the first level: the prompt's real slots."""
    B, P = attention_mask.shape
    rows = attention_mask.new_zeros(B, num_beams, slots, dtype=torch.bool)
    rows[:, :, :P] = attention_mask.bool()[:, None, :]
    return rows


def feed_level(
    lm: SlotForward,
    state: BeamState,
    rows: torch.Tensor,
    parents: torch.Tensor,
    level: int,
    prompt_lengths: torch.Tensor,
    prompt_slots: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed the K newest tokens (level >= 1) into their slots. rows: [B, K, S] of the previous
    level's beams; parents: [B, K] which of them each new beam extends. Returns logits [B, K, V]
    and the new beams' rows."""
    B, K, _ = rows.shape
    start = prompt_slots + (level - 1) * K
    rows = gather_beams(rows, parents)  # a new beam sees what its parent saw ...
    rows[:, :, start : start + K] = torch.eye(K, dtype=torch.bool, device=rows.device)  # ... and itself
    tokens = state.running_sequences[:, :, state.cur_len - 1]  # [B, K]
    positions = (prompt_lengths + level - 1)[:, None].expand(B, K)
    mask = additive_mask(rows[:, :, : start + K], lm.dtype)  # [B, 1, K, start + K]
    return lm.write(tokens, positions, mask, start=start), rows


def static_beam_search(
    lm: SlotForward,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: BeamConfig,
    logits_processor: LogitsProcessorFn,
    stopping: StoppingFn,
    *,
    num_return_sequences: int,
    fill_value: int,
    output_scores: bool = False,
    output_logits: bool = False,
    stop_early: bool = True,
) -> BeamSearchResult:
    """HF beam search on fixed slots. input_ids / attention_mask: [B, P], one row per request
    (left-padded); `lm` writes into a cache of num_slots(P, K, T) slots."""
    state, record = decode(
        lm,
        input_ids,
        attention_mask,
        cfg,
        logits_processor,
        stopping,
        record=StepRecord(output_scores, output_logits),
        stop_early=stop_early,
        fill_value=fill_value,
    )
    return search_result(state, cfg, num_return_sequences, record)


def decode(
    lm: SlotForward,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: BeamConfig,
    logits_processor: LogitsProcessorFn,
    stopping: StoppingFn,
    *,
    record: StepRecord | None = None,
    stop_early: bool = False,
    fill_value: int = -1,
) -> tuple[BeamState, StepRecord]:
    """Prefill plus the T beam steps. With stop_early=False there is no host sync: this is the unit
    a CUDA graph captures."""
    B, P = input_ids.shape
    K, T = cfg.num_beams, cfg.max_length - cfg.prompt_len
    record = record or StepRecord(False, False)
    prompt_lengths = attention_mask.sum(-1)
    state = init_beams(input_ids, cfg, fill_value)
    logits = prefill(lm, input_ids, attention_mask)[:, None, :].expand(B, K, -1)  # beams start as prompt copies
    rows = first_rows(attention_mask, K, num_slots(P, K, T))
    for level in range(1, T + 1):
        state, parents = search_step(state, logits, cfg, logits_processor, stopping, record)
        if level == T or (stop_early and is_done(state, cfg)):
            break
        logits, rows = feed_level(lm, state, rows, parents, level, prompt_lengths, P)
    return state, record
