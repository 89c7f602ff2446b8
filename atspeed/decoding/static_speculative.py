"""Strict speculative beam search on the static engine: every request of a batch accepts and advances
on its own (no lockstep), with fixed cache slots and no host sync inside a round.

Both models' caches share one layout, fixed for a shape (B, P, K, N, gamma, T):

    [prompt: P] [round 1: level 1: N | ... | level gamma: N] [round 2: K bonus | level 1 | ...] ... [round T]

Round r (at most T rounds: each moves every unfinished request by >= 1 token):
1. draft: ONE forward over the last round's level gamma and the K bonus tokens (round 1: the
   prompt), then gamma levels of N-beam search, levels 1 .. gamma-1 fed back (so that the draft
   has read whatever gets accepted by the time it drafts again);
2. target: ONE forward over the K bonus tokens (round 1: the prompt) and the N * gamma drafted nodes;
3. verify, per request: the target's own beam step at level j (HF semantics: processors, EOS,
   length penalty); a request accepts level j iff all K new running beams are drafted nodes of
   level j, and keeps going; its first step whose beams are not all drafted is its bonus step.
   Requests that rejected, or finished, are frozen (their state is kept with torch.where), so a
   request takes exactly the steps it would take decoded alone: the output is the target's beam
   search of that request, whatever the draft.
Since both caches have read the same slots, one visibility row per beam serves both models.

Requests advance at their own lengths, so the beam state keeps one length per request and the
logits processors are called per row (`RowProcessor`: the item trie supports it).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from atspeed.decoding.beam import (
    BeamConfig,
    BeamState,
    beam_step,
    finalize,
    gather_beams,
    init_beams,
    joint_scores,
    put_at,
    select_rows,
    split_continuations,
)
from atspeed.decoding.speculative import Hook, _null_hook, drafted_nodes
from atspeed.decoding.static import SlotForward, first_rows, prefill
from atspeed.decoding.tree import additive_mask, prompt_inputs
from atspeed.decoding.tree_search import BeamSearchResult, FiniteWatch

# (sequences [M, L], lengths [M], log-probs [M, V]) -> processed log-probs, rows at their own lengths
RowProcessor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def no_processor(sequences: torch.Tensor, lengths: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    return log_probs


@dataclass(frozen=True)
class Layout:
    """Slot arithmetic of the shared cache layout. Round 1 has no bonus tokens: its nodes follow the
    prompt, so that the target reads the prompt and round 1's tree in one forward. Round r drafts
    gamma_at(r) levels: a request in round r has >= r - 1 tokens, so deeper levels could never be
    accepted (the last round drafts none)."""

    prompt_slots: int  # P
    num_beams: int  # K
    draft_beams: int  # N
    gamma: int
    rounds: int  # at most one per new token (T)

    def gamma_at(self, r: int) -> int:
        return max(0, min(self.gamma, self.rounds - r))

    def round_width(self, r: int) -> int:
        return (self.num_beams if r > 1 else 0) + self.draft_beams * self.gamma_at(r)

    def round_start(self, r: int) -> int:
        """First slot of round r (round r >= 2 begins with its K bonus tokens)."""
        return self.prompt_slots + sum(self.round_width(i) for i in range(1, r))

    @property
    def num_slots(self) -> int:
        return self.round_start(self.rounds + 1)

    def level_start(self, r: int, j: int) -> int:
        return self.round_start(r) + (self.num_beams if r > 1 else 0) + (j - 1) * self.draft_beams


@dataclass
class DraftLevels:
    tokens: list[torch.Tensor]  # per level j = 1..gamma: [B, N]
    parents: list[torch.Tensor]  # per level: [B, N] index into level j - 1 (level 1: into the K beams)
    rows: list[torch.Tensor]  # per level j = 0..gamma: visibility rows of its nodes (level 0: the beams)
    last_positions: torch.Tensor | None = None  # [B, N] position ids of level gamma's nodes


def catch_up(
    draft: SlotForward,
    levels: DraftLevels,
    bonus: torch.Tensor,
    bonus_rows: torch.Tensor,
    layout: Layout,
    r: int,
    bonus_positions: torch.Tensor,
) -> torch.Tensor:
    """Round r >= 2 begins with ONE draft forward over the last round's deepest level (its slots end
    where round r's begin) and round r's K bonus tokens (bonus_rows [B, K, S]: the beams' rows with
    their bonus slots). Returns the draft's logits at the bonus tokens [B, K, V]."""
    K = layout.num_beams
    start, stop = layout.level_start(r - 1, layout.gamma_at(r - 1)), layout.round_start(r) + K
    visible = torch.cat((levels.rows[-1], bonus_rows), dim=1)[:, :, :stop]
    tokens = torch.cat((levels.tokens[-1], bonus), dim=1)
    positions = torch.cat((levels.last_positions, bonus_positions), dim=1)
    return draft.write(tokens, positions, additive_mask(visible, draft.dtype), start=start, logits_to_keep=K)


def with_own_slots(rows: torch.Tensor, parents: torch.Tensor, start: int) -> torch.Tensor:
    """Rows of new nodes: each sees what its parent saw, and its own slot start + i. [B, M, S]."""
    M = parents.shape[1]
    rows = gather_beams(rows, parents)
    rows[:, :, start : start + M] = torch.eye(M, dtype=torch.bool, device=rows.device)
    return rows


def draft_levels(
    draft: SlotForward,
    state: BeamState,
    root_logits: torch.Tensor,
    root_rows: torch.Tensor,
    layout: Layout,
    r: int,
    processor: RowProcessor,
    prompt_lengths: torch.Tensor,
) -> DraftLevels:
    """gamma levels of N-beam search by the draft from the K running beams (root_logits [B, K, V]:
    the draft's logits at them) into round r's slots. Levels 1 .. gamma-1 are fed to the draft;
    level gamma is fed with the next round's bonus tokens (see catch_up), if there is a next round."""
    N, gamma = layout.draft_beams, layout.gamma_at(r)
    if gamma == 0:  # the last possible round (or one new token): nothing to draft
        return DraftLevels([], [], [root_rows])
    B, K, V = root_logits.shape
    # nodes of requests near max_length may run past it: they are never accepted, but need room
    seqs = torch.cat((state.running_sequences, state.running_sequences.new_zeros(B, K, gamma)), dim=-1)
    width = seqs.shape[-1]
    lengths = state.cur_len  # [B] tokens so far (prompt slots included): the beams'
    log_probs = processor(
        seqs.view(B * K, width), lengths.repeat_interleave(K), root_logits.log_softmax(-1).view(B * K, V)
    )
    scores = joint_scores(state.running_scores, log_probs.view(B, K, V))
    levels = DraftLevels([], [], [root_rows])
    positions = (prompt_lengths + lengths - layout.prompt_slots)[:, None].expand(B, N)  # level 1's
    for j in range(1, gamma + 1):
        top, idx = torch.topk(scores, k=N)  # [B, N]
        parent, token = split_continuations(idx, V)
        start = layout.level_start(r, j)
        rows = with_own_slots(levels.rows[-1], parent, start)
        levels.tokens.append(token)
        levels.parents.append(parent)
        levels.rows.append(rows)
        levels.last_positions = positions + j - 1
        if j == gamma:
            break
        logits = draft.write(
            token, levels.last_positions, additive_mask(rows[:, :, : start + N], draft.dtype), start=start
        )
        seqs = gather_beams(seqs, parent)
        put_at(seqs, lengths + j - 1, token)
        node_lengths = (lengths + j).repeat_interleave(N)
        log_probs = processor(seqs.view(B * N, width), node_lengths, logits.log_softmax(-1).view(B * N, V))
        scores = joint_scores(top, log_probs.view(B, N, V))
    return levels


def target_forward(
    target: SlotForward,
    levels: DraftLevels,
    bonus: torch.Tensor | None,
    layout: Layout,
    r: int,
    prompt: tuple[torch.Tensor, torch.Tensor],
    generated: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ONE target forward over round r's first tokens, then its drafted nodes: the prompt in round
    1 (prompt = (input_ids, attention_mask) [B, P]), the K bonus tokens (bonus [B, K]) after.
    Returns the logits at the beams [B, K, V] (round 1: the prompt's last position, for all K) and
    at the nodes [B, gamma * N, V]. generated: [B] tokens each request has generated."""
    K, N, gamma = layout.num_beams, layout.draft_beams, layout.gamma_at(r)
    input_ids, attention_mask = prompt
    B = input_ids.shape[0]
    prompt_lengths = attention_mask.sum(-1)
    depth = prompt_lengths + generated  # [B] position of level 1's nodes
    tokens = list(levels.tokens)
    rows = list(levels.rows[1:])
    positions = [(depth + j - 1)[:, None].expand(B, N) for j in range(1, gamma + 1)]
    if r == 1:
        visible, prompt_positions = prompt_inputs(attention_mask)  # [B, P, P]
        tokens.insert(0, input_ids)
        rows.insert(
            0,
            torch.cat((visible, visible.new_zeros(B, layout.prompt_slots, layout.num_slots - layout.prompt_slots)), -1),
        )
        positions.insert(0, prompt_positions)
        start = 0
    else:
        tokens.insert(0, bonus)
        rows.insert(0, levels.rows[0])
        positions.insert(0, (depth - 1)[:, None].expand(B, K))
        start = layout.round_start(r)
    stop = layout.round_start(r + 1)
    mask = additive_mask(torch.cat(rows, dim=1)[:, :, :stop], target.dtype)
    keep = N * gamma + (1 if r == 1 else K)  # logits at the beams and the nodes only
    logits = target.write(torch.cat(tokens, 1), torch.cat(positions, 1), mask, start=start, logits_to_keep=keep)
    if r == 1:
        return logits[:, :1].expand(B, K, -1), logits[:, 1:]
    return logits[:, :K], logits[:, K:]


def verify_rows(
    state: BeamState,
    cfg: BeamConfig,
    levels: DraftLevels,
    level0_logits: torch.Tensor,
    node_logits: torch.Tensor,
    processor: RowProcessor,
    active: torch.Tensor,
) -> tuple[BeamState, torch.Tensor, torch.Tensor]:
    """The target's beam steps, level by level, for each request while its new beams are drafted
    nodes; requests not `active` [B] keep their state. Returns the state, accepted levels [B] and
    parent_idx [B, K]: each new beam's parent within its request's last accepted level."""
    B, K, V = level0_logits.shape
    gamma = len(levels.tokens)
    cur_idx = torch.arange(K, device=level0_logits.device).expand(B, K)  # the beams' nodes in their level
    parent_idx = cur_idx
    cur_logits = level0_logits
    accepted = torch.zeros(B, dtype=torch.int64, device=level0_logits.device)
    L = state.running_sequences.shape[-1]
    for j in range(1, gamma + 2):
        lengths = state.cur_len.repeat_interleave(K)
        log_probs = processor(
            state.running_sequences.view(B * K, L), lengths, cur_logits.log_softmax(-1).view(B * K, V)
        )
        stepped, beam_parents = beam_step(state, log_probs.view(B, K, V), cfg, None)
        state = select_rows(active, stepped, state)
        parent_idx = torch.where(active[:, None], cur_idx.gather(1, beam_parents), parent_idx)
        if j > gamma:
            break
        tokens = state.running_sequences.gather(2, (state.cur_len - 1)[:, None, None].expand(B, K, 1))[..., 0]
        match = drafted_nodes(levels.parents[j - 1], levels.tokens[j - 1], parent_idx, tokens)  # [B, K, N]
        active = active & ~rows_done(state, cfg) & match.any(-1).all(-1)
        accepted = torch.where(active, j, accepted)
        cur_idx = torch.where(active[:, None], match.to(torch.int8).argmax(-1), cur_idx)
        N = levels.tokens[j - 1].shape[1]
        level_logits = gather_beams(node_logits[:, (j - 1) * N : j * N], cur_idx)
        cur_logits = torch.where(active[:, None, None], level_logits, cur_logits)
    return state, accepted, parent_idx


def rows_done(state: BeamState, cfg: BeamConfig) -> torch.Tensor:
    """[B] requests whose beam search is over, each judged alone (HF's stop test for one request)."""
    improvable = state.improvable[:, 0]
    open_beam = ~(state.finished.all(-1) & (cfg.early_stopping is True))
    can_continue = ~state.hits_stop.all(-1)
    return ~(improvable & open_beam & can_continue)


def rows_after(levels: DraftLevels, accepted: torch.Tensor, parent_idx: torch.Tensor) -> torch.Tensor:
    """Visibility rows of the new beams [B, K, S]: their parents' rows, in each request's last
    accepted level (the beams' new bonus tokens are not read yet)."""
    rows = None
    for j, level_rows in enumerate(levels.rows):
        picked = gather_beams(level_rows, parent_idx.clamp(max=level_rows.shape[1] - 1))
        rows = picked if rows is None else torch.where((accepted == j)[:, None, None], picked, rows)
    return rows


@dataclass
class RoundCounters:
    """Per request [B]: rounds taken part in, levels accepted, levels that could have been accepted;
    and per round, the accepted levels of each request (-1: it did not take part)."""

    rounds: torch.Tensor
    accepted: torch.Tensor
    drafted: torch.Tensor
    per_round: list[torch.Tensor]
    finite: FiniteWatch


def static_speculative_beam_search(
    target: SlotForward,
    draft: SlotForward,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: BeamConfig,
    num_draft_beams: int,
    gamma: int,
    processor: RowProcessor = no_processor,
    *,
    num_return_sequences: int,
    fill_value: int,
    hook: Hook = _null_hook,
) -> BeamSearchResult:
    """Strict speculative beam search, each request on its own. input_ids / attention_mask: [B, P]
    (left-padded); both models write into caches of layout(...).num_slots slots."""
    state, counters = speculative_rounds(
        target,
        draft,
        input_ids,
        attention_mask,
        cfg,
        num_draft_beams,
        gamma,
        processor,
        fill_value=fill_value,
        stop_early=True,
        hook=hook,
    )
    counters.finite.check()
    state.cur_len = int(state.cur_len.max())  # finalize crops to the longest hypothesis, as HF does
    sequences, scores, beam_indices = finalize(state, cfg, num_return_sequences)
    return BeamSearchResult(
        sequences=sequences,
        sequences_scores=scores,
        beam_indices=beam_indices,
        stats={
            "steps": state.cur_len - cfg.prompt_len,
            "n_run": len(counters.per_round),
            "rounds_per_request": counters.rounds.tolist(),
            "accepted_per_request": counters.accepted.tolist(),
            # per request on average (a batch's requests run different numbers of rounds)
            "total_accept_steps": float(counters.accepted.float().mean()),
            "drafted_levels": float(counters.drafted.float().mean()),
            "per_round_accepted": [mean_accepted(a) for a in counters.per_round],
            "per_request_accepted": torch.stack(counters.per_round, 1).tolist(),  # -1: not in that round
        },
    )


def speculative_rounds(
    target: SlotForward,
    draft: SlotForward,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: BeamConfig,
    num_draft_beams: int,
    gamma: int,
    processor: RowProcessor = no_processor,
    *,
    fill_value: int = -1,
    stop_early: bool = False,
    hook: Hook = _null_hook,
) -> tuple[BeamState, RoundCounters]:
    """The rounds, until every request is done (stop_early: one host sync a round) or for as many
    rounds as there are new tokens (no host sync: each round is a replayable unit)."""
    B, P = input_ids.shape
    lay = layout(cfg, num_draft_beams, gamma)
    K = cfg.num_beams
    prompt_lengths = attention_mask.sum(-1)
    state = init_beams(input_ids, cfg, fill_value, per_row=True)
    draft_logits = prefill(draft, input_ids, attention_mask)[:, None].expand(B, K, -1) if lay.gamma_at(1) else None
    rows = first_rows(attention_mask, K, lay.num_slots)
    bonus, levels = None, None
    active = torch.ones(B, dtype=torch.bool, device=input_ids.device)
    zeros = torch.zeros(B, dtype=torch.int64, device=input_ids.device)
    counters = RoundCounters(zeros, zeros, zeros, [], FiniteWatch("round"))
    for r in range(1, lay.rounds + 1):
        if bonus is not None:  # the beams' rows take their bonus slots
            rows = with_own_slots(rows, torch.arange(K, device=rows.device).expand(B, K), lay.round_start(r))
        with hook("draft") if lay.gamma_at(r) else nullcontext():  # nothing to draft: the draft rests
            if bonus is not None and lay.gamma_at(r):  # the draft reads the last level and the bonus tokens
                positions = (prompt_lengths + state.cur_len - P - 1)[:, None].expand(B, K)
                draft_logits = catch_up(draft, levels, bonus, rows, lay, r, positions)
            levels = draft_levels(draft, state, draft_logits, rows, lay, r, processor, prompt_lengths)
        with hook("target"):
            beam_logits, node_logits = target_forward(
                target, levels, bonus, lay, r, (input_ids, attention_mask), state.cur_len - P
            )
        counters.finite.update(beam_logits, node_logits)
        # levels that could be accepted: a request never accepts past its last new token
        possible = (cfg.max_length - state.cur_len - 1).clamp(max=lay.gamma_at(r))
        with hook("verify"):
            state, accepted, parent_idx = verify_rows(state, cfg, levels, beam_logits, node_logits, processor, active)
        counters.rounds = counters.rounds + active
        counters.accepted = counters.accepted + accepted
        counters.drafted = counters.drafted + torch.where(active, possible, 0)
        counters.per_round.append(torch.where(active, accepted, -1))
        active = ~rows_done(state, cfg)
        if stop_early and not bool(active.any()):
            break
        bonus = state.running_sequences.gather(2, (state.cur_len - 1)[:, None, None].expand(B, K, 1))[..., 0]
        rows = rows_after(levels, accepted, parent_idx)
    return state, counters


def mean_accepted(accepted: torch.Tensor) -> float:
    """Mean accepted levels of a round over the requests that took part (accepted >= 0)."""
    taking_part = accepted >= 0
    return float(accepted[taking_part].float().mean()) if bool(taking_part.any()) else 0.0


def layout(cfg: BeamConfig, num_draft_beams: int, gamma: int) -> Layout:
    """The cache layout of a request shape: at most one round per new token, and no level deeper
    than the last new token (one new token: no draft at all)."""
    new_tokens = cfg.max_length - cfg.prompt_len
    return Layout(cfg.prompt_len, cfg.num_beams, num_draft_beams, min(gamma, new_tokens - 1), new_tokens)
