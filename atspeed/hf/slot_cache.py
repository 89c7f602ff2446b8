"""A KV cache allocated once and written in place at slots the decoder chooses (the engine's cache).

The static engine lays one request's tree out as fixed slots (see atspeed.decoding.static): the
prompt first, then K slots per fed level. Before each forward the decoder sets `cache.window =
(start, stop)`; every layer then writes its Q = stop - start new keys/values at those slots and
attends over slots [0, stop) (what is not visible is masked by the tree mask). Nothing is
concatenated or reallocated after the first forward, so buffer addresses stay fixed, as a CUDA
graph needs.

Layers are created on first use from the keys' own shape ([B, H, Q, D]), so any architecture whose
attention calls `cache.update(...)` works, whatever its head layout.
"""

from __future__ import annotations

import functools

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class SlotLayer(DynamicLayer):
    """One layer's keys and values, [B, H, num_slots, D] each, allocated at the first update."""

    def __init__(self, cache: SlotCache):
        self.cache = cache
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.is_initialized = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        B, H, _, D = key_states.shape
        S = self.cache.num_slots
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.keys = key_states.new_zeros(B, H, S, D)
        self.values = value_states.new_zeros(B, H, S, value_states.shape[-1])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # transformers 4.57 passes cache_kwargs, 5.x keyword arguments: neither is needed here
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, stop = self.cache.window
        self.keys[:, :, start:stop] = key_states
        self.values[:, :, start:stop] = value_states
        return self.keys[:, :, :stop], self.values[:, :, :stop]

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.cache.window[1]

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.cache.window[1], 0

    def get_max_length(self) -> int:
        return self.cache.num_slots

    get_max_cache_shape = get_max_length  # the 4.57 name


class SlotCache(DynamicCache):
    """The per-layer SlotLayers of one model, and the write window they share."""

    def __init__(self, num_slots: int):
        super().__init__()
        self.num_slots = num_slots
        self.window = (0, 0)
        self.layers = []
        self.layer_class_to_replicate = functools.partial(SlotLayer, self)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.window[1]

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for layer in self.layers
            if layer.is_initialized
            for t in (layer.keys, layer.values)
        )
