"""The shared-prompt forward (each prompt once, its answers on its KV cache) computes what the plain
per-row forward computes: the same logits, loss and draft gradients, for every method, with
left-padded prompts of different lengths in one batch."""

from __future__ import annotations

import pytest
import torch

from atspeed.align.rows import answer_logits, answer_logits_per_row, encode_rows
from atspeed.align.trainer import METHODS, AlignConfig, batch_loss, batch_rows, training_examples

BEAMS = 3
TIGHT = {"rtol": 1e-9, "atol": 1e-12}  # float64 models: only the summation order differs


def assert_grads_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within 1e-6 of the tensor's largest entry: HF's Llama RMSNorm computes in float32 even in a
    float64 model, and a prompt's gradient is summed over its rows before that norm here, after
    it per row in the plain forward (measured here: at most 1e-7 of the largest entry)."""
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


def mixed_lengths(dataset, teacher, n: int = 6):
    """n examples whose histories have n different lengths, shortest to longest."""
    by_length = {}
    for e in training_examples(dataset, teacher, BEAMS):
        by_length.setdefault(len(e.history), e)
    lengths = sorted(by_length)
    picks = [lengths[round(i * (len(lengths) - 1) / (n - 1))] for i in range(n)]
    assert len(set(picks)) == n
    return [by_length[k] for k in picks]


@pytest.fixture
def rows(rec, dataset, teacher):
    rows = batch_rows(rec.vocab, mixed_lengths(dataset, teacher))
    assert len(set(rows.prompt_mask.sum(1).tolist())) == rows.prompt_ids.shape[0]  # every prompt padded differently
    return rows


def draft_grads(draft) -> list[torch.Tensor]:
    return [p.grad.clone() for p in draft.parameters()]


def test_an_examples_rows_share_its_one_prompt(rows):
    P = rows.prompt_ids.shape[0]
    assert rows.n_gt == P and rows.answers.shape[0] == P * (1 + BEAMS)
    assert rows.prompt_of.tolist() == list(range(P)) + [b for b in range(P) for _ in range(BEAMS)]


def test_shared_prompt_logits_equal_per_row_logits(draft, rows):
    torch.testing.assert_close(answer_logits(draft, rows), answer_logits_per_row(draft, rows), **TIGHT)


@pytest.mark.parametrize("groups", [1, 2, 6, 10])
def test_any_number_of_prompt_groups_gives_the_per_row_logits(groups, draft, rows):
    torch.testing.assert_close(answer_logits(draft, rows, groups), answer_logits_per_row(draft, rows), **TIGHT)


def test_a_group_of_prompts_is_padded_only_to_its_longest(rows):
    shortest = rows.prompt_mask.sum(1).argsort()[:2]
    keep, part = rows.of_prompts(shortest)
    assert part.prompt_ids.shape[1] == rows.prompt_mask[shortest].sum(1).max() < rows.prompt_ids.shape[1]
    assert torch.equal(part.input_ids, rows.input_ids[keep][:, -part.input_ids.shape[1] :])
    assert torch.equal(part.attention_mask, rows.attention_mask[keep][:, -part.input_ids.shape[1] :])


def test_prompts_with_unequal_numbers_of_rows_give_the_per_row_logits(draft, rec, dataset, teacher):
    examples = mixed_lengths(dataset, teacher, n=3)
    items = [e.target for e in examples] + [*examples[1].beams, *examples[2].beams[:1]]
    rows = encode_rows(rec.vocab, [e.history for e in examples], [0, 1, 2, 1, 1, 1, 2], items)
    torch.testing.assert_close(answer_logits(draft, rows), answer_logits_per_row(draft, rows), **TIGHT)


@pytest.mark.parametrize("method", METHODS)
def test_shared_prompt_loss_and_draft_gradients_equal_the_per_row_ones(method, draft, target, rec, rows):
    cfg = AlignConfig(method=method, top_k=5)
    results = []
    for logits_of in (answer_logits, answer_logits_per_row):
        draft.zero_grad()
        loss, parts = batch_loss(draft.train(), target, rows, cfg, rec.trie, logits_of=logits_of)
        loss.backward()
        results.append((loss.detach(), parts, draft_grads(draft)))
    (shared, shared_parts, shared_grads), (plain, plain_parts, plain_grads) = results
    torch.testing.assert_close(shared, plain, **TIGHT)
    assert shared_parts == pytest.approx(plain_parts, rel=1e-9)
    assert all(g.abs().sum() > 0 for g in plain_grads[-2:])  # the last layers' gradients are really there
    for got, want in zip(shared_grads, plain_grads, strict=True):
        assert_grads_close(got, want)


def test_gradients_reach_the_drafts_prompt_pass(draft, rows):
    """The prompt's keys and values come from the cache: the answers' loss must train the layers
    that made them, as in the per-row forward (here: the embedding rows of prompt-only tokens)."""
    answer_tokens = rows.answers.unique()
    prompt_only = rows.prompt_ids[rows.prompt_mask.bool() & ~torch.isin(rows.prompt_ids, answer_tokens)].unique()
    assert len(prompt_only) > 0
    draft.zero_grad()
    answer_logits(draft, rows)[:, 1:].logsumexp(-1).sum().backward()  # only answer-pass logits
    embedding = draft.get_input_embeddings().weight.grad
    assert (embedding[prompt_only].abs().sum(-1) > 0).all()
