"""Beam search by tree attention: HF beam search semantics, one shared KV cache per request.

The loop is HF's (processors, beam step, stopping) with the forward replaced: the prompt is
prefilled once and every step feeds the K beams' new tokens as one level of the tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from atspeed.decoding.beam import (
    BeamConfig,
    BeamState,
    StoppingFn,
    beam_step,
    finalize,
    gather_beams,
    init_beams,
    is_done,
)
from atspeed.decoding.tree import compaction_plan, level_inputs, select_slots

LogitsProcessorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TreeForward(Protocol):
    """What the core needs from a model (atspeed.hf.model.TreeLM provides it)."""

    dtype: torch.dtype

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def keep_slots(self, index: torch.Tensor) -> None: ...

    @property
    def cache_bytes(self) -> int: ...


@dataclass
class BeamSearchResult:
    sequences: torch.Tensor  # [B * R, prompt_len + generated]
    sequences_scores: torch.Tensor  # [B * R]
    beam_indices: torch.Tensor  # [B * R, generated]
    scores: tuple[torch.Tensor, ...] | None = None  # per step, processed log-probs [B * K, V]
    logits: tuple[torch.Tensor, ...] | None = None  # per step, raw logits [B * K, V]
    stats: dict = field(default_factory=dict)


class NonFiniteLogitsError(ValueError):
    """The model's logits hold NaN or inf: its weights or inputs are broken (HF generate() would
    return garbage sequences here without a word)."""


def all_finite(t: torch.Tensor) -> torch.Tensor:
    """[] bool: is every element of `t` finite? Its min and max are (both propagate NaN, and an inf
    is one of them): two reductions, where isfinite().all() writes and reads a bool copy of `t`
    (B = 16, K = 256 logits [4096, 1300] on one CPU thread: ~1.5 ms instead of 17.9 ms per step)."""
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    return torch.isfinite(torch.stack(torch.aminmax(t))).all()


class FiniteWatch:
    """Whether each decode step's raw logits were all finite, one [] bool per step kept on the
    device (no host sync per step); `check()` reads them once, after the decode."""

    def __init__(self, what: str = "step"):
        self.what = what
        self.steps: list[torch.Tensor] = []

    def update(self, *logits: torch.Tensor) -> None:
        flags = [all_finite(t) for t in logits]
        self.steps.append(flags[0] if len(flags) == 1 else torch.stack(flags).all())

    def check(self) -> None:
        if not self.steps:
            return
        bad = ~torch.stack(self.steps)
        if bool(bad.any()):
            first = int(bad.int().argmax()) + 1
            raise NonFiniteLogitsError(
                f"non-finite logits (NaN or inf) at {self.what} {first} of the decode: the model's weights "
                "or inputs are broken."
            )


class StepRecord:
    """What generate(output_scores / output_logits) returns: per step, [B * K, V] each; and whether
    every step's logits were finite."""

    def __init__(self, scores: bool, logits: bool):
        self.scores: tuple[torch.Tensor, ...] | None = () if scores else None
        self.logits: tuple[torch.Tensor, ...] | None = () if logits else None
        self.finite = FiniteWatch()

    def add(self, logits: torch.Tensor, log_probs: torch.Tensor) -> None:
        self.finite.update(logits)
        if self.logits is not None:
            self.logits += (logits.clone(),)
        if self.scores is not None:
            self.scores += (log_probs.clone(),)


def search_step(
    state: BeamState,
    logits: torch.Tensor,
    cfg: BeamConfig,
    logits_processor: LogitsProcessorFn,
    stopping: StoppingFn,
    record: StepRecord,
) -> tuple[BeamState, torch.Tensor]:
    """HF's beam search step from the running beams' raw next-token logits [B, K, V]: log-softmax,
    the logits processors, then the beam step. Returns the new state and each new beam's parent."""
    B, K, V = logits.shape
    flat_logits = logits.reshape(B * K, V)
    flat_running = state.running_sequences[:, :, : state.cur_len].reshape(B * K, -1)
    log_probs = logits_processor(flat_running, torch.log_softmax(flat_logits, dim=-1))
    record.add(flat_logits, log_probs)
    return beam_step(state, log_probs.view(B, K, V), cfg, stopping, record.scores)


def compact(lm: TreeForward, rows: torch.Tensor) -> torch.Tensor:
    """Drop the cache slots that no row of `rows` [B, R, S] can see (in `lm`'s cache, in place) and
    return the rows over the kept slots."""
    keep = compaction_plan([rows])
    if keep is None:
        return rows
    lm.keep_slots(keep)
    return select_slots(rows, keep)


def tree_beam_search(
    lm: TreeForward,
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
    compact_every: int = 16,
) -> BeamSearchResult:
    """input_ids / attention_mask: [B, n], one row per request (left-padded)."""
    B, K = input_ids.shape[0], cfg.num_beams
    prompt_lengths = attention_mask.sum(-1)
    state = init_beams(input_ids, cfg, fill_value)
    logits = lm.prefill(input_ids, attention_mask)  # [B, V]
    V = logits.shape[-1]
    logits = logits[:, None, :].expand(B, K, V)  # the K beams start as copies of the prompt
    rows = attention_mask.bool()[:, None, :].expand(B, K, -1)  # [B, K, S] slots each beam has read
    record = StepRecord(output_scores, output_logits)
    peak_bytes = lm.cache_bytes
    plain_decoding = K == 1 and bool(attention_mask.all())
    while True:
        state, parents = search_step(state, logits, cfg, logits_processor, stopping, record)
        if is_done(state, cfg):
            break
        depth = state.cur_len - 1 - cfg.prompt_len
        pending = state.running_sequences[:, :, state.cur_len - 1 : state.cur_len]  # [B, K, 1]
        if plain_decoding:  # one beam, no padding: ordinary causal decoding, no mask to build
            logits = lm.forward(pending[:, :, 0], (prompt_lengths + depth)[:, None], None)
        else:
            mask, positions, rows = level_inputs(gather_beams(rows, parents), depth, prompt_lengths, lm.dtype)
            if K == 1:  # one beam with padding: the model's own causal + padding mask is the tree mask
                mask = rows[:, 0].long()  # [B, S+1]
            logits = lm.forward(pending[:, :, 0], positions, mask)  # [B, K, V]
        peak_bytes = max(peak_bytes, lm.cache_bytes)
        if compact_every and K > 1 and (depth + 1) % compact_every == 0:  # one beam leaves no dead slots
            rows = compact(lm, rows)
    return search_result(state, cfg, num_return_sequences, record, peak_cache_bytes=peak_bytes)


def search_result(
    state: BeamState, cfg: BeamConfig, num_return_sequences: int, record: StepRecord, **stats: object
) -> BeamSearchResult:
    """The result of a finished beam search: non-finite logits refused (one host read), HF's output
    layout (finalize), the per-step records, the number of steps taken and `stats`."""
    record.finite.check()
    sequences, scores, beam_indices = finalize(state, cfg, num_return_sequences)
    return BeamSearchResult(
        sequences=sequences,
        sequences_scores=scores,
        beam_indices=beam_indices,
        scores=record.scores,
        logits=record.logits,
        stats={"steps": state.cur_len - cfg.prompt_len, **stats},
    )
