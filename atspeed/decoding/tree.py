"""Tree attention: all beams of a request share one flat KV cache.

Representation (one row per request, all rows the same length S):

    cache slots  [prompt p_1..p_n (left-padded)] [level-1 tokens] [level-2 tokens] ...

`visible[b, k, s]` says whether running beam k of request b attends to slot s: the prompt's real
tokens, the beam's own ancestors and its last token. Feeding the K beams' next tokens appends K
slots; each new token sees its parent's visible slots plus itself. Beam reordering is a gather of
`visible` along the beam axis. Slots no live beam can see are dead; `compact` drops them so that
memory and attention cost follow the live tree rather than the whole history.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Tree:
    visible: torch.Tensor  # [B, K, S] bool
    prompt_lengths: torch.Tensor  # [B] real (unpadded) prompt lengths: position id of depth 0

    @property
    def num_slots(self) -> int:
        return self.visible.shape[-1]


def tree_from_prompt(attention_mask: torch.Tensor, num_beams: int) -> Tree:
    """Every beam starts by seeing the real prompt tokens. attention_mask: [B, n] (1 = token)."""
    mask = attention_mask.bool()
    visible = mask[:, None, :].expand(-1, num_beams, -1).contiguous()  # [B, K, n]
    return Tree(visible=visible, prompt_lengths=mask.sum(-1))


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, Q, S] -> HF's 4D additive mask [B, 1, Q, S] (0 where allowed, min where not)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, neg)[:, None]


def level_inputs(tree: Tree, depth: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask [B, 1, K, S+K] and position ids [B, K] to feed one new token per running beam at `depth`."""
    B, K, S = tree.visible.shape
    eye = torch.eye(K, dtype=torch.bool, device=tree.visible.device).expand(B, K, K)
    mask = additive_mask(torch.cat((tree.visible, eye), dim=-1), dtype)
    positions = (tree.prompt_lengths + depth)[:, None].expand(B, K)
    return mask, positions


def grow(tree: Tree) -> Tree:
    """After the K new tokens are in the cache: each beam also sees its own new slot."""
    B, K, _ = tree.visible.shape
    eye = torch.eye(K, dtype=torch.bool, device=tree.visible.device).expand(B, K, K)
    return Tree(torch.cat((tree.visible, eye), dim=-1), tree.prompt_lengths)


def reorder(tree: Tree, parents: torch.Tensor) -> Tree:
    """New running beam k continues old beam parents[b, k]. parents: [B, K]."""
    visible = tree.visible.gather(1, parents[:, :, None].expand(-1, -1, tree.num_slots))
    return Tree(visible, tree.prompt_lengths)


def compaction_plan(tree: Tree) -> tuple[torch.Tensor, Tree] | None:
    """Slots to keep ([B, S'] indices into the cache) and the compacted tree, or None if nothing
    would be saved. Rows keep their own live slots, in order; shorter rows are padded with a dead slot."""
    live = tree.visible.any(dim=1)  # [B, S]
    counts = live.sum(-1)
    keep_len = int(counts.max())  # host sync: only called every few steps
    if keep_len >= tree.num_slots:
        return None
    # stable order: live slots first (by position), then dead ones
    order = torch.sort((~live).to(torch.int8), dim=-1, stable=True).indices[:, :keep_len]  # [B, S']
    visible = tree.visible.gather(2, order[:, None, :].expand(-1, tree.visible.shape[1], -1))
    return order, Tree(visible, tree.prompt_lengths)
