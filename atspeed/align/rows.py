"""A batch of sequences prompt + answer, and the logits a model gives its answers.

An alignment step compares draft and target on rows = prompt + answer (an item's L tokens + EOS).
An example's rows share one prompt, so a prompt is stored once (`Rows`) and runs once
(`answer_logits`): its answers run together on its KV cache, side by side under a 4D mask.
`answer_logits_per_row` is the plain form it equals, kept as the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformers import PreTrainedModel

from atspeed.decoding.tree import additive_mask, prompt_inputs
from atspeed.hf.compat import cache_kwarg, new_cache
from atspeed.rec.tokenizer import ItemVocab, encode_prompts
from atspeed.rec.trie import ItemTrie, allowed_mask

# answer_logits runs prompts in this many groups of similar length. Beauty's prompts (23 tokens on
# average, up to 81) padded to the longest of a random batch of 16 hold 3.1x their real tokens; in
# 2, 3, 4 groups 1.9x, 1.4x, 1.3x. A step took 0.67 s in 1 group, 0.57 s in 2, 0.48 s in 3, 0.49 s
# in 4 (atspeed-s, batch 16, 1 CPU thread): fewer, larger forward calls win beyond that.
PROMPT_GROUPS = 3


@dataclass(frozen=True)
class Rows:
    """A batch of sequences prompt + answer, each prompt stored once (an example's 1 + beams rows
    share it). The first n_gt rows hold ground-truth answers, the rest alignment ones."""

    prompt_ids: Tensor  # [P, n] the prompts, left-padded
    prompt_mask: Tensor  # [P, n]
    prompt_of: Tensor  # [R] int64: the prompt of each row
    answers: Tensor  # [R, L + 1] the answer: L item tokens + EOS
    n_gt: int
    prompt_index: Tensor | None = None  # [P] int64: each prompt's row in the teacher data and target logits

    @property
    def input_ids(self) -> Tensor:
        """[R, n + L + 1] each row's whole sequence, left-padded: its answer in the last L + 1 columns."""
        return torch.cat([self.prompt_ids[self.prompt_of], self.answers], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """[R, n + L + 1]"""
        return torch.cat([self.prompt_mask[self.prompt_of], torch.ones_like(self.answers)], dim=1)

    def of_prompts(self, prompts: Tensor) -> tuple[Tensor, Rows]:
        """The rows of `prompts`: their indices [R'] (ascending) and those rows alone, the prompts'
        padding trimmed to the longest of them."""
        keep = torch.isin(self.prompt_of, prompts).nonzero().flatten()  # [R']
        n = int(self.prompt_mask[prompts].sum(1).max())
        renumber = self.prompt_of.new_zeros(self.prompt_ids.shape[0])  # old prompt index -> new
        renumber[prompts] = torch.arange(len(prompts), device=prompts.device)
        index = None if self.prompt_index is None else self.prompt_index[prompts]
        return keep, Rows(self.prompt_ids[prompts, -n:], self.prompt_mask[prompts, -n:],
                          renumber[self.prompt_of[keep]], self.answers[keep], n_gt=0, prompt_index=index)

    def select(self, rows: slice) -> Rows:
        """Only `rows` (all prompts kept: every prompt has a ground-truth row, so none goes unused)."""
        return replace(self, prompt_of=self.prompt_of[rows], answers=self.answers[rows], n_gt=0)

    def to(self, device: torch.device | str) -> Rows:
        index = None if self.prompt_index is None else self.prompt_index.to(device)
        return replace(self, prompt_ids=self.prompt_ids.to(device), prompt_mask=self.prompt_mask.to(device),
                       prompt_of=self.prompt_of.to(device), answers=self.answers.to(device), prompt_index=index)


def encode_rows(
    vocab: ItemVocab, histories: Sequence[Sequence[int]], prompt_of: Sequence[int], items: Sequence[int]
) -> Rows:
    """Rows prompt + item tokens + EOS: row r answers histories[prompt_of[r]] with items[r]."""
    prompt_ids, prompt_mask = encode_prompts(vocab, histories)  # [P, n]
    eos = torch.full((len(items), 1), vocab.eos_token_id, dtype=torch.int64)
    answers = torch.cat([vocab.tokens[list(items)], eos], dim=1)  # [R, L + 1]
    return Rows(prompt_ids, prompt_mask, torch.tensor(prompt_of, dtype=torch.int64), answers, n_gt=0)


def row_slots(prompt_of: Tensor) -> Tensor:
    """[R]: each row's place among the rows of its prompt (0, 1, ... in row order)."""
    same = prompt_of[:, None] == prompt_of[None, :]  # [R, R]
    return same.tril(-1).sum(1)


def answers_visibility(prompt_mask: Tensor, slots: int, L: int) -> Tensor:
    """[P, slots * L, n + slots * L] bool: answer token t of slot g sees its prompt's real tokens
    and tokens 0 .. t of slot g, nothing of the other slots."""
    P, n = prompt_mask.shape
    q = torch.arange(slots * L, device=prompt_mask.device)
    own = (q[:, None] // L == q[None, :] // L) & (q[:, None] >= q[None, :])  # [gL, gL] block-diagonal causal
    prompt = prompt_mask.bool()[:, None, :].expand(P, slots * L, n)
    return torch.cat([prompt, own.expand(P, -1, -1)], dim=-1)


def shared_prompt_logits(model: PreTrainedModel, rows: Rows) -> Tensor:
    """[R, L + 1, V]: answer_logits for rows whose prompts have about the same length.

    Every prompt runs once (its last logit predicts answer token 0) and keeps its keys and values;
    then all answers of a prompt run together on that cache, side by side, a 4D mask keeping each
    answer to its prompt and itself (the EOS is never an input: no logit needs it). Gradients reach
    the prompt pass through the cache. Positions count from each prompt's first real token, as
    generate() numbers them with left padding."""
    L = rows.answers.shape[1] - 1
    P = rows.prompt_ids.shape[0]
    _, positions = prompt_inputs(rows.prompt_mask)  # [P, n]
    inner = getattr(model, "module", model)  # under several processes the draft comes wrapped (DDP)
    cache = {cache_kwarg(inner): new_cache()}
    head = model(input_ids=rows.prompt_ids, attention_mask=rows.prompt_mask, position_ids=positions,
                 use_cache=True, logits_to_keep=1, **cache)  # [P, 1, V]
    slot = row_slots(rows.prompt_of)  # [R]
    G = int(slot.max()) + 1  # answer slots per prompt; unused ones hold token 0, seen by nobody, logits dropped
    ids = rows.answers.new_zeros((P, G, L))
    ids[rows.prompt_of, slot] = rows.answers[:, :L]
    answer_positions = rows.prompt_mask.sum(1)[:, None, None] + torch.arange(L, device=ids.device)  # [P, 1, L]
    mask = additive_mask(answers_visibility(rows.prompt_mask, G, L), next(inner.parameters()).dtype)
    tail = model(input_ids=ids.view(P, G * L), attention_mask=mask,
                 position_ids=answer_positions.expand(P, G, L).reshape(P, G * L), use_cache=True, **cache)
    tail_logits = tail.logits.view(P, G, L, -1)[rows.prompt_of, slot]  # [R, L, V]: answer tokens 1 .. L
    return torch.cat([head.logits[rows.prompt_of], tail_logits], dim=1)


def answer_logits(model: PreTrainedModel, rows: Rows, groups: int = PROMPT_GROUPS) -> Tensor:
    """[R, L + 1, V]: the logits that predict each answer token (L item tokens, then EOS).

    The same logits as answer_logits_per_row up to float rounding, for about P * n + R * L tokens
    instead of R * (n + L + 1): each prompt runs once, not once per row (shared_prompt_logits).
    The prompts run in `groups` groups of similar length, each padded only to its own longest."""
    pieces, where = [], []
    for prompts in rows.prompt_mask.sum(1).argsort().chunk(groups):
        keep, part = rows.of_prompts(prompts)
        if len(keep):
            pieces.append(shared_prompt_logits(model, part))
            where.append(keep)
    return torch.cat(pieces)[torch.cat(where).argsort()]  # back in row order


def answer_logits_per_row(model: PreTrainedModel, rows: Rows) -> Tensor:
    """answer_logits computed the plain way: every row's whole sequence, its prompt recomputed per
    row. The reference that answer_logits is tested and benchmarked against."""
    n = rows.answers.shape[1]  # L + 1
    input_ids, attention_mask = rows.input_ids, rows.attention_mask  # [R, S]
    _, position_ids = prompt_inputs(attention_mask)  # [R, S], as generate() numbers them
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=False, logits_to_keep=n + 1)
    return out.logits[:, :-1]  # [R, L + 1, V]: logits at column S-L-2+t predict answer token t


def answer_allowed(trie: ItemTrie, items: Tensor, vocab_size: int) -> Tensor:
    """[R, L, V] bool: the tokens a valid item may take at each item position, given the ones before."""
    return torch.stack([allowed_mask(trie, items[:, :t], vocab_size) for t in range(items.shape[1])], dim=1)
