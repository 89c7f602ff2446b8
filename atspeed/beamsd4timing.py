"""Timing variant of speculative beam search (the original package's `beamsd4timing`).

    from atspeed.beamsd4timing import beam_search_by_SD_4timing, Timer
    out = beam_search_by_SD_4timing(target_model, draft_model, inputs)
    out["time_cost"], out["draft_time_cost"], out["target_time_cost"], out["verify_time_cost"]

Same algorithm as `beam_search_by_SD` (one implementation, instrumented through a hook); on a GPU
each phase is bracketed by CUDA synchronisation so the times are real (`atspeed.timing.Timer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from atspeed.beamsd import beam_search_by_SD
from atspeed.timing import Timer  # the original package exported it from here


def beam_search_by_SD_4timing(
    target_model: torch.nn.Module,
    draft_model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor] | torch.Tensor,
    **kwargs: Any,
) -> dict[str, Any]:
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
