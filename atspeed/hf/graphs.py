"""Captured decodes: the static engine's whole decode of one request shape as one CUDA graph.

gpt-fast's split: `DecodePlan.__init__` allocates the static buffers (prompt, attention mask, the
slot cache) and captures `atspeed.decoding.static.decode` once; `__call__` copies a new request into
the buffers, replays, and finalizes outside the graph (the one host sync). A plan is reused for
every later request of the same shape, so the first call of a shape pays the capture.

Only what is known to capture is captured: no processors, or processors with a `graph_key` (the
item trie), and HF's max-length / EOS stopping criteria. Everything else runs the same decode
eagerly, with the reason in stats["engine"]; so does a model whose capture failed (CaptureError:
the eager warm-up had run, so only the capture was at fault), with a warning, once per model.

Without CUDA (`capture=False`) a plan runs the same buffers eagerly: the plan logic itself is
tested on CPU; the capture is checked by benchmarks/gpu_engine.py on a GPU.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from atspeed.decoding.beam import BeamConfig, BeamState
from atspeed.decoding.static import decode, num_slots
from atspeed.decoding.tree_search import BeamSearchResult, StepRecord, search_result
from atspeed.hf.lean import lean_unsupported, slot_lm

MAX_PLANS_PER_MODEL = 16  # least recently used plans are dropped beyond this (their memory with them)
_CAPTURED_STOPPING = ("MaxLengthCriteria", "EosTokenCriteria")


def processors_key(processors: Sequence) -> tuple | None:
    """What a captured graph bakes in of the processors, or None if one of them cannot be captured."""
    keys = []
    for p in processors:
        key = getattr(p, "graph_key", None)
        if key is None:
            return None
        keys.append((type(p).__name__, key()))
    return tuple(keys)


def stopping_key(stopping: Sequence) -> tuple | None:
    """What a captured graph bakes in of HF's stopping criteria (max length, EOS ids), or None."""
    keys = []
    for c in stopping:
        name = type(c).__name__
        if name not in _CAPTURED_STOPPING:
            return None
        eos = getattr(c, "eos_token_id", None)
        keys.append(
            (name, getattr(c, "max_length", None), None if eos is None else tuple(torch.as_tensor(eos).tolist()))
        )
    return tuple(keys)


def capture_unsupported(processors: Sequence, stopping: Sequence) -> str | None:
    """Why a request's decode cannot be captured, or None."""
    if processors_key(processors) is None:
        odd = [type(p).__name__ for p in processors if getattr(p, "graph_key", None) is None]
        return f"logits processors {odd} are not known to be capturable: the decode runs eagerly"
    if stopping_key(stopping) is None:
        odd = [type(c).__name__ for c in stopping if type(c).__name__ not in _CAPTURED_STOPPING]
        return f"stopping criteria {odd} are not known to be capturable: the decode runs eagerly"
    return None


class CaptureError(RuntimeError):
    """A decode that runs eagerly could not be captured as a CUDA graph."""


_CAPTURE_FAILED: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def capture_failed(model: torch.nn.Module) -> str | None:
    """Why an earlier capture of this model's decode failed (it is not tried again), or None."""
    reason = _CAPTURE_FAILED.get(model)
    return None if reason is None else f"an earlier capture of this model failed ({reason}): the decode runs eagerly"


class DecodePlan:
    """Static buffers and the captured decode of one request shape."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: BeamConfig,
        batch: int,
        processors: Any,
        stopping: Any,
        fill_value: int,
        capture: bool,
    ):
        device = next(model.parameters()).device
        P, T = cfg.prompt_len, cfg.max_length - cfg.prompt_len
        self.cfg, self.capture = cfg, capture
        self.input_ids = torch.zeros(batch, P, dtype=torch.int64, device=device)
        self.attention_mask = torch.ones(batch, P, dtype=torch.int64, device=device)
        self.lm = slot_lm(model, num_slots(P, cfg.num_beams, T))
        self._run = lambda: decode(
            self.lm,
            self.input_ids,
            self.attention_mask,
            cfg,
            processors,
            stopping,
            record=StepRecord(False, False),
            fill_value=fill_value,
        )
        self.graph = None
        if capture:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # warm-up (allocates the cache) off the capture stream
                self._run()
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self.out: tuple[BeamState, StepRecord] = self._run()
            except RuntimeError as e:  # the warm-up ran the same decode eagerly: only capturing failed
                raise CaptureError(f"{type(e).__name__}: {e}") from e
            self.graph = graph

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[BeamState, StepRecord]:
        self.input_ids.copy_(input_ids)
        self.attention_mask.copy_(attention_mask)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self.out


_PLANS: weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict] = weakref.WeakKeyDictionary()


def plan_for(
    model: torch.nn.Module,
    cfg: BeamConfig,
    batch: int,
    processors: Any,
    stopping: Any,
    fill_value: int,
    capture: bool,
) -> tuple[DecodePlan, bool]:
    """The model's plan for this shape, built (and captured) on first use. Returns (plan, new)."""
    plans = _PLANS.setdefault(model, OrderedDict())
    lean = lean_unsupported(model) is None  # a plan holds its forward: one per forward kind
    key = (cfg, batch, processors_key(processors), stopping_key(stopping), fill_value, capture, lean)
    if key in plans:
        plans.move_to_end(key)
        return plans[key], False
    try:
        plans[key] = DecodePlan(model, cfg, batch, processors, stopping, fill_value, capture)
    except CaptureError as e:
        _CAPTURE_FAILED[model] = str(e)
        raise
    while len(plans) > MAX_PLANS_PER_MODEL:
        plans.popitem(last=False)
    return plans[key], True


def planned_beam_search(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: BeamConfig,
    processors: Any,
    stopping: Any,
    *,
    num_return_sequences: int,
    fill_value: int,
    capture: bool,
) -> BeamSearchResult:
    """The static decode of a request through its shape's plan (replayed graph, or eager buffers)."""
    plan, new = plan_for(model, cfg, input_ids.shape[0], processors, stopping, fill_value, capture)
    state, record = plan(input_ids, attention_mask)
    T = cfg.max_length - cfg.prompt_len
    result = search_result(
        state,
        cfg,
        num_return_sequences,
        record,
        new_plan=new,
        target_calls=T,
        target_tokens=int(attention_mask.numel()) + (T - 1) * cfg.num_beams * input_ids.shape[0],
        peak_cache_bytes=plan.lm.cache_bytes,
        forward=plan.lm.forward_kind,
    )
    # the plan's buffers are overwritten by the next request
    result.sequences, result.sequences_scores, result.beam_indices = (
        t.clone() for t in (result.sequences, result.sequences_scores, result.beam_indices)
    )
    return result
