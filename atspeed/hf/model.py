"""A Hugging Face causal LM driven through tree attention: forward with a custom 4D mask,
explicit position ids and a KV cache that the decoding core may compact."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.cache_utils import DynamicCache

from atspeed.decoding.tree import prompt_inputs
from atspeed.hf import compat

TREE_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
_NON_ATTENTION_LAYER_HINTS = ("mamba", "linear", "conv", "recurrent", "ssm", "rwkv")


class UnsupportedModelError(ValueError):
    """The model cannot run tree attention (and atspeed will not silently fall back)."""


def check_tree_support(model: torch.nn.Module) -> None:
    """Raise UnsupportedModelError naming the model and the reason if tree attention cannot work."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "generate"):
        raise UnsupportedModelError(f"{name} is not a Hugging Face generative model (no config/generate()).")
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{name} is an encoder-decoder model; atspeed supports decoder-only causal LMs only (not yet "
            "encoder-decoder models)."
        )
    params = compat.forward_params(model)
    missing = {"attention_mask", "position_ids"} - params
    if missing or compat.cache_kwarg(model) not in params:
        raise UnsupportedModelError(
            f"{name}.forward does not take {sorted(missing) or 'a KV cache'}; tree attention needs a custom 4D "
            "attention mask, explicit position ids and a KV cache."
        )
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in TREE_ATTENTION_IMPLEMENTATIONS:
        raise UnsupportedModelError(
            f"{name} uses attn_implementation={impl!r}, which cannot take a custom 4D attention mask; load it "
            f"with attn_implementation='sdpa' or 'eager'."
        )
    if getattr(config.get_text_config(), "alibi", False):
        raise UnsupportedModelError(
            f"{name} uses ALiBi position biases, which its attention builds from the key positions of a "
            "sequence, not from a tree's position ids; tree attention supports rotary and learned positions."
        )
    layer_types = getattr(config.get_text_config(), "layer_types", None) or []
    odd = sorted({t for t in layer_types if any(h in str(t) for h in _NON_ATTENTION_LAYER_HINTS)})
    if odd:
        raise UnsupportedModelError(
            f"{name} has non-attention layers {odd}: their recurrent state cannot be shared as a beam tree."
        )


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def max_positions(model: torch.nn.Module) -> int | None:
    config = model.config.get_text_config()
    return getattr(config, "max_position_embeddings", None)


def positions_exceeded(model: torch.nn.Module, length: int) -> int | None:
    """The model's maximum positions if a sequence of `length` tokens goes past them, else None."""
    limit = max_positions(model)
    return limit if limit is not None and length > limit else None


def sliding_window(model: torch.nn.Module) -> int | None:
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


class TreeLM:
    """One model plus the KV cache of one decoding call. Logits come back as float32, like HF's."""

    def __init__(self, model: torch.nn.Module, cache: DynamicCache | None = None):
        self.model = model
        self.cache = compat.new_cache() if cache is None else cache
        self.cache_kwarg = compat.cache_kwarg(model)
        self.takes_logits_to_keep = "logits_to_keep" in compat.forward_params(model)
        self.dtype = model_dtype(model)
        self.forward_calls = 0
        self.tokens_processed = 0
        # set by atspeed.hf.lean.tree_lm where it is bit-identical to the HF forward: runs every
        # forward that has an explicit 4D mask (all but a dynamic prefill)
        self.lean_forward: Callable | None = None
        self.forward_kind = "hf"

    def _run(self, input_ids, attention_mask, position_ids, logits_to_keep: int) -> torch.Tensor:
        self.forward_calls += 1
        self.tokens_processed += input_ids.numel()
        if self.lean_forward is not None and attention_mask is not None and attention_mask.dim() == 4:
            return self.lean_forward(self.model, self.cache, input_ids, position_ids, attention_mask, logits_to_keep)
        kwargs = {self.cache_kwarg: self.cache}
        if self.takes_logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            return_dict=True,
            **kwargs,
        )
        if not self.takes_logits_to_keep and logits_to_keep:
            return out.logits[:, -logits_to_keep:].float()
        return out.logits.float()

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """Prompt forward with HF's own causal/padding mask. Returns [B, V] (last position) or [B, n, V]."""
        _, positions = prompt_inputs(attention_mask)
        mask = None if bool(attention_mask.all()) else attention_mask
        logits = self._run(input_ids, mask, positions, 1 if last_only else 0)
        return logits[:, -1] if last_only else logits

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, logits_to_keep: int = 0
    ) -> torch.Tensor:
        """tokens/positions: [B, Q]; mask: additive [B, 1, Q, S+Q]. Returns logits [B, Q or logits_to_keep, V]."""
        return self._run(tokens, mask, positions, logits_to_keep)

    def write(
        self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, start: int, logits_to_keep: int = 0
    ) -> torch.Tensor:
        """Feed tokens [B, Q] into slots start .. start+Q-1 of a SlotCache (mask: additive [B, 1, Q, start+Q])."""
        self.cache.window = (start, start + tokens.shape[1])
        return self._run(tokens, mask, positions, logits_to_keep)

    def keep_slots(self, index: torch.Tensor) -> None:
        compat.cache_select(self.cache, index)

    @property
    def cache_bytes(self) -> int:
        return compat.cache_bytes(self.cache)
