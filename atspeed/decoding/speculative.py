"""Speculative beam search (AtSpeed §2): the draft proposes a beam tree, the target verifies it.

Per round, with K target beams, N >= K draft beams and draft length gamma:
1. draft: gamma levels of beam search (N beams) from the current K beams on the draft's own tree cache;
2. target: ONE forward over the K pending beam tokens plus all N * gamma draft nodes (tree mask);
   in the first round the prompt prefill goes into that same forward;
3. verify (strict top-K, lossless): take the target's own beam step at level j (HF semantics, all
   processors and EOS handling); accept level j iff all K new running beams are drafted nodes of
   level j. The first step whose beams are not all drafted is the bonus step; after gamma accepted
   levels the bonus comes from the last level. Every step is the target's exact beam step, so the
   output is the target's beam search output whatever the draft.
4. both models keep their caches; beams that died are masked, and caches are compacted now and then.

Batches advance in lockstep: a round stops at the first level where any request rejects.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

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
    joint_scores,
    split_continuations,
)
from atspeed.decoding.checks import check_int
from atspeed.decoding.relaxed import VARIANTS, DraftLevel, accept_any, recursive, sample_level, sample_target
from atspeed.decoding.tree import additive_mask, chain_parents, node_visibility, prompt_inputs
from atspeed.decoding.tree_search import BeamSearchResult, FiniteWatch, LogitsProcessorFn, TreeForward, compact

Hook = Callable[[str], object]  # returns a context manager timing the named phase


@dataclass
class DraftSchedule:
    """Draft length per round. Fixed (the paper's setting) or adaptive: after a fully accepted round
    draft one level more (up to `max_gamma`), else as many levels as were accepted, down to 0 =
    plain tree attention. At 0 it probes with one level after `probe_every` rounds, and doubles that
    wait after each failed probe (up to `max_probe_every`), so a useless draft costs almost nothing.
    Keep the object across calls to keep what it learnt about a draft."""

    gamma: int
    adaptive: bool = False
    max_gamma: int | None = None  # default: the initial gamma
    probe_every: int = 4
    max_probe_every: int = 256
    _idle_rounds: int = 0
    _wait: int = 0
    _probing: bool = False

    def __post_init__(self) -> None:
        if self.max_gamma is None:
            self.max_gamma = self.gamma
        least = 0 if self.adaptive else 1  # an adaptive schedule may start as plain tree attention
        check_int("DraftSchedule gamma", self.gamma, least)
        check_int("DraftSchedule max_gamma", self.max_gamma, self.gamma, bound=f"gamma ({self.gamma})")

    def next_gamma(self, remaining: int) -> int:
        g = self.gamma
        self._probing = False
        if g == 0 and self.adaptive:
            self._idle_rounds += 1
            if self._idle_rounds >= (self._wait or self.probe_every):
                self._idle_rounds, self._probing, g = 0, True, 1
        return max(0, min(g, remaining - 1))

    def update(self, drafted: int, accepted: int) -> None:
        if not self.adaptive or drafted == 0:
            return
        if self._probing:  # back off after a failed probe, forget the wait after a good one
            wait = self._wait or self.probe_every
            self._wait = 0 if accepted else min(2 * wait, self.max_probe_every)
        self.gamma = min(self.max_gamma, accepted + 1) if accepted == drafted else accepted


@dataclass
class _ModelView:
    """One model's view of the running beams: rows of cache slots read, and tokens not yet read."""

    rows: torch.Tensor  # [B, K, S]
    pending: torch.Tensor  # [B, K, P] (P may be 0)


@dataclass
class DraftTree:
    tokens: list[torch.Tensor]  # per level: [B, N]
    parents: list[torch.Tensor]  # per level: [B, N] index into the previous level (level 1: beam 0..K-1)
    rows: list[torch.Tensor]  # draft cache rows of levels fed to the draft (levels 0..gamma-1)
    q: list[torch.Tensor] = field(default_factory=list)  # sampling only: per level, proposal [B, M, V]

    def level(self, j: int) -> DraftLevel:
        return DraftLevel(self.tokens[j - 1], self.parents[j - 1], self.q[j - 1])


@dataclass
class SpecCounters:
    rounds: int = 0
    drafted_levels: int = 0
    accepted_levels: int = 0
    per_round_accepted: list[int] = field(default_factory=list)


def _null_hook(name: str) -> nullcontext:
    return nullcontext()


def _feed(
    lm: TreeForward,
    view: _ModelView,
    extra_tokens: list[torch.Tensor],
    extra_parents: list[torch.Tensor],
    depth0: int,
    prompt_lengths: torch.Tensor,
    prompt: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed each beam's pending chain, then levels of new nodes, in ONE forward (with the prompt first
    if `prompt` = (input_ids, attention_mask) is given). Returns logits and visible rows of the
    new nodes: [B, Q, V], [B, Q, S + Q], chain nodes first (beam k's chain end at k*P + P - 1).

    extra_parents: per level, parent index into the previous level (level 1: into the K beams).
    """
    B, K, P = view.pending.shape
    dev = view.rows.device
    parts_tok, parts_par, parts_depth = [], [], []
    if P:
        parts_tok.append(view.pending.reshape(B, K * P))
        parts_par.append(chain_parents(K, P, dev).expand(B, K * P))
        parts_depth.append((depth0 + torch.arange(P, device=dev)).repeat(K).expand(B, K * P))
    # index space: the K beams' read prefixes (roots), then the new nodes in feeding order
    offset, prev = K + K * P, None  # next new node; first node of the previous level
    for level, (tok, par) in enumerate(zip(extra_tokens, extra_parents), start=1):
        if level == 1:  # children of the beams: of their chain ends, or of the roots themselves
            idx = K + par * P + (P - 1) if P else par
        else:
            idx = prev + par
        parts_tok.append(tok)
        parts_par.append(idx)
        parts_depth.append(torch.full_like(tok, depth0 + P + level - 1))
        prev, offset = offset, offset + tok.shape[1]
    tokens = torch.cat(parts_tok, dim=1)
    parents = torch.cat(parts_par, dim=1)
    depth = torch.cat(parts_depth, dim=1)
    max_depth = P + len(extra_tokens)
    if prompt is None:
        visible = node_visibility(view.rows, parents, max_depth)
        logits = lm.forward(tokens, prompt_lengths[:, None] + depth, additive_mask(visible, lm.dtype))
        return logits, visible
    # first round: the prompt and the tree in one forward
    input_ids, attention_mask = prompt
    n = input_ids.shape[1]
    p_visible, p_positions = prompt_inputs(attention_mask)
    visible = node_visibility(view.rows, parents, max_depth)  # [B, Q, n + Q]
    Q = tokens.shape[1]
    top = torch.cat((p_visible, p_visible.new_zeros(B, n, Q)), dim=-1)
    mask = additive_mask(torch.cat((top, visible), dim=1), lm.dtype)
    positions = torch.cat((p_positions, prompt_lengths[:, None] + depth), dim=1)
    logits = lm.forward(torch.cat((input_ids, tokens), dim=1), positions, mask, logits_to_keep=Q + 1)
    return logits, visible


def draft_tree(
    draft: TreeForward,
    view: _ModelView,
    root_logits: torch.Tensor | None,
    state: BeamState,
    gamma: int,
    num_draft_beams: int,
    target_processor: LogitsProcessorFn,
    draft_processor: LogitsProcessorFn,
    prompt_lengths: torch.Tensor,
    depth0: int,
    sampling: str | None = None,
) -> DraftTree:
    """gamma levels of N-beam search by the draft from the K running beams (top-N, or N sampled for
    relaxed verification: without replacement, or with it for `recursive`). The tree's rows[0] are
    the draft rows of the beams' chain ends (level 0)."""
    B, K, P = view.pending.shape
    N = num_draft_beams
    if P:
        logits, rows = _feed(draft, view, [], [], depth0, prompt_lengths)
        ends = torch.arange(K, device=rows.device) * P + P - 1
        root_logits = logits[:, ends]  # [B, K, V]
        level0_rows = rows[:, ends]
    else:
        level0_rows = view.rows
    V = root_logits.shape[-1]
    seqs = state.running_sequences[:, :, : state.cur_len]  # [B, K, L]
    log_probs = target_processor(seqs.reshape(B * K, -1), torch.log_softmax(root_logits.reshape(B * K, V), -1))
    scores = joint_scores(state.running_scores, log_probs.view(B, K, V))
    tree = DraftTree([], [], [level0_rows])
    view_rows = level0_rows
    for level in range(1, gamma + 1):
        if sampling is None:
            top, idx = torch.topk(scores, k=N)  # [B, N]
        else:
            top, idx, q = sample_level(scores, N, replacement=sampling == "recursive")
            tree.q.append(q.view(B, -1, V))
        parent, token = split_continuations(idx, V)
        tree.tokens.append(token)
        tree.parents.append(parent)
        if level == gamma:
            break
        seqs = torch.cat((gather_beams(seqs, parent), token[:, :, None]), dim=-1)  # [B, N, L+1]
        level_view = _ModelView(view_rows, token.new_zeros(B, view_rows.shape[1], 0))
        logits, rows = _feed(draft, level_view, [token], [parent], depth0 + P + level - 1, prompt_lengths)
        view_rows = rows  # [B, N, S']; the level's own nodes
        tree.rows.append(rows)
        log_probs = draft_processor(seqs.reshape(B * N, -1), torch.log_softmax(logits.reshape(B * N, V), -1))
        scores = joint_scores(top, log_probs.view(B, N, V))
    return tree


def _pad_rows(rows: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Visibility rows made when the cache was shorter, widened to `num_slots` (new slots unseen)."""
    extra = num_slots - rows.shape[-1]
    return rows if extra == 0 else torch.cat((rows, rows.new_zeros(*rows.shape[:-1], extra)), dim=-1)


@dataclass
class _Prompt:
    input_ids: torch.Tensor  # [B, n] left-padded
    attention_mask: torch.Tensor  # [B, n]
    lengths: torch.Tensor  # [B] real tokens
    rows: torch.Tensor  # [B, K, n] the K beams' view of the prompt


@dataclass
class _TargetOut:
    """The target's logits and visibility rows at the beams (level 0) and at the drafted nodes."""

    level0_logits: torch.Tensor  # [B, K, V]
    level0_rows: torch.Tensor  # [B, K, S]
    node_logits: torch.Tensor | None  # [B, gamma * N, V]
    node_rows: torch.Tensor | None  # [B, gamma * N, S]


def speculative_beam_search(
    target: TreeForward,
    draft: TreeForward,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: BeamConfig,
    schedule: DraftSchedule,
    num_draft_beams: int,
    target_processor: LogitsProcessorFn,
    draft_processor: LogitsProcessorFn,
    stopping: StoppingFn,
    *,
    num_return_sequences: int,
    fill_value: int,
    hook: Hook = _null_hook,
    compact_every: int = 4,
    relaxed: str | None = None,
) -> BeamSearchResult:
    """Speculative beam search. input_ids / attention_mask: [B, n], left-padded. Each round: draft,
    target forward, verify, advance (the phases below).

    relaxed=None: strict top-K verification (lossless). relaxed="accept_any" | "recursive": beam
    sampling with relaxed verification (see atspeed.decoding.relaxed)."""
    if relaxed is not None and relaxed not in VARIANTS:
        raise ValueError(f"relaxed verification must be one of {VARIANTS}, got {relaxed!r}.")
    choose = {"accept_any": accept_any, "recursive": recursive}.get(relaxed)
    B, n = input_ids.shape
    K = cfg.num_beams
    prompt = _Prompt(
        input_ids, attention_mask, attention_mask.sum(-1), attention_mask.bool()[:, None, :].expand(B, K, n)
    )
    state = init_beams(input_ids, cfg, fill_value)
    t_view: _ModelView | None = None  # None: the target has not read the prompt yet
    d_view: _ModelView | None = None  # None: the draft has not read the prompt yet
    counters = SpecCounters()
    finite = FiniteWatch("round")
    while True:
        gamma = schedule.next_gamma(cfg.max_length - state.cur_len)
        tree = None
        if gamma > 0:
            with hook("draft"):
                d_view, tree = _draft_phase(
                    draft, d_view, prompt, state, gamma, num_draft_beams, target_processor, draft_processor, relaxed
                )
        with hook("target"):
            out = _target_phase(target, t_view, prompt, tree, state.cur_len - n)
        finite.update(out.level0_logits, *(() if out.node_logits is None else (out.node_logits,)))
        with hook("verify"):
            state, accepted, parent_idx, done = verify(
                state, cfg, gamma, tree, out.level0_logits, out.node_logits, target_processor, stopping, choose
            )
        counters.rounds += 1
        counters.drafted_levels += gamma
        counters.accepted_levels += accepted
        counters.per_round_accepted.append(accepted)
        schedule.update(gamma, accepted)
        if done:
            break
        t_view, d_view = _advance(state, out, tree, d_view, accepted, parent_idx, num_draft_beams)
        if compact_every and counters.rounds % compact_every == 0:
            t_view.rows = compact(target, t_view.rows)
            if d_view is not None:
                d_view.rows = compact(draft, d_view.rows)
    finite.check()
    sequences, scores, beam_indices = finalize(state, cfg, num_return_sequences)
    return BeamSearchResult(
        sequences=sequences,
        sequences_scores=scores,
        beam_indices=beam_indices,
        stats={
            "steps": state.cur_len - n,
            "n_run": counters.rounds,
            "total_accept_steps": counters.accepted_levels,
            "drafted_levels": counters.drafted_levels,
            "per_round_accepted": counters.per_round_accepted,
        },
    )


def _draft_phase(
    draft: TreeForward,
    d_view: _ModelView | None,
    prompt: _Prompt,
    state: BeamState,
    gamma: int,
    num_draft_beams: int,
    target_processor: LogitsProcessorFn,
    draft_processor: LogitsProcessorFn,
    relaxed: str | None,
) -> tuple[_ModelView, DraftTree]:
    """gamma levels drafted from the running beams. The draft reads the prompt lazily (a draft that
    is never used is never run), then whatever it has not read yet."""
    B, n = prompt.input_ids.shape
    K = state.running_scores.shape[1]
    generated = state.cur_len - n
    root_logits = None
    if d_view is None:
        prefill_logits = draft.prefill(prompt.input_ids, prompt.attention_mask)  # [B, V]
        d_view = _ModelView(prompt.rows, state.running_sequences[:, :, n : state.cur_len])
        if not generated:  # nothing pending: the prefill already scores the beams
            root_logits = prefill_logits[:, None].expand(B, K, -1)
    depth0 = generated - d_view.pending.shape[-1]
    tree = draft_tree(
        draft,
        d_view,
        root_logits,
        state,
        gamma,
        num_draft_beams,
        target_processor,
        draft_processor,
        prompt.lengths,
        depth0,
        sampling=relaxed,
    )
    return d_view, tree


def _target_phase(
    target: TreeForward, t_view: _ModelView | None, prompt: _Prompt, tree: DraftTree | None, generated: int
) -> _TargetOut:
    """ONE target forward over the beams' pending (bonus) tokens and the whole draft tree; in the
    first round over the prompt and the tree."""
    B, n = prompt.input_ids.shape
    K = prompt.rows.shape[1]
    levels, parents = (tree.tokens, tree.parents) if tree else ([], [])
    if t_view is not None:
        logits, rows = _feed(target, t_view, levels, parents, generated - 1, prompt.lengths)
        return _TargetOut(logits[:, :K], rows[:, :K], logits[:, K:], rows[:, K:])
    if not levels:
        logits = target.prefill(prompt.input_ids, prompt.attention_mask)[:, None].expand(B, K, -1)
        return _TargetOut(logits, prompt.rows, None, None)
    no_tokens = prompt.input_ids.new_zeros(B, K, 0)
    logits, rows = _feed(
        target,
        _ModelView(prompt.rows, no_tokens),
        levels,
        parents,
        0,
        prompt.lengths,
        prompt=(prompt.input_ids, prompt.attention_mask),
    )
    return _TargetOut(logits[:, :1].expand(B, K, -1), _pad_rows(prompt.rows, n + rows.shape[1]), logits[:, 1:], rows)


def _advance(
    state: BeamState,
    out: _TargetOut,
    tree: DraftTree | None,
    d_view: _ModelView | None,
    accepted: int,
    parent_idx: torch.Tensor,
    num_draft_beams: int,
) -> tuple[_ModelView, _ModelView | None]:
    """Both models' views of the new beams: the target has read everything but the bonus tokens;
    the draft lags (see _draft_view_after)."""
    N = num_draft_beams
    bonus = state.running_sequences[:, :, state.cur_len - 1 : state.cur_len]  # [B, K, 1]
    level_rows = out.level0_rows if accepted == 0 else out.node_rows[:, (accepted - 1) * N : accepted * N]
    t_rows = gather_beams(_pad_rows(level_rows, out.level0_rows.shape[-1]), parent_idx)
    return _ModelView(t_rows, bonus), _draft_view_after(d_view, tree, accepted, parent_idx, bonus)


def drafted_nodes(
    level_parents: torch.Tensor, level_tokens: torch.Tensor, parent_idx: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """Strict verification's test, shared by both engines: which drafted node of a level [B, N] (its
    parent in the level above and its token) each new target beam [B, K] (parent, token) is. A level
    is accepted when every beam is one: match.any(-1).all(-1); argmax(-1) is then the beam's node."""
    return (level_parents[:, None, :] == parent_idx[:, :, None]) & (level_tokens[:, None, :] == tokens[:, :, None])


def verify(
    state: BeamState,
    cfg: BeamConfig,
    gamma: int,
    tree: DraftTree | None,
    level0_logits: torch.Tensor,
    node_logits: torch.Tensor | None,
    target_processor: LogitsProcessorFn,
    stopping: StoppingFn,
    choose: Callable | None,
) -> tuple[BeamState, int, torch.Tensor, bool]:
    """Take the target's beam steps level by level while the new beams are drafted nodes.

    Every step is the target's own beam step on its own logits (strict: HF's top-2K; relaxed: the
    candidates `choose` accepted), so the draft only decides how far one round gets. Returns
    (state, accepted levels, parent_idx [B, K] = each new beam's parent within level `accepted`,
    done). level0_logits: [B, K, V] at the beams; node_logits: [B, gamma * N, V] at the tree.
    """
    B, K, V = level0_logits.shape
    cur_logits, accepted = level0_logits, 0
    cur_idx = torch.arange(K, device=level0_logits.device).expand(B, K)  # beams' nodes within the level
    for j in range(1, gamma + 2):
        flat_running = state.running_sequences[:, :, : state.cur_len].reshape(B * K, -1)
        log_probs = target_processor(flat_running, torch.log_softmax(cur_logits.reshape(B * K, V), -1))
        log_probs = log_probs.view(B, K, V)
        chosen, all_drafted = None, True
        if choose is not None:  # relaxed: candidates by speculative sampling, not HF's top-2K
            if j > gamma:
                chosen, all_drafted = sample_target(log_probs, state.running_scores)
            else:
                chosen, all_drafted = choose(log_probs, state.running_scores, tree.level(j), cur_idx)
        state, beam_parents = beam_step(state, log_probs, cfg, stopping, chosen=chosen)
        parent_idx = cur_idx.gather(1, beam_parents)  # within level j - 1
        if is_done(state, cfg):
            return state, accepted, parent_idx, True
        if j > gamma:
            break
        tokens = state.running_sequences[:, :, state.cur_len - 1]
        match = drafted_nodes(tree.parents[j - 1], tree.tokens[j - 1], parent_idx, tokens)
        if not all_drafted or not bool(match.any(-1).all()):  # level j is accepted iff all new beams were drafted
            break
        accepted = j
        cur_idx = match.to(torch.int8).argmax(-1)  # [B, K] within level j
        N = tree.tokens[j - 1].shape[1]
        cur_logits = gather_beams(node_logits[:, (j - 1) * N : j * N], cur_idx)
    return state, accepted, parent_idx, False


def _draft_view_after(
    d_view: _ModelView | None, tree: DraftTree | None, accepted: int, parent_idx: torch.Tensor, bonus: torch.Tensor
) -> _ModelView | None:
    """The draft's view of the new beams. It has read the tree's levels 0..gamma-1 but not level
    gamma, so after a fully accepted round it lags by two tokens; with no tree it lags further."""
    if tree is None:
        if d_view is None:  # never run yet: it will read the prompt and all generated tokens
            return None
        pending = torch.cat((gather_beams(d_view.pending, parent_idx), bonus), dim=-1)
        return _ModelView(gather_beams(d_view.rows, parent_idx), pending)
    width = tree.rows[-1].shape[-1]  # the draft cache's length now
    gamma = len(tree.tokens)
    if accepted < gamma:
        return _ModelView(gather_beams(_pad_rows(tree.rows[accepted], width), parent_idx), bonus)
    last_parent = tree.parents[-1].gather(1, parent_idx)
    last_token = tree.tokens[-1].gather(1, parent_idx)[:, :, None]
    rows = gather_beams(_pad_rows(tree.rows[-1], width), last_parent)
    return _ModelView(rows, torch.cat((last_token, bonus), dim=-1))
