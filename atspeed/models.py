"""Small models built from configs (no downloads): the demo's and benchmarks' default models, and a
draft/target pair whose agreement is set by one number."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SIZES = {  # width, MLP, heads, kv heads, draft layers, target layers, vocab
    "cpu": dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=4,
                draft_layers=1, target_layers=4, vocab_size=1024),
    # TinyLlama-1.1B's shape: the target is ~1.1B parameters, the 1-layer draft ~10x cheaper per token
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
               draft_layers=1, target_layers=22, vocab_size=32000),
}
SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _llama(size: str, layers: int, device: str | torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    spec = {k: v for k, v in SIZES[size].items() if not k.endswith("_layers")}
    config = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=2048, **spec, **SPECIAL)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config.pad_token_id = SPECIAL["pad_token_id"]
    return model


def bench_model(size: str = "cpu", seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The brief's CPU benchmark model: a random 4-layer, 256-wide Llama, with EOS made reachable."""
    torch.manual_seed(seed)
    model = _llama(size, SIZES[size]["target_layers"], device, dtype)
    with torch.no_grad():  # a random model almost never ends: make EOS a plausible token
        model.lm_head.weight[SPECIAL["eos_token_id"]] *= 3.0
    return model


def draft_target_pair(
    size: str = "cpu", noise: float = 0.0, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """(target, draft) with controlled agreement from random weights.

    Draft and target share width, embeddings, final norm, LM head and the draft's layers; the
    target adds decoder layers whose output projections (o_proj, down_proj) are zero, so it computes
    the draft's function at a big model's cost. `noise` (std) on those projections makes them disagree.
    """
    torch.manual_seed(seed)
    spec = SIZES[size]
    target = _llama(size, spec["target_layers"], device, dtype)
    draft = _llama(size, spec["draft_layers"], device, dtype)
    draft.model.embed_tokens.load_state_dict(target.model.embed_tokens.state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    draft.lm_head.load_state_dict(target.lm_head.state_dict())
    with torch.no_grad():
        for i, layer in enumerate(target.model.layers):
            if i < spec["draft_layers"]:
                draft.model.layers[i].load_state_dict(layer.state_dict())
                continue
            for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
                proj.weight.copy_(torch.randn_like(proj.weight) * noise)
    return target, draft
