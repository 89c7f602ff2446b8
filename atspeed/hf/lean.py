"""The engine's model forward for Llama-family models: HF's own modules and kernels, without HF's dispatch.

A decode of a few tokens is dominated by per-forward overhead, not math: on the 4x256 benchmark
model an HF forward of one token costs ~1.8x its matrix products (mask preprocessing, output
capture, keyword plumbing through every layer). `lean_forward` runs the same computation directly:
the embedding and rotary tables, then per layer the HF norm modules, the MLP's projections and
activation (SiLU and the gate x up product written in place), the q/k/v/o projections, HF's
`apply_rotary_pos_emb` and HF's attention function, with keys and values going through the
cache's own `update` (the engine's slots or the dynamic path's growing cache). Every operation is
the one HF calls, on the same shapes, so the logits are bit-identical; `lean_unsupported` checks
this once per model, dtype and device on a small tree and otherwise keeps the HF forward, with
the reason in the decode's stats (`forward`).
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Iterator

import torch
from torch.nn.modules import module as torch_module
from transformers import activations
from transformers.cache_utils import Cache

from atspeed.decoding.tree import additive_mask, prompt_inputs
from atspeed.hf import compat
from atspeed.hf.model import TreeLM, model_dtype
from atspeed.hf.slot_cache import SlotCache

LEAN_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # pre-norm decoder, q/k/v/o projections, rotary
_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx")
_MLP_PARTS = ("gate_proj", "up_proj", "down_proj", "act_fn")  # HF's gated MLP


def lean_forward(
    model: torch.nn.Module,
    cache: Cache,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    mask: torch.Tensor,
    logits_to_keep: int = 0,
) -> torch.Tensor:
    """What `model(input_ids, attention_mask=mask, position_ids=..., cache=cache, logits_to_keep=...)`
    computes for a 4D additive mask, as float32 logits [B, logits_to_keep or Q, V]."""
    body = model.model
    hidden = body.embed_tokens(input_ids)
    rope = body.rotary_emb(hidden, position_ids)
    rotate = sys.modules[type(body.layers[0].self_attn).__module__].apply_rotary_pos_emb
    attend = compat.attention_function(model)
    for layer in body.layers:
        attn, x = layer.self_attn, layer.input_layernorm(hidden)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        q, k = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises each head before the rotation
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = rotate(q.transpose(1, 2), k.transpose(1, 2), *rope)
        k, v = cache.update(k, attn.v_proj(x).view(shape).transpose(1, 2), attn.layer_idx)
        out, _ = attend(attn, q, k, v, mask, dropout=0.0, scaling=attn.scaling)
        hidden = hidden + attn.o_proj(out.reshape(*x.shape[:-1], -1).contiguous())
        hidden = hidden + mlp(layer.mlp, layer.post_attention_layernorm(hidden))
    hidden = body.norm(hidden)
    if logits_to_keep:
        hidden = hidden[:, -logits_to_keep:]
    return model.lm_head(hidden).float()


_SILU_FORWARDS = {torch.nn.SiLU.forward, activations.SiLUActivation.forward}  # HF 4.57 and 5.x both have the class


def mlp(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """HF's gated MLP, down(act(gate(x)) * up(x)), with the activation (SiLU) and the product written
    in place: two [tokens, intermediate] buffers fewer to allocate (and, on a CPU, to fault in)."""
    h = m.gate_proj(x)
    h = torch.nn.functional.silu(h, inplace=True) if type(m.act_fn).forward in _SILU_FORWARDS else m.act_fn(h)
    return m.down_proj(h.mul_(m.up_proj(x)))


def _structure_unsupported(model: torch.nn.Module) -> str | None:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in LEAN_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {', '.join(LEAN_MODEL_TYPES)}"
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "sdpa":
        return f"attn_implementation={impl!r} (the lean forward calls HF's SDPA attention)"
    body = getattr(model, "model", None)
    if not all(hasattr(body, part) for part in ("embed_tokens", "rotary_emb", "layers", "norm")):
        return f"{type(model).__name__} has no Llama-style body (model.embed_tokens, rotary_emb, layers, norm)"
    for layer in body.layers:
        if not all(hasattr(layer, part) for part in _LAYER_PARTS) or not all(
            hasattr(layer.self_attn, part) for part in _ATTENTION_PARTS
        ):
            return f"{type(layer).__name__} is not a Llama-style decoder layer"
        if not all(hasattr(layer.mlp, part) for part in _MLP_PARTS):
            return f"{type(layer.mlp).__name__} is not a gated MLP ({', '.join(_MLP_PARTS)})"
    return None


def _differs_from_hf(model: torch.nn.Module) -> str | None:
    """Feed a left-padded prompt and a two-node tree level through both forwards; None if bit-identical."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=g).to(device)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :2] = 0
    visible, positions = prompt_inputs(attention_mask)
    level = torch.zeros(2, 2, 9, dtype=torch.bool, device=device)
    level[:, :, :7] = attention_mask.bool()[:, None]
    level[:, :, 7:] = torch.eye(2, dtype=torch.bool, device=device)
    steps = [
        (ids, positions, additive_mask(visible, model_dtype(model)), 0),
        (ids[:, :2], positions[:, -1:].expand(2, 2) + 1, additive_mask(level, model_dtype(model)), 7),
    ]
    lean, hf = TreeLM(model, SlotCache(9)), TreeLM(model, SlotCache(9))
    lean.lean_forward = lean_forward
    with torch.inference_mode():
        for tokens, pos, mask, start in steps:
            if not torch.equal(lean.write(tokens, pos, mask, start), hf.write(tokens, pos, mask, start)):
                return "its logits differ from the HF forward's on a check tree"
    return None


_ENABLED = True


@contextlib.contextmanager
def hf_forward() -> Iterator[None]:
    """Within this block the engine runs every model on the HF forward (benchmarks compare the two)."""
    global _ENABLED
    before, _ENABLED = _ENABLED, False
    try:
        yield
    finally:
        _ENABLED = before


_VERDICTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple] = weakref.WeakKeyDictionary()


def _state_unsupported(model: torch.nn.Module) -> str | None:
    """What may change between two calls on the same model: the switch, training mode, hooks."""
    if not _ENABLED:
        return "the HF forward was asked for (hf_forward())"
    if model.training:
        return "the model is in training mode (dropout)"
    # the lean forward calls some modules' parts directly (a layer's, its attention's): any hook or
    # replaced forward anywhere in the model, or a global hook, is left to the model's own forward
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return "global forward hooks are registered, which only the model's own forward runs"
    for name, m in model.named_modules():
        own = vars(m)  # accelerate's hooks set both of these on the instance
        if m._forward_hooks or m._forward_pre_hooks or "forward" in own or "_hf_hook" in own:
            return f"{name or 'the model'} has forward hooks or a replaced forward, which only its own forward runs"
    return None


def lean_unsupported(model: torch.nn.Module) -> str | None:
    """Why the lean forward will not run this model (the HF forward will), or None. The structure
    and the bit-for-bit check against HF are judged once per model, dtype, device and attention
    implementation; the rest (`_state_unsupported`) on every call."""
    reason = _state_unsupported(model)
    if reason is not None:
        return reason
    key = (model_dtype(model), next(model.parameters()).device, getattr(model.config, "_attn_implementation", None))
    cached = _VERDICTS.get(model)
    if cached is None or cached[0] != key:
        cached = (key, _structure_unsupported(model) or _differs_from_hf(model))
        _VERDICTS[model] = cached
    return cached[1]


def tree_lm(model: torch.nn.Module, cache: Cache | None = None) -> TreeLM:
    """`model` on `cache` (default: a dynamic one) with the fastest exact forward; its `forward_kind`
    says which: "lean", or "hf: <why not lean>"."""
    lm = TreeLM(model, cache)
    reason = lean_unsupported(model)
    if reason is None:
        lm.lean_forward = lean_forward
    lm.forward_kind = "lean" if reason is None else f"hf: {reason}"
    return lm


def slot_lm(model: torch.nn.Module, num_slots: int) -> TreeLM:
    """`tree_lm` on the static engine's slot cache of `num_slots` slots."""
    return tree_lm(model, SlotCache(num_slots))
