"""Constrained decoding to valid items: a prefix trie over semantic IDs, applied as a logits processor.

Every beam must spell a real item, so at each step a row may only take the tokens that extend its
generated prefix inside the trie. HF's `prefix_allowed_tokens_fn` path calls Python once per row
per step; here the whole batch is handled by a few tensor ops, with no loop over rows:

1. walk:  the row's generated tokens (depth <= L of them) are mapped to a trie node, one level at a
          time, by binary search in a sorted edge table (key = node * V + token -> child node);
2. mask:  a per-level dense table [nodes at that depth, codes of that level] of allowed children
          is gathered at those nodes and scattered into a [N, V] mask.

Node ids are global and breadth-first: the root is 0, nodes of one depth are contiguous. Memory is
O(edges) for the walk plus sum_d nodes_d * codes_d bytes for the masks (Beauty: 12k items, ~5 MB).

Rows that are not a proper prefix of an item -- a full item (depth >= L) or a prefix that left
the trie -- may only take EOS (nothing at all when no eos_token_id is given), so a finished item
ends and a dead beam keeps its -inf score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from transformers import LogitsProcessor


@dataclass(frozen=True)
class ItemTrie:
    items: torch.Tensor  # [I, L] int64 token ids of every item (row = item id; duplicates allowed)
    edge_keys: torch.Tensor  # [E] int64, sorted: parent_node * vocab_size + token
    edge_child: torch.Tensor  # [E] int64 child node of each edge
    depth_start: torch.Tensor  # [L + 2] int64: nodes of depth d are depth_start[d] … depth_start[d+1]-1
    level_tokens: tuple[torch.Tensor, ...]  # L x [C_d] int64: tokens that occur at position d (sorted)
    allowed: tuple[torch.Tensor, ...]  # L x [n_d, C_d] bool: node (local id at depth d) -> code c allowed
    leaf_item: torch.Tensor  # [n_L] int64: item of each full ID (the lowest item id if shared)
    vocab_size: int  # token ids are < vocab_size

    @property
    def id_length(self) -> int:
        return self.items.shape[1]

    @property
    def device(self) -> torch.device:
        return self.edge_keys.device

    def to(self, device: torch.device | str) -> ItemTrie:
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                moved[f.name] = v.to(device)
            elif isinstance(v, tuple):
                moved[f.name] = tuple(t.to(device) for t in v)
        return replace(self, **moved)

    def nbytes(self) -> int:
        tensors = [self.items, self.edge_keys, self.edge_child, self.leaf_item, *self.level_tokens, *self.allowed]
        return sum(t.numel() * t.element_size() for t in tensors)


def build_trie(items: torch.Tensor | np.ndarray | Sequence[Sequence[int]], vocab_size: int | None = None) -> ItemTrie:
    """Trie over the rows of `items` ([I, L] token ids; row i = item i)."""
    tok = np.asarray(items.cpu() if isinstance(items, torch.Tensor) else items, dtype=np.int64)
    if tok.ndim != 2 or tok.shape[0] == 0 or tok.shape[1] == 0:
        raise ValueError(f"items must be a non-empty [num_items, id_length] table, got shape {tok.shape}.")
    if tok.min() < 0:
        raise ValueError("Token ids must be >= 0.")
    V = int(tok.max()) + 1 if vocab_size is None else vocab_size
    if tok.max() >= V:
        raise ValueError(f"Token id {tok.max()} is not below vocab_size={V}.")
    n_items, L = tok.shape
    # local node id of every item's prefix at each depth: node[d][i] (depth 0 = root)
    node = [np.zeros(n_items, dtype=np.int64)]
    counts = [1]
    for d in range(1, L + 1):
        _, inverse = np.unique(tok[:, :d], axis=0, return_inverse=True)
        node.append(inverse.reshape(-1))
        counts.append(int(inverse.max()) + 1)
    depth_start = np.concatenate([[0], np.cumsum(counts)])  # [L + 2]
    keys, child, level_tokens, allowed = [], [], [], []
    for d in range(L):
        parent = node[d] + depth_start[d]  # [I] global ids
        keys.append(parent * V + tok[:, d])
        child.append(node[d + 1] + depth_start[d + 1])
        codes = np.unique(tok[:, d])  # [C_d]
        table = np.zeros((counts[d], len(codes)), dtype=bool)
        table[node[d], np.searchsorted(codes, tok[:, d])] = True
        level_tokens.append(torch.from_numpy(codes))
        allowed.append(torch.from_numpy(table))
    keys_all, first = np.unique(np.concatenate(keys), return_index=True)  # sorted, one per edge
    leaf_item = np.full(counts[L], n_items, dtype=np.int64)
    np.minimum.at(leaf_item, node[L], np.arange(n_items))
    return ItemTrie(
        items=torch.from_numpy(tok),
        edge_keys=torch.from_numpy(keys_all),
        edge_child=torch.from_numpy(np.concatenate(child)[first]),
        depth_start=torch.from_numpy(depth_start),
        level_tokens=tuple(level_tokens),
        allowed=tuple(allowed),
        leaf_item=torch.from_numpy(leaf_item),
        vocab_size=V,
    )


def walk(trie: ItemTrie, prefix: torch.Tensor, depth: torch.Tensor | None = None) -> torch.Tensor:
    """Trie node reached by each row of `prefix` ([N, d] generated tokens, d <= L); -1 if it left the trie.
    `depth` [N]: each row's own prefix length (<= d), for rows at different lengths."""
    N, width = prefix.shape
    node = torch.zeros(N, dtype=torch.int64, device=prefix.device)  # [N] root
    E = trie.edge_keys.numel()
    for j in range(min(width, trie.id_length)):  # at most L levels; every row advances together
        tok = prefix[:, j]
        key = node * trie.vocab_size + tok  # [N]
        pos = torch.searchsorted(trie.edge_keys, key).clamp_(max=E - 1)
        hit = (trie.edge_keys[pos] == key) & (node >= 0) & (tok >= 0) & (tok < trie.vocab_size)
        child = torch.where(hit, trie.edge_child[pos], -1)
        node = child if depth is None else torch.where(depth > j, child, node)
    return node


def items_of(trie: ItemTrie, tails: torch.Tensor) -> torch.Tensor:
    """Item id of each generated tail ([N, L] tokens after the prompt); -1 where it is no item."""
    node = walk(trie, tails[:, : trie.id_length])
    if tails.shape[1] < trie.id_length:
        return torch.full_like(node, -1)
    first_leaf = trie.depth_start[trie.id_length]
    return torch.where(node >= 0, trie.leaf_item[(node - first_leaf).clamp(min=0)], -1)


def allowed_mask(
    trie: ItemTrie,
    prefix: torch.Tensor,
    vocab_size: int,
    eos_token_ids: Sequence[int] = (),
    depth: torch.Tensor | None = None,
) -> torch.Tensor:
    """[N, vocab_size] bool: the tokens each row may take next, given its generated `prefix` [N, d]
    (or its first depth[n] tokens, for rows at different lengths)."""
    N, width = prefix.shape
    mask = torch.zeros((N, vocab_size), dtype=torch.bool, device=prefix.device)
    node = walk(trie, prefix, depth)  # [N]
    alive = node >= 0
    if depth is None:  # one depth for all rows: one level's table
        levels = [(width, None)] if width < trie.id_length else []
    else:
        levels = [(d, depth == d) for d in range(min(width + 1, trie.id_length))]
    for d, rows in levels:
        local = (node - trie.depth_start[d]).clamp_(min=0, max=trie.allowed[d].shape[0] - 1)
        children = trie.allowed[d][local] & alive[:, None]  # [N, C_d]
        if rows is None:
            mask[:, trie.level_tokens[d]] = children
        else:
            mask[:, trie.level_tokens[d]] |= children & rows[:, None]
    full = torch.full_like(alive, width >= trie.id_length) if depth is None else depth >= trie.id_length
    dead = ~alive | full  # a prefix that left the trie, or a full item: it may only end
    for eos in eos_token_ids:  # usually one; int indexing needs no host-to-device copy
        mask[:, eos] |= dead
    return mask


def _eos_list(eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        return []
    return [int(e) for e in torch.as_tensor(eos_token_id).flatten().tolist()]  # int, list or tensor


class TrieLogitsProcessor(LogitsProcessor):
    """Sets every token that would not continue a valid item to -inf.

    `prompt_len` is the (left-padded) prompt length: row depth = input_ids.shape[1] - prompt_len.
    Works with `generate(logits_processor=LogitsProcessorList([...]))` for beam search, sampling
    and greedy decoding, and with any decoder that calls processors as (input_ids, scores).
    """

    def __init__(self, trie: ItemTrie, prompt_len: int, eos_token_id: int | Sequence[int] | None = None):
        self.trie = trie
        self.prompt_len = prompt_len
        self.eos_token_ids = _eos_list(eos_token_id)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # input_ids [N, cur_len], scores [N, V]
        if input_ids.shape[1] < self.prompt_len:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens but prompt_len={self.prompt_len}: build the processor "
                "with the padded prompt length of this batch."
            )
        if self.trie.vocab_size > scores.shape[-1]:
            raise ValueError(
                f"The trie uses token ids up to {self.trie.vocab_size - 1} but scores have {scores.shape[-1]}."
            )
        if self.trie.device != scores.device:
            self.trie = self.trie.to(scores.device)  # once: the tables then live on the model's device
        prefix = input_ids[:, self.prompt_len :]
        mask = allowed_mask(self.trie, prefix, scores.shape[-1], self.eos_token_ids)
        return scores.masked_fill(~mask, -float("inf"))

    def graph_key(self) -> tuple:
        """What a captured decode bakes in: this trie's tables, the prompt length and EOS ids."""
        return (id(self.trie), self.prompt_len, tuple(self.eos_token_ids))

    def per_row(self, input_ids: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The same constraint for rows at their own lengths: input_ids [N, max_length] holds row n's
        tokens in its first lengths[n] columns (prompt included)."""
        if self.trie.device != scores.device:
            self.trie = self.trie.to(scores.device)
        prefix = input_ids[:, self.prompt_len : self.prompt_len + self.trie.id_length]
        depth = lengths - self.prompt_len
        mask = allowed_mask(self.trie, prefix, scores.shape[-1], self.eos_token_ids, depth)
        return scores.masked_fill(~mask, -float("inf"))


def prefix_allowed_tokens_fn(
    trie: ItemTrie, prompt_len: int, eos_token_id: int | Sequence[int] | None = None
) -> Callable[[int, torch.Tensor], list[int]]:
    """The same constraint in HF's `generate(prefix_allowed_tokens_fn=...)` form (one Python call per row).

    Kept as the reference to test the vectorised processor against, and to compare speed with.
    HF raises on an empty list, so without eos_token_id a full item or a dead prefix cannot be handled.
    """
    children: dict[tuple[int, ...], set[int]] = {}
    for row in trie.items.tolist():
        for d in range(len(row)):
            children.setdefault(tuple(row[:d]), set()).add(row[d])
    table = {prefix: sorted(tokens) for prefix, tokens in children.items()}
    eos = _eos_list(eos_token_id)

    def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return table.get(tuple(input_ids[prompt_len:].tolist()), eos)

    return fn
