"""The service's settings, in one place: what to load, how to batch, and the bounds on a request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SERVE_METHODS = ("tree", "speculative", "hf")  # exact beam search: the same list for the same history
SERVE_ENGINES = ("local", "ray")  # uvicorn in this process, or Ray Serve replicas


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
    max_body_bytes: int = 1 << 20  # request bodies above this are refused before parsing
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
        for name in ("max_batch", "max_k", "max_history", "max_users", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}.")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be between 0 and 65535, got {self.port}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}.")
        if self.engine not in SERVE_ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(SERVE_ENGINES)}, got {self.engine!r}.")
        if self.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {self.replicas}.")
        for name in ("gpus_per_replica", "cpus_per_replica"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}.")
