"""The trie constraint works through atspeed's own decoders: tree-attention and speculative beam
search return HF's constrained top-K, and every returned item is valid."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from atspeed.beamsd import beam_search_by_SD, beam_search_by_TreeAttn
from atspeed.rec.tokenizer import decode_items, encode_prompts
from atspeed.rec.trie import TrieLogitsProcessor

HISTORIES = [[0, 5, 7, 9], [3], [100, 200, 300, 400, 500, 1, 2]]  # different lengths: left padding


@pytest.fixture(scope="module")
def target(tokenizer):
    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg).eval().double()


@pytest.fixture(scope="module")
def draft(target):
    """The target with perturbed weights: agrees with it part of the time."""
    model = copy.deepcopy(target)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def constrained(trie, vocab, inputs) -> dict:
    processor = TrieLogitsProcessor(trie, inputs["input_ids"].shape[1], eos_token_id=vocab.eos_token_id)
    return dict(logits_processor=LogitsProcessorList([processor]), max_new_tokens=4,
                pad_token_id=vocab.pad_token_id, eos_token_id=vocab.eos_token_id)


@pytest.mark.parametrize("K", [5, 20])
def test_tree_attention_returns_hfs_constrained_top_k(target, trie, vocab, K):
    input_ids, attention_mask = encode_prompts(vocab, HISTORIES)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    settings = constrained(trie, vocab, inputs)
    ref = target.generate(**inputs, num_beams=K, num_return_sequences=K, return_dict_in_generate=True,
                          output_scores=True, **settings)
    out = beam_search_by_TreeAttn(target, inputs, beam_size=K, **settings)
    assert torch.equal(out["beam_sequences"], ref.sequences)
    assert torch.equal(out["beam_scores"], ref.sequences_scores)


@pytest.mark.parametrize("K, N", [(5, 10), (20, 40)])
def test_speculative_beam_search_returns_only_valid_items_and_the_targets_list(target, draft, trie, vocab, K, N):
    input_ids, attention_mask = encode_prompts(vocab, HISTORIES)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    settings = constrained(trie, vocab, inputs)
    tree = beam_search_by_TreeAttn(target, inputs, beam_size=K, **settings)
    sd = beam_search_by_SD(target, draft, inputs, gamma=3, beam_size=K, draft_beam_size=N, **settings)
    assert torch.equal(sd["beam_sequences"], tree["beam_sequences"])
    items = decode_items(vocab, sd["beam_sequences"][:, input_ids.shape[1] :])
    assert None not in items
    for b in range(len(HISTORIES)):
        assert len(set(items[b * K : (b + 1) * K])) == K  # K distinct items per user


def test_a_partly_agreeing_constrained_draft_gets_levels_accepted(target, draft, trie, vocab):
    input_ids, attention_mask = encode_prompts(vocab, HISTORIES[:1])
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    sd = beam_search_by_SD(target, draft, inputs, gamma=3, beam_size=5, draft_beam_size=40,
                           **constrained(trie, vocab, inputs))
    assert sd["total_accept_steps"] > 0 and sd["target_calls"] < 4
