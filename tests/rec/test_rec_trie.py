"""Constrained decoding: every beam is a valid item, and the vectorised processor equals HF's path."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

from atspeed.rec.data import load_index
from atspeed.rec.tokenizer import build_tokenizer, encode_prompts, item_vocab
from atspeed.rec.trie import TrieLogitsProcessor, allowed_mask, build_trie, items_of, prefix_allowed_tokens_fn, walk

HISTORIES = [[0, 5, 7, 9], [3], [100, 200, 300, 400, 500, 1, 2]]  # different lengths: left padding


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


def beam_search(model, vocab, K, max_new_tokens=4, **kwargs):
    input_ids, attention_mask = encode_prompts(vocab, HISTORIES)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        num_beams=K,
        num_return_sequences=K,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=vocab.pad_token_id,
        eos_token_id=vocab.eos_token_id,
        **kwargs,
    )
    return out[:, input_ids.shape[1] :].view(len(HISTORIES), K, -1)  # [B, K, new tokens]


def trie_processor(trie, vocab):
    prompt_len = encode_prompts(vocab, HISTORIES)[0].shape[1]
    return LogitsProcessorList([TrieLogitsProcessor(trie, prompt_len, eos_token_id=vocab.eos_token_id)])


def test_every_item_is_a_leaf_that_decodes_to_itself(trie, vocab):
    assert torch.equal(items_of(trie, vocab.tokens), torch.arange(len(vocab.tokens)))


def test_root_allows_exactly_the_first_level_codes(trie, vocab, tokenizer):
    mask = allowed_mask(trie, torch.empty(1, 0, dtype=torch.long), len(tokenizer))
    assert set(mask[0].nonzero().flatten().tolist()) == set(vocab.tokens[:, 0].tolist())


def test_a_prefix_allows_exactly_the_next_codes_of_items_below_it(trie, vocab, tokenizer):
    prefix = vocab.tokens[:1, :2]  # [1, 2]
    below = (vocab.tokens[:, :2] == prefix).all(1)
    mask = allowed_mask(trie, prefix, len(tokenizer))
    assert set(mask[0].nonzero().flatten().tolist()) == set(vocab.tokens[below, 2].tolist())


def test_after_a_full_item_only_eos_is_allowed(trie, vocab, tokenizer):
    mask = allowed_mask(trie, vocab.tokens[:3], len(tokenizer), [vocab.eos_token_id])
    assert mask.nonzero()[:, 1].tolist() == [vocab.eos_token_id] * 3


def test_a_prefix_outside_the_trie_only_allows_eos(trie, vocab, tokenizer):
    dead = vocab.tokens[:1, :2].flip(1)  # level-b code first: no item starts so
    assert walk(trie, dead).item() == -1
    mask = allowed_mask(trie, dead, len(tokenizer), [vocab.eos_token_id])
    assert mask[0].nonzero().flatten().tolist() == [vocab.eos_token_id]


def test_without_eos_a_full_item_allows_nothing(trie, vocab, tokenizer):
    assert not allowed_mask(trie, vocab.tokens[:2], len(tokenizer)).any()


def test_processor_sets_disallowed_tokens_to_minus_inf_and_keeps_the_rest(trie, vocab, tokenizer):
    scores = torch.randn(2, len(tokenizer))
    input_ids = torch.cat([torch.ones(2, 5, dtype=torch.long), vocab.tokens[:2, :1]], 1)  # depth 1
    out = TrieLogitsProcessor(trie, prompt_len=5)(input_ids, scores)
    allowed = allowed_mask(trie, vocab.tokens[:2, :1], len(tokenizer))
    assert torch.equal(out[allowed], scores[allowed])
    assert out[~allowed].eq(-float("inf")).all()


def test_processor_accepts_a_model_vocabulary_larger_than_the_tokenizer(trie, vocab, tokenizer):
    scores = torch.randn(1, len(tokenizer) + 7)  # e.g. embeddings padded to a multiple of 8
    out = TrieLogitsProcessor(trie, prompt_len=1)(torch.ones(1, 1, dtype=torch.long), scores)
    assert out[0, len(tokenizer) :].eq(-float("inf")).all()


def test_processor_refuses_input_shorter_than_the_prompt(trie, tokenizer):
    with pytest.raises(ValueError, match="prompt_len=5"):
        TrieLogitsProcessor(trie, prompt_len=5)(torch.ones(1, 3, dtype=torch.long), torch.randn(1, len(tokenizer)))


def random_rows(vocab, V, N, depth, generator):
    """Rows of prompt + `depth` generated tokens: mostly valid prefixes, some corrupted, some random."""
    rows = vocab.tokens[torch.randint(len(vocab.tokens), (N,), generator=generator)]  # [N, L]
    rows = torch.cat([rows, torch.full((N, 2), vocab.eos_token_id)], 1)[:, :depth]  # [N, depth]
    if depth:
        corrupt = torch.rand(N, generator=generator) < 0.3
        col = torch.randint(depth, (N,), generator=generator)
        rows[corrupt, col[corrupt]] = torch.randint(V, (int(corrupt.sum()),), generator=generator)
    prompt = torch.randint(V, (N, 6), generator=generator)
    return torch.cat([prompt, rows], 1)


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 5])
def test_processor_equals_hf_prefix_allowed_tokens_fn_on_random_inputs(trie, vocab, tokenizer, depth):
    V, K, B = len(tokenizer), 4, 8
    g = torch.Generator().manual_seed(depth)
    input_ids = random_rows(vocab, V, B * K, depth, g)  # [B * K, 6 + depth]
    scores = torch.randn(B * K, V, generator=g)
    ours = TrieLogitsProcessor(trie, 6, vocab.eos_token_id)(input_ids, scores)
    hf = PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn(trie, 6, vocab.eos_token_id), K)(input_ids, scores)
    assert torch.equal(ours, hf)


@pytest.mark.parametrize("K", [1, 5, 20])
def test_hf_beam_search_with_the_processor_returns_only_valid_distinct_items(model, trie, vocab, K):
    tails = beam_search(model, vocab, K, logits_processor=trie_processor(trie, vocab))  # [B, K, 4]
    items = items_of(trie, tails.reshape(-1, 4)).view(len(HISTORIES), K)
    assert (items >= 0).all()
    assert all(len(set(row)) == K for row in items.tolist())


def test_unconstrained_beam_search_does_produce_invalid_items(model, trie, vocab):
    tails = beam_search(model, vocab, 5)  # the check above has teeth
    assert (items_of(trie, tails.reshape(-1, 4)) < 0).any()


def test_generating_past_the_item_ends_each_beam_with_eos(model, trie, vocab):
    tails = beam_search(model, vocab, 5, max_new_tokens=6, logits_processor=trie_processor(trie, vocab))
    assert (items_of(trie, tails[..., :4].reshape(-1, 4)) >= 0).all()
    assert (tails[..., 4] == vocab.eos_token_id).all()


def test_hf_generate_gives_the_same_beams_with_processor_or_prefix_allowed_tokens_fn(model, trie, vocab):
    prompt_len = encode_prompts(vocab, HISTORIES)[0].shape[1]
    fn = prefix_allowed_tokens_fn(trie, prompt_len, vocab.eos_token_id)
    ours = beam_search(model, vocab, 5, logits_processor=trie_processor(trie, vocab))
    theirs = beam_search(model, vocab, 5, prefix_allowed_tokens_fn=fn)
    assert torch.equal(ours, theirs)


def test_beauty_trie_is_small_and_matches_hf_path(beauty_dir):
    index = load_index(beauty_dir / "beauty.index.json", allow_duplicate_ids=True)
    tokenizer = build_tokenizer(index)
    vocab = item_vocab(tokenizer, index)
    trie = build_trie(vocab.tokens, len(tokenizer))
    assert trie.nbytes() < 16e6
    g = torch.Generator().manual_seed(0)
    for depth in range(5):
        input_ids = random_rows(vocab, len(tokenizer), 40, depth, g)
        scores = torch.randn(40, len(tokenizer), generator=g)
        hf = PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn(trie, 6, vocab.eos_token_id), 20)
        assert torch.equal(TrieLogitsProcessor(trie, 6, vocab.eos_token_id)(input_ids, scores), hf(input_ids, scores))
