"""Tree attention: all beams of a request share one flat KV cache.

Cache layout (one row per request, every row the same length S):

    [prompt p_1..p_n (left-padded)] [tokens fed by call 1] [tokens fed by call 2] ...

A beam is described by its row `visible[b, k, s]`: which cache slots its already-read prefix
occupies (the prompt's real tokens and its ancestors). New tokens are nodes with parents; each
sees its parent's slots, its new ancestors and itself, and its position id is prompt length +
depth. `level_inputs` feeds one token per beam (a beam search step); `node_visibility` feeds any
tree (pending chains, draft levels, the whole draft tree for verification). Slots no live beam can
see are dead; `compaction_plan` drops them so memory and attention follow the live tree.
"""

from __future__ import annotations

import torch


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, Q, S] -> HF's 4D additive mask [B, 1, Q, S] (0 where allowed, min where not)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, neg)[:, None]


def prompt_inputs(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal + padding visibility [B, n, n] and HF-style position ids [B, n] of a left-padded prompt
    (real tokens count 0, 1, ...; padding gets position 1, as HF's generate() gives it)."""
    n = attention_mask.shape[1]
    real = attention_mask.bool()
    causal = torch.ones(n, n, dtype=torch.bool, device=real.device).tril()
    visible = causal[None] & real[:, None, :]
    positions = attention_mask.long().cumsum(-1) - 1
    positions.masked_fill_(attention_mask == 0, 1)
    return visible, positions


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


def chain_parents(num_roots: int, length: int, device: torch.device) -> torch.Tensor:
    """Parents for feeding a chain of `length` tokens per root, node (k, i) at index k*length + i."""
    idx = torch.arange(num_roots * length, device=device)
    k, i = idx // length, idx % length
    return torch.where(i == 0, k, num_roots + idx - 1)


def level_inputs(
    parent_rows: torch.Tensor, depth: int, prompt_lengths: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs to feed one new token per beam (a plain beam search step). parent_rows: [B, K, S]
    slots each beam's prefix occupies. Returns the additive mask [B, 1, K, S+K], position ids
    [B, K] and the new tokens' own rows [B, K, S+K] (their prefix plus themselves)."""
    B, K, _ = parent_rows.shape
    eye = torch.eye(K, dtype=torch.bool, device=parent_rows.device).expand(B, K, K)
    visible = torch.cat((parent_rows, eye), dim=-1)
    positions = (prompt_lengths + depth)[:, None].expand(B, K)
    return additive_mask(visible, dtype), positions, visible


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
