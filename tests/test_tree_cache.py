"""The tree cache stores the prompt once and, over long generations, only the live tree."""

import torch

from atspeed.hf.generate import generate_with_tree_attention
from helpers import assert_same_beams, batch, hf_generate, make_model


def slot_bytes(model) -> int:
    """Bytes one cache slot (one token) takes for one request, over all layers."""
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * torch.float64.itemsize


def test_long_generation_keeps_only_the_live_tree_in_the_cache():
    model = make_model("llama", seed=3, max_positions=512)
    inputs = batch([32], seed=5)
    kwargs = dict(**inputs, max_new_tokens=256, num_beams=8, num_return_sequences=8,
                  return_dict_in_generate=True, output_scores=True)
    out = generate_with_tree_attention(model, **kwargs)
    all_tokens_ever = (32 + 8 * 256) * slot_bytes(model)  # without compaction
    hf_copies = 8 * (32 + 256) * slot_bytes(model)  # HF: K full sequences
    assert out.stats["peak_cache_bytes"] < all_tokens_ever / 4
    assert out.stats["peak_cache_bytes"] < hf_copies / 4
    assert_same_beams(hf_generate(model, **kwargs), out)


def test_prompt_is_prefilled_once_whatever_the_beam_count():
    model = make_model("llama", seed=1)
    inputs = batch([20], seed=2)
    for K in (2, 16):
        out = generate_with_tree_attention(model, **inputs, max_new_tokens=3, num_beams=K,
                                           num_return_sequences=K, return_dict_in_generate=True)
        assert out.stats["target_tokens"] == 20 + 2 * K  # prompt once, then K tokens per step
