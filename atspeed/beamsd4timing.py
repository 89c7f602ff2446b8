"""Timing variant of speculative beam search (the original package's `beamsd4timing`).

    from atspeed.beamsd4timing import beam_search_by_SD_4timing, Timer
    out = beam_search_by_SD_4timing(target_model, draft_model, inputs)
    out["time_cost"], out["draft_time_cost"], out["target_time_cost"], out["verify_time_cost"]

Same algorithm as `beam_search_by_SD` (one implementation, instrumented through a hook); on a GPU
each phase is bracketed by CUDA synchronisation so the times are real.
"""

from __future__ import annotations

import time
from contextlib import ContextDecorator
from typing import Any

import torch

from atspeed.beamsd import beam_search_by_SD


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Timer(ContextDecorator):
    """Wall-clock timer, CUDA-synchronised. `with Timer() as t: ...; t.time_cost` (seconds), or as a
    decorator (`@Timer()`), where `time_cost` accumulates over calls."""

    def __init__(self) -> None:
        self.time_cost = 0.0
        self._start = 0.0

    def __enter__(self) -> "Timer":
        _sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> bool:
        _sync()
        self.time_cost += time.perf_counter() - self._start
        return False


def beam_search_by_SD_4timing(target_model, draft_model, inputs, **kwargs: Any) -> dict[str, Any]:
    """beam_search_by_SD plus time_cost, draft_time_cost, target_time_cost, verify_time_cost (seconds)."""
    timers = {"draft": Timer(), "target": Timer(), "verify": Timer()}
    with Timer() as total:
        out = beam_search_by_SD(target_model, draft_model, inputs, hook=timers.__getitem__, **kwargs)
    out.update(
        time_cost=total.time_cost,
        draft_time_cost=timers["draft"].time_cost,
        target_time_cost=timers["target"].time_cost,
        verify_time_cost=timers["verify"].time_cost,
    )
    return out


__all__ = ["beam_search_by_SD_4timing", "Timer"]
