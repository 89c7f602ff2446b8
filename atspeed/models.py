"""Random Llama models built from configs, for trying atspeed and timing it without downloading weights.

    from atspeed.models import bench_model, draft_target_pair
    model = bench_model()                            # a 4-layer, 256-wide Llama (vocabulary 1024)
    target, draft = draft_target_pair(noise=0.0)     # a target and a 1-layer draft that always agrees

Their outputs mean nothing (the weights are random), but their shapes and costs are real ones:
`size="cpu"` is small enough for a laptop, `size="1b"` has TinyLlama-1.1B's shape for a GPU. The
draft/target pair lets you choose how often the draft agrees with the target, which is what decides
how much speculative beam search gains: `noise=0` agrees always, larger values less and less.
The benchmarks in `benchmarks/` and `atspeed bench` run on these models.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SIZES = {  # width, MLP, heads, kv heads, draft layers, target layers, vocab (a literal: the CLI reads its keys)
    "cpu": {"hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4, "num_key_value_heads": 4,
            "draft_layers": 1, "target_layers": 4, "vocab_size": 1024},
    # TinyLlama-1.1B's shape: the target is ~1.1B parameters, the 1-layer draft ~10x cheaper per token
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32, "num_key_value_heads": 4,
           "draft_layers": 1, "target_layers": 22, "vocab_size": 32000},
}
SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _llama(size: str, layers: int, device: str | torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    spec = {k: v for k, v in SIZES[size].items() if not k.endswith("_layers")}
    config = LlamaConfig(num_hidden_layers=layers, max_position_embeddings=2048, **spec, **SPECIAL)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config.pad_token_id = SPECIAL["pad_token_id"]
    return model


def bench_model(
    size: str = "cpu", seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> LlamaForCausalLM:
    """A random Llama of `size` ("cpu": 4 layers x 256, "1b": 22 x 2048), in eval mode on `device`.

    Random weights almost never pick EOS, so its output row is scaled up: generation then ends
    sometimes, as a trained model's does, and EOS handling is exercised and timed too.
    """
    torch.manual_seed(seed)
    model = _llama(size, SIZES[size]["target_layers"], device, dtype)
    with torch.no_grad():  # a random model almost never ends: make EOS a plausible token
        model.lm_head.weight[SPECIAL["eos_token_id"]] *= 3.0
    return model


def draft_target_pair(
    size: str = "cpu", noise: float = 0.0, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """(target, draft): a random target and a smaller draft that agrees with it as often as you choose.

    The draft is the target's first layer(s) with the same embeddings, final norm and LM head. The
    target's other layers start with their output projections (o_proj, down_proj) at zero, so it
    computes exactly the draft's function at a big model's cost: with `noise=0` every drafted token
    is accepted. `noise` is the standard deviation of random values put in those projections: the
    larger it is, the more often the target disagrees with the draft.
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
