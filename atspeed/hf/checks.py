"""Validation of decoding requests: clear errors for input that would otherwise fail deep inside
torch, or silently give a wrong answer."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from atspeed.decoding.checks import check_int
from atspeed.hf.model import model_device, positions_exceeded, sliding_window


def check_generation_request(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    num_beams: int,
    num_return_sequences: int,
    max_new_tokens: int,
    prompt_lengths: torch.Tensor | None = None,
) -> None:
    """Clear errors for requests that would otherwise fail deep inside torch, or silently."""
    check_int("num_beams (beam_size)", num_beams)
    check_int("num_return_sequences", num_return_sequences)
    if num_return_sequences > num_beams:
        raise ValueError(
            f"num_return_sequences={num_return_sequences} is larger than num_beams={num_beams}: beam search "
            "can return at most num_beams sequences."
        )
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}.")
    if (
        input_ids.shape[1] == 0
        or input_ids.shape[0] == 0
        or (prompt_lengths is not None and bool((prompt_lengths == 0).any()))
    ):
        raise ValueError("The prompt is empty: give at least one input token per request.")
    check_token_ids(model, input_ids)
    if max_new_tokens is None or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}.")
    device = model_device(model)
    if input_ids.device != device:
        raise ValueError(
            f"input_ids are on {input_ids.device} but the model is on {device}; move the inputs with "
            f".to({str(device)!r})."
        )
    longest = int(prompt_lengths.max()) if prompt_lengths is not None else input_ids.shape[1]
    limit = positions_exceeded(model, longest + max_new_tokens)
    if limit is not None:
        raise ValueError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's maximum "
            f"positions ({limit})."
        )
    window = sliding_window(model)
    if window is not None and longest + max_new_tokens > window:
        raise ValueError(
            f"prompt + max_new_tokens ({longest + max_new_tokens}) exceeds the sliding window ({window}) of "
            f"{type(model).__name__}; tree attention does not implement sliding windows."
        )


def check_inputs(inputs: Mapping[str, torch.Tensor] | torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The function API's `inputs` (a tensor of token ids, or a mapping with input_ids and optionally
    attention_mask, such as a tokenizer's output) as generate() keyword arguments: [B, n] integer ids
    ([n] is one prompt), a mask of the same shape. Any other model input is refused: dropping it (a
    GPT-2 tokenizer's token_type_ids, inputs_embeds) would decode another prompt than the caller's."""
    if isinstance(inputs, torch.Tensor):
        inputs = {"input_ids": inputs}
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        raise ValueError(
            "inputs must be a tensor of token ids or a mapping with 'input_ids' (and 'attention_mask'), got "
            f"{type(inputs).__name__}."
        )
    extra = sorted(k for k, v in inputs.items() if k not in ("input_ids", "attention_mask") and v is not None)
    if extra:
        raise NotImplementedError(
            f"inputs holds model inputs other than input_ids and attention_mask ({extra}); tree-attention beam "
            "search does not forward them."
        )
    out = {k: v for k, v in inputs.items() if v is not None}
    for name, value in out.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch tensor, got {type(value).__name__}.")
    out = {name: value[None] if value.dim() == 1 else value for name, value in out.items()}  # one prompt
    ids, mask = out["input_ids"], out.get("attention_mask")
    if ids.dim() != 2:
        shape = tuple(inputs["input_ids"].shape)
        raise ValueError(f"input_ids must be [batch, length] (or [length]), got shape {shape}.")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {ids.dtype}.")
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)} but input_ids have {tuple(ids.shape)}: they must match."
        )
    return out


def check_token_ids(model: torch.nn.Module, input_ids: torch.Tensor) -> None:
    """Every token id must have a row in the model's input embeddings (else torch's IndexError)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    size = getattr(embeddings, "num_embeddings", None) or model.config.get_text_config().vocab_size
    outside = (input_ids < 0) | (input_ids >= size)  # [B, n]
    if bool(outside.any()):
        row, col = (int(i) for i in outside.nonzero()[0])
        raise ValueError(
            f"input_ids[{row}, {col}] = {int(input_ids[row, col])} is not a token of the model's vocabulary "
            f"(ids 0 … {size - 1})."
        )


def check_left_padded(attention_mask: torch.Tensor) -> None:
    """Decoder-only prompts are padded on the left: a real token after padding within a row is fine,
    padding after a real token (right padding, or a hole) would place the new tokens after the pads."""
    if bool((attention_mask[:, :-1] > attention_mask[:, 1:]).any()):
        raise ValueError(
            "The attention mask has padding after a real token (right padding, or a hole): pad prompts on the "
            "left (tokenizer.padding_side = 'left'), as HF's generate() expects for decoder-only models."
        )
