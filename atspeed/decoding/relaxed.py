"""Relaxed (sampling) verification of a draft level, AtSpeed §2 "AtSpeed-R" setting.

Beam sampling picks K continuations, without replacement, from p = softmax of the target's joint
sequence scores over all (beam, token) pairs. The draft proposed N continuations from its own q.

- `accept_any` (the paper's rule): accept each drafted x with probability min(1, p(x)/q(x)); with at
  least K accepted keep K of them uniformly at random; otherwise keep the accepted ones, fill up
  from normalize(max(p - q, 0)) (accepted ones excluded) and end the round. With K = N = 1 this is
  standard speculative sampling (exact); with N > 1 it over-accepts and drifts from p.
- `recursive` (K = 1, SpecInfer's multi-draft rejection sampling): the drafts of the current beam
  are i.i.d. from q(.|beam) (the draft samples with replacement); try them one by one against the
  residual r (r <- normalize(max(r - q, 0)) after each rejection), else sample from r. Exact.

Each function returns candidates for `beam_step(chosen=...)` (joint scores and flat indices into
K*V, best first) and whether they are all drafted nodes (the round may go on).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atspeed.decoding.beam import joint_scores

VARIANTS = ("accept_any", "recursive")


@dataclass
class DraftLevel:
    tokens: torch.Tensor  # [B, N]
    parents: torch.Tensor  # [B, N] index into the previous level's nodes
    q: torch.Tensor  # [B, M, V] the draft's joint proposal distribution this level was sampled from


Candidates = tuple[tuple[torch.Tensor, torch.Tensor], bool]  # ((scores, flat idx) best first, all drafted)


def sample_level(
    joint_scores: torch.Tensor, n: int, replacement: bool, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample n continuations from softmax(joint_scores) [B, M*V]; returns (scores, idx, probs)."""
    probs = torch.softmax(joint_scores, dim=-1)
    idx = torch.multinomial(probs, n, replacement=replacement, generator=generator)
    return joint_scores.gather(1, idx), idx, probs


def _sorted(joint: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores = joint.gather(1, idx)
    scores, order = scores.sort(dim=-1, descending=True)
    return scores, idx.gather(1, order)


def _sample_without(
    weights: torch.Tensor, fallback: torch.Tensor, k: int, exclude: torch.Tensor, generator=None
) -> torch.Tensor:
    """k indices from weights [B, X] without replacement, never from `exclude` (bool [B, X]). Rows
    whose residual has fewer than k candidates borrow a vanishing share of `fallback` (p) for the rest,
    and, where p too is used up (e.g. a constraint leaves fewer continuations than k), a still smaller
    uniform share of every other candidate: like beam search, such rows then keep -inf beams."""
    w = weights.masked_fill(exclude, 0.0)
    short = (w > 0).sum(-1, keepdim=True) < k
    floor = torch.full_like(w, 1e-30).masked_fill(exclude, 0.0)
    w = torch.where(short, w + 1e-9 * fallback.masked_fill(exclude, 0.0) + floor, w)
    return torch.multinomial(w, k, replacement=False, generator=generator)


def target_distribution(log_probs: torch.Tensor, running_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(joint scores [B, K*V], p [B, K*V]) of the target's next continuations."""
    joint = joint_scores(running_scores, log_probs)
    return joint, torch.softmax(joint, dim=-1)


def sample_target(
    log_probs: torch.Tensor, running_scores: torch.Tensor, generator: torch.Generator | None = None
) -> Candidates:
    """Plain beam sampling step (no draft level): K continuations from p."""
    K = log_probs.shape[1]
    joint, p = target_distribution(log_probs, running_scores)
    return _sorted(joint, torch.multinomial(p, K, replacement=False, generator=generator)), False


def _drafted_flat(level: DraftLevel, beam_node: torch.Tensor, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat K*V index of each drafted node under the current target beams, and whether its parent is
    a current beam at all. beam_node: [B, K] draft node (previous level) of each current beam."""
    eq = beam_node[:, :, None] == level.parents[:, None, :]  # [B, K, N]
    has = eq.any(1)
    beam = eq.to(torch.int8).argmax(1)  # [B, N]
    return beam * V + level.tokens, has


def _draft_q_under_beams(level: DraftLevel, beam_node: torch.Tensor) -> torch.Tensor:
    """The draft's proposal mass on each (current beam, token): [B, K*V]."""
    B, K = beam_node.shape
    V = level.q.shape[-1]
    return level.q.gather(1, beam_node[:, :, None].expand(B, K, V)).reshape(B, K * V)


def accept_any(
    log_probs: torch.Tensor,
    running_scores: torch.Tensor,
    level: DraftLevel,
    beam_node: torch.Tensor,
    generator: torch.Generator | None = None,
) -> Candidates:
    """The paper's relaxed rule, vectorised over the batch. Returns ((scores, idx), all_drafted)."""
    B, K, V = log_probs.shape
    joint, p = target_distribution(log_probs, running_scores)
    flat, has = _drafted_flat(level, beam_node, V)  # [B, N]
    q_all = _draft_q_under_beams(level, beam_node)  # [B, K*V]
    q_x = q_all.gather(1, flat).clamp_min(1e-30)
    p_x = torch.where(has, p.gather(1, flat), torch.zeros_like(q_x))
    u = torch.rand(p_x.shape, device=p_x.device, generator=generator)
    accepted = u < (p_x / q_x).clamp(max=1.0)  # [B, N]
    n_acc = accepted.sum(-1)  # [B]
    # K of the accepted, uniformly at random (random keys; rejected ones last)
    keys = torch.rand(accepted.shape, device=p_x.device, generator=generator).masked_fill(~accepted, -1.0)
    pick = keys.topk(min(K, keys.shape[1]), dim=-1).indices
    picked_flat = flat.gather(1, pick)  # [B, K] (rows with < K accepted: first n_acc are accepted)
    ok = bool((n_acc >= K).all())
    if not ok:
        is_acc = torch.arange(picked_flat.shape[1], device=p.device)[None, :] < n_acc[:, None]
        # accepted ones are excluded from the fill; a rejected node may share an accepted one's index
        # (a node off the current beams maps to beam 0), so count rather than overwrite
        taken = torch.zeros(p.shape, dtype=torch.int32, device=p.device).scatter_add_(1, picked_flat, is_acc.int()) > 0
        fill = _sample_without((p - q_all).clamp_min(0.0), p, K, taken, generator)
        # accepted first, then fill, per row
        slot = torch.arange(K, device=p.device)[None, :]
        fill_pos = (slot - n_acc[:, None]).clamp_min(0)
        picked_flat = torch.where(slot < n_acc[:, None], picked_flat[:, :K], fill.gather(1, fill_pos))
    return _sorted(joint, picked_flat[:, :K]), ok


def recursive(
    log_probs: torch.Tensor,
    running_scores: torch.Tensor,
    level: DraftLevel,
    beam_node: torch.Tensor,
    generator: torch.Generator | None = None,
) -> Candidates:
    """Exact multi-draft rejection sampling for K = 1 (drafts sampled with replacement)."""
    B, K, V = log_probs.shape
    if K != 1:
        raise NotImplementedError("recursive (exact multi-draft) verification is implemented for K = 1 only.")
    joint, p = target_distribution(log_probs, running_scores)  # [B, V]
    q = _draft_q_under_beams(level, beam_node)  # [B, V] joint mass on the beam's children
    q = q / q.sum(-1, keepdim=True).clamp_min(1e-30)  # q(.|beam): the children's i.i.d. proposal
    flat, has = _drafted_flat(level, beam_node, V)  # [B, N]
    r = p.clone()
    chosen = torch.full((B,), -1, dtype=torch.long, device=p.device)
    for i in range(flat.shape[1]):  # the drafts, in the order they were drawn
        x = flat[:, i]
        live = has[:, i] & (chosen < 0)
        ratio = r.gather(1, x[:, None])[:, 0] / q.gather(1, x[:, None])[:, 0].clamp_min(1e-30)
        u = torch.rand(B, device=p.device, generator=generator)
        take = live & (u < ratio.clamp(max=1.0))
        chosen = torch.where(take, x, chosen)
        reject = live & ~take
        residual = (r - q).clamp_min(0.0)
        residual = residual / residual.sum(-1, keepdim=True).clamp_min(1e-30)
        r = torch.where(reject[:, None], residual, r)
    ok = bool((chosen >= 0).all())
    if not ok:
        r = torch.where(r.sum(-1, keepdim=True) > 0, r, p)
        fallback = torch.multinomial(r, 1, generator=generator)[:, 0]
        chosen = torch.where(chosen >= 0, chosen, fallback)
    return _sorted(joint, chosen[:, None]), ok
