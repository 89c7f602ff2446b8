"""Side-by-side timing for the benchmarks and the demo."""

from __future__ import annotations

import statistics
from typing import Callable

from atspeed.beamsd4timing import Timer


def compare(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, object]]:
    """Median wall time in ms (CUDA-synchronised) and the last output of each method. Each runs once
    to warm up; then the repeats are interleaved, so drifts in machine load hit every method alike."""
    outputs = {name: fn() for name, fn in methods.items()}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            with Timer() as t:
                outputs[name] = fn()
            times[name].append(1e3 * t.time_cost)
    return {name: (statistics.median(times[name]), outputs[name]) for name in methods}
