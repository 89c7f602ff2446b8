"""Dynamic batching: concurrent requests with the same K are decoded together, in one call.

Why: a decode of B users costs far less than B decodes of one (one forward per step for the whole
batch), but online requests arrive one at a time. The batcher holds each request at most
`max_wait` seconds for company with the same K, then decodes up to `max_batch` of them in ONE call
of `decode(histories, k)` and hands every request its own row of the result.

One background task owns the queue, and decodes run one at a time in a worker thread
(`asyncio.to_thread`), so the event loop keeps accepting requests while the model computes; a
request that arrives during a decode joins the next batch. The task knows nothing about HTTP.

    pending[k]: [(history, future, arrival), ...]   oldest first, one list per K
    loop: oldest head h -> wait until len(pending[h.k]) >= max_batch or now >= h.arrival + max_wait
          -> decode the first max_batch of pending[h.k] -> set each future
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from atspeed.rec.recommend import Recommendations

Decode = Callable[[Sequence[Sequence[int]], int], Recommendations]


class BatcherClosed(RuntimeError):
    """The service is shutting down: no new requests are taken."""


@dataclass
class _Request:
    history: Sequence[int]
    future: asyncio.Future
    arrival: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Answer:
    """One request's row of a batch decode."""

    items: list[int]
    scores: list[float]
    batch_size: int  # how many requests were decoded together with this one (itself included)


class Batcher:
    """Coalesces `submit(history, k)` calls into batched `decode` calls (see the module docstring).

    `on_batch(result, batch_size, seconds)` is called after every decode (metrics).
    """

    def __init__(self, decode: Decode, *, max_batch: int = 32, max_wait: float = 0.005,
                 on_batch: Callable[[Recommendations, int, float], None] | None = None) -> None:
        if max_batch < 1 or max_wait < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait >= 0, got {max_batch} and {max_wait}.")
        self.decode, self.max_batch, self.max_wait = decode, max_batch, max_wait
        self.on_batch = on_batch
        self._pending: dict[int, list[_Request]] = {}
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="atspeed-batcher")

    async def close(self) -> None:
        """Take no new requests, decode those already queued, then stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._pending.values())

    async def submit(self, history: Sequence[int], k: int) -> Answer:
        """The top-k items of one (already checked) history, decoded with whatever else is queued for k."""
        if self._closed:
            raise BatcherClosed("The service is shutting down.")
        request = _Request(history, asyncio.get_running_loop().create_future())
        self._pending.setdefault(k, []).append(request)
        self._wake.set()
        return await request.future

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            k = min(self._pending, key=lambda key: self._pending[key][0].arrival)  # the oldest request's K
            await self._fill(k)
            batch = self._pending[k][: self.max_batch]
            del self._pending[k][: self.max_batch]
            if not self._pending[k]:
                del self._pending[k]
            await self._decode(batch, k)

    async def _fill(self, k: int) -> None:
        """Wait until k's queue holds a full batch or its oldest request has waited max_wait."""
        deadline = self._pending[k][0].arrival + self.max_wait
        while len(self._pending[k]) < self.max_batch and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    async def _decode(self, batch: list[_Request], k: int) -> None:
        """One decode for the whole batch; each request gets its own row, or the decode's error."""
        start = time.perf_counter()
        try:
            result = await asyncio.to_thread(self.decode, [r.history for r in batch], k)
        except Exception as error:  # noqa: BLE001 -- a decode failure fails its requests, never the batcher
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(error)
            return
        scores = result.scores.tolist()
        for row, r in enumerate(batch):
            if not r.future.done():  # a client that went away cancels its future
                r.future.set_result(Answer(result.items[row], scores[row], len(batch)))
        if self.on_batch is not None:
            self.on_batch(result, len(batch), time.perf_counter() - start)
