"""Prometheus metrics of one service instance, in its own registry (so several apps in one process,
as in the tests, never share counters)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from atspeed.rec.recommend import Recommendations

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests, errors by kind, latency, batch sizes and draft acceptance."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("atspeed_requests", "HTTP requests by path and status", ["path", "status"], registry=r)
        self.errors = Counter("atspeed_errors", "Refused or failed requests by kind", ["kind"], registry=r)
        self.latency = Histogram("atspeed_request_latency_seconds", "Server-side latency of a request",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("atspeed_batch_size", "Requests decoded together in one call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.decode_seconds = Histogram("atspeed_decode_seconds", "Wall time of one batched decode",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.queued = Gauge("atspeed_queued_requests", "Requests waiting for a decode", registry=r)
        self.draft_rounds = Counter("atspeed_draft_rounds",
                                   "Speculative draft-verify rounds, each request's own, summed over requests",
                                   registry=r)
        self.accepted_levels = Counter("atspeed_draft_accepted_levels",
                                       "Drafted levels accepted (per round: divide by atspeed_draft_rounds)",
                                       registry=r)

    def on_batch(self, result: Recommendations, batch_size: int, seconds: float) -> None:
        self.batch_size.observe(batch_size)
        self.decode_seconds.observe(seconds)
        self.draft_rounds.inc(result.rounds)
        self.accepted_levels.inc(result.accepted_levels)

    def render(self) -> bytes:
        return generate_latest(self.registry)
