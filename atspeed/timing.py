"""The one wall-clock timer of atspeed: recommend(), the benchmarks and the timing variant of the
original API all measure with it, so every figure is taken the same way.

On a GPU, kernels run asynchronously: a timer that does not wait for them measures the launch, not
the work. `Timer` synchronises CUDA on entry and exit (only if CUDA is in use, so it costs nothing
on a CPU and never initialises a GPU by itself).
"""

from __future__ import annotations

import time
from contextlib import ContextDecorator

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for `device`'s queued kernels (the current CUDA device when None); a no-op off CUDA."""
    if device is not None and torch.device(device).type != "cuda":
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)


class Timer(ContextDecorator):
    """Wall-clock timer, CUDA-synchronised. `with Timer() as t: ...; t.time_cost` (seconds), or as a
    decorator (`@Timer()`), where `time_cost` accumulates over calls. `device`: the CUDA device to
    wait for (default: the current one)."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.time_cost = 0.0
        self._start = 0.0

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> bool:
        synchronize(self.device)
        self.time_cost += time.perf_counter() - self._start
        return False
