"""Every difference between supported transformers versions (4.57.x and 5.x) lives here.

- 5.24 renamed the forward argument `past_key_values` to `cache`.
- 5.20 made `Cache.crop` take only a negative count (tokens to drop); we never call `crop`, we
  slice the layers ourselves, which works the same on every version.
- `generate(custom_generate=callable)` exists in 4.57 and 5.x with the same calling convention.
- Beam sampling ranks the sampled candidates by score from 5.24 on; before, they keep draw order.
- 5.x saves a fast tokenizer as `tokenizer_class: "TokenizersBackend"`, a name 4.57 cannot load;
  "PreTrainedTokenizerFast" loads as the same tokenizer on both, so saved folders use that.
- HF's private generation helpers atspeed relies on (the EOS / pad tensors generate() prepares,
  its greedy/sampling loop, its logits-processor builder) are reached only through the functions
  below: they are the lines a transformers release breaks first.
- The static engine's SlotLayer (atspeed.hf.slot_cache) takes update()'s arguments as *args /
  **kwargs: 4.57 passes cache_kwargs, 5.x keyword arguments.
- The lean forward (atspeed.hf.lean) calls the attention function a model's config names from the
  registry both versions keep in `transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS`.
"""

from __future__ import annotations

import inspect
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache

TRANSFORMERS_VERSION = Version(transformers.__version__)
SORTS_SAMPLED_BEAMS = TRANSFORMERS_VERSION >= Version("5.24.0.dev0")


@lru_cache(maxsize=None)
def _forward_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def forward_params(model: torch.nn.Module) -> frozenset[str]:
    return _forward_params(type(model))


def cache_kwarg(model: torch.nn.Module) -> str:
    """Name of the forward argument that takes the KV cache."""
    return "cache" if "cache" in forward_params(model) else "past_key_values"


def attention_function(model: torch.nn.Module) -> Any:
    """The attention function HF's layers call for this model (e.g. its SDPA wrapper)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[model.config._attn_implementation]


def new_cache() -> DynamicCache:
    """A plain append-only KV cache (no sliding-window layers: tree masks handle visibility)."""
    return DynamicCache()


def cache_layers(cache: DynamicCache) -> list:
    return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]


def cache_select(cache: DynamicCache, index: torch.Tensor) -> None:
    """Keep, per row, the cache slots `index` [B, S'] in that order (in place)."""
    for layer in cache_layers(cache):
        B, H, _, D = layer.keys.shape
        idx = index[:, None, :, None].expand(B, H, index.shape[1], D)
        layer.keys = layer.keys.gather(2, idx)
        layer.values = layer.values.gather(2, idx.expand(B, H, index.shape[1], layer.values.shape[-1]))


def cache_bytes(cache: DynamicCache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache_layers(cache) for t in (layer.keys, layer.values))


def warmup_args(ratio: float) -> dict[str, float]:
    """TrainingArguments for a linear warm-up over `ratio` of the steps: 5.x takes a float
    `warmup_steps` < 1 as a ratio and dropped `warmup_ratio`, which 4.57 needs."""
    if not 0 <= ratio < 1:
        raise ValueError(f"warmup ratio must be in [0, 1), got {ratio}.")
    return {"warmup_steps": ratio} if TRANSFORMERS_VERSION.major >= 5 else {"warmup_ratio": ratio}


def length_grouping_args() -> dict[str, object]:
    """TrainingArguments for batches of similar lengths (less padding): 5.x names it a sampling strategy."""
    if TRANSFORMERS_VERSION.major >= 5:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def make_tokenizer_portable(folder: str | os.PathLike) -> None:
    """Rewrite a saved tokenizer_config.json so that transformers 4.57 and 5.x both load it."""
    path = Path(folder) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def rope_switch_length(model: torch.nn.Module) -> int | None:
    """The sequence length past which the model's rotary frequencies change (longrope switches to its
    long factors), or None. HF picks them per forward call from that call's largest position, so a
    forward that runs ahead of the sequence (drafted nodes) may switch earlier than beam search does.
    4.57 keeps the threshold on the config (`original_max_position_embeddings`, else the maximum
    positions); 5.x in `rope_parameters`, per layer type for some models."""
    cfg = model.config.get_text_config()
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    one = "rope_type" in params or "type" in params
    groups = [params] if one else [p for p in params.values() if isinstance(p, dict)]  # per layer type
    lengths = [
        getattr(cfg, "original_max_position_embeddings", None) or p.get("original_max_position_embeddings")
        or cfg.max_position_embeddings
        for p in groups if p.get("rope_type", p.get("type")) == "longrope"
    ]
    return min(lengths) if lengths else None


# -- HF private generation API, in one place ----------------------------------------------------------


def eos_token_tensor(gc: GenerationConfig) -> torch.Tensor | None:
    """The EOS ids generate() prepared (a 1-D tensor), or None."""
    return gc._eos_token_tensor


def pad_token_tensor(gc: GenerationConfig) -> torch.Tensor | None:
    return gc._pad_token_tensor


def hf_sample(model: torch.nn.Module, input_ids: torch.Tensor, **kwargs: Any) -> Any:
    """HF's own greedy / sampling loop (what generate() runs for num_beams == 1)."""
    return model._sample(input_ids, **kwargs)


def build_logits_processor(
    model: torch.nn.Module,
    gc: GenerationConfig,
    prompt: torch.Tensor,
    prefix_allowed_tokens_fn: Any,
    user_processors: Any,
) -> Any:
    """The processor list generate() would build for `gc` (e.g. for the draft's N beams)."""
    return model._get_logits_processor(
        generation_config=gc,
        input_ids_seq_length=prompt.shape[1],
        encoder_input_ids=prompt,
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
        logits_processor=user_processors,
        device=prompt.device,
        model_kwargs={},
    )
