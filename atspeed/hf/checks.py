"""Validation of decoding requests: clear errors for input that would otherwise fail deep inside
torch, or silently give a wrong answer."""

from __future__ import annotations

import torch

from atspeed.hf.model import max_positions, model_device, sliding_window


def check_generation_request(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    num_beams: int,
    num_return_sequences: int,
    max_new_tokens: int,
    prompt_lengths: torch.Tensor | None = None,
) -> None:
    """Clear errors for requests that would otherwise fail deep inside torch, or silently."""
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams (beam_size) must be an integer >= 1, got {num_beams!r}.")
    vocab = model.config.get_text_config().vocab_size
    if num_beams > vocab:
        raise ValueError(f"num_beams={num_beams} is larger than the vocabulary ({vocab} tokens).")
    if num_return_sequences > num_beams:
        raise ValueError(
            f"num_return_sequences={num_return_sequences} is larger than num_beams={num_beams}: beam search "
            "can return at most num_beams sequences."
        )
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}.")
    if input_ids.shape[1] == 0 or input_ids.shape[0] == 0 or (
        prompt_lengths is not None and bool((prompt_lengths == 0).any())
    ):
        raise ValueError("The prompt is empty: give at least one input token per request.")
    if max_new_tokens is None or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}.")
    device = model_device(model)
    if input_ids.device != device:
        raise ValueError(
            f"input_ids are on {input_ids.device} but the model is on {device}; move the inputs with "
            f".to({str(device)!r})."
        )
    longest = int(prompt_lengths.max()) if prompt_lengths is not None else input_ids.shape[1]
    limit = max_positions(model)
    if limit is not None and longest + max_new_tokens > limit:
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
