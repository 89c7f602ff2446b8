"""Tree attention: all beams of a request share one flat KV cache.

Cache layout (one row per request, every row the same length S):

    [prompt p_1..p_n (left-padded)] [tokens fed by call 1] [tokens fed by call 2] ...

A `Frontier` describes the running beams from one model's point of view: `visible[b, k, s]` says
which cache slots beam k's already-fed prefix occupies (the prompt's real tokens and its fed
ancestors), and `pending[b, k]` holds its last P tokens that the model has not read yet (P = 1 in
plain beam search; a draft may lag by 2 after a fully accepted round).

Feeding is one primitive, `feed_inputs`: Q new nodes, each with a parent that is either a beam's
fed prefix ("root") or an earlier new node. Every node sees its root's slots, its new ancestors and
itself; its position id is prompt length + depth. Plain beam steps, pending chains, draft levels and
the whole draft tree for verification are all calls of it. Slots no live beam can see are dead;
`compaction_plan` drops them so memory and attention follow the live tree, not the history.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Frontier:
    visible: torch.Tensor  # [B, K, S] bool: cache slots each beam attends to
    pending: torch.Tensor  # [B, K, P] tokens of each beam not yet in the cache (last = beam's last token)
    depth: int  # generated tokens before the first pending one (its position = prompt length + depth)

    @property
    def num_slots(self) -> int:
        return self.visible.shape[-1]


def frontier_from_prompt(attention_mask: torch.Tensor, num_beams: int, last_tokens: torch.Tensor) -> Frontier:
    """Beams right after the prompt's prefill, each with its first generated token pending.
    attention_mask: [B, n] (1 = real token); last_tokens: [B, K]."""
    visible = attention_mask.bool()[:, None, :].expand(-1, num_beams, -1).contiguous()
    return Frontier(visible=visible, pending=last_tokens[:, :, None], depth=0)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, Q, S] -> HF's 4D additive mask [B, 1, Q, S] (0 where allowed, min where not)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, neg)[:, None]


def node_visibility(root_visible: torch.Tensor, parents: torch.Tensor, max_depth: int) -> torch.Tensor:
    """Visible slots of Q new nodes appended after the S cache slots: [B, Q, S + Q] bool.

    root_visible: [B, R, S]. parents: [B, Q] in one index space: 0..R-1 are roots, R + j is new
    node j (a parent always comes before its child). max_depth bounds the new-node chain length.
    """
    B, R, S = root_visible.shape
    Q = parents.shape[1]
    eye = torch.eye(Q, dtype=torch.bool, device=parents.device).expand(B, Q, Q)
    roots = torch.cat((root_visible, root_visible.new_zeros(B, R, Q)), dim=-1)  # [B, R, S+Q]
    nodes = torch.cat((root_visible.new_zeros(B, Q, S), eye), dim=-1)  # [B, Q, S+Q]: itself
    own = nodes
    for _ in range(max_depth):  # each pass resolves one more level of new ancestors
        rows = torch.cat((roots, nodes), dim=1)  # [B, R+Q, S+Q]
        nodes = rows.gather(1, parents[:, :, None].expand(-1, -1, S + Q)) | own
    return nodes


def feed_inputs(
    root_visible: torch.Tensor,
    parents: torch.Tensor,
    node_depth: torch.Tensor,
    prompt_lengths: torch.Tensor,
    max_depth: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(visible [B, Q, S+Q], additive mask [B, 1, Q, S+Q], position ids [B, Q]) for feeding Q nodes.
    node_depth: [B, Q] generated tokens before each node."""
    visible = node_visibility(root_visible, parents, max_depth)
    positions = prompt_lengths[:, None] + node_depth
    return visible, additive_mask(visible, dtype), positions


def chain_parents(num_roots: int, length: int, device: torch.device) -> torch.Tensor:
    """Parents for feeding a chain of `length` tokens per root, node (k, i) at index k*length + i."""
    idx = torch.arange(num_roots * length, device=device)
    k, i = idx // length, idx % length
    return torch.where(i == 0, k, num_roots + idx - 1)


def feed_frontier(
    frontier: Frontier, prompt_lengths: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs to read every beam's pending tokens: tokens [B, K*P], mask, positions, and the
    visible rows [B, K*P, S+K*P] of the new nodes. Beam k's last token is node k*P + P - 1."""
    B, K, P = frontier.pending.shape
    if P == 1:  # one new token per beam: it sees its beam's slots and itself
        eye = torch.eye(K, dtype=torch.bool, device=frontier.visible.device).expand(B, K, K)
        visible = torch.cat((frontier.visible, eye), dim=-1)
        positions = (prompt_lengths + frontier.depth)[:, None].expand(B, K)
        return frontier.pending[:, :, 0], additive_mask(visible, dtype), positions, visible
    parents = chain_parents(K, P, frontier.pending.device).expand(B, K * P)
    depth = (frontier.depth + torch.arange(P, device=parents.device)).repeat(K).expand(B, K * P)
    visible, mask, positions = feed_inputs(frontier.visible, parents, depth, prompt_lengths, P, dtype)
    return frontier.pending.reshape(B, K * P), mask, positions, visible


def compaction_plan(live_rows: list[torch.Tensor]) -> torch.Tensor | None:
    """Cache slots to keep ([B, S'] indices, in order) given every visibility row still needed
    ([B, *, S] each), or None if nothing would be saved. Shorter rows are padded with dead slots."""
    live = torch.cat(live_rows, dim=1).any(dim=1)  # [B, S]
    keep_len = int(live.sum(-1).max())  # host sync: called once every few steps
    if keep_len >= live.shape[-1]:
        return None
    return torch.sort((~live).to(torch.int8), dim=-1, stable=True).indices[:, :keep_len]


def select_slots(visible: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Visibility rows [B, R, S] restricted to the kept slots index [B, S']."""
    return visible.gather(2, index[:, None, :].expand(-1, visible.shape[1], -1))
