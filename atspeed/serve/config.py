"""The service's settings, in one place: what to load, how to batch, and the bounds on a request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atspeed.decoding.checks import is_finite_number, is_int

SERVE_METHODS = ("tree", "speculative", "hf")  # exact beam search: the same list for the same history
SERVE_ENGINES = ("local", "ray")  # uvicorn in this process, or Ray Serve replicas
# The numeric settings' type and bounds (least, most; None: unbounded), checked by ServeConfig.check
# and given to the `atspeed serve` options, so that both refuse the same values.
SERVE_BOUNDS: dict[str, tuple[type, float, float | None]] = {
    "port": (int, 0, 65535),
    "max_batch": (int, 1, None),
    "max_wait_ms": (float, 0, 60_000),  # longer, a lone request waits for company that may never come
    "max_k": (int, 1, None),
    "max_history": (int, 1, None),
    "max_users": (int, 1, None),
    "max_body_bytes": (int, 1, None),
    "threads": (int, 1, None),  # None: torch's default
    "replicas": (int, 1, None),
    "gpus_per_replica": (float, 0, None),
    "cpus_per_replica": (float, 0, None),
}


@dataclass(frozen=True)
class ServeConfig:
    """Defaults serve the committed demo models on the synthetic dataset (`data=None`)."""

    data: Path | None = None  # dataset folder (index + meta.json); None: the synthetic demo data
    target: Path | None = None  # None: atspeed/rec/pretrained/synthetic-target
    draft: Path | None = None  # None: the demo draft when target is the demo target and method needs it
    method: str = "tree"
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32  # requests decoded together, at most
    max_wait_ms: float = 5.0  # the longest a request waits for others to join its batch
    max_k: int = 100  # and at most the catalogue's size
    max_history: int = 200  # items per request (the model reads the last 20)
    max_users: int = 256  # users per /recommend/batch call
    max_body_bytes: int = 1 << 20  # request bodies above this are refused (counted as they arrive)
    threads: int | None = None  # torch threads for decoding (None: torch's default; Ray: the replica's CPUs)
    engine: str = "local"
    replicas: int = 1  # Ray: model replicas, each loads the models once and batches its own requests
    gpus_per_replica: float = 0.0  # Ray: > 0 decodes on the replica's GPU (fractions share one)
    cpus_per_replica: float = 1.0
    ray_address: str | None = None  # Ray: a running cluster (None: RAY_ADDRESS, else a local Ray)

    def check(self) -> None:
        """Settings errors before anything is loaded, naming the option."""
        if self.method not in SERVE_METHODS:
            raise ValueError(f"--method must be one of {', '.join(SERVE_METHODS)}, got {self.method!r}.")
        if self.engine not in SERVE_ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(SERVE_ENGINES)}, got {self.engine!r}.")
        for name, (kind, least, most) in SERVE_BOUNDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            is_kind, what = (is_int, "an integer") if kind is int else (is_finite_number, "a finite number")
            right_type = is_kind(value)
            if not (right_type and least <= value and (most is None or value <= most)):
                span = f">= {least}" if most is None else f"between {least} and {most}"
                raise ValueError(f"--{name.replace('_', '-')} must be {what} {span}, got {value!r}.")
