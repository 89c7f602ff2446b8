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
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from atspeed.rec.recommend import Recommendations

Decode = Callable[[Sequence[Sequence[int]], int], Recommendations]
log = logging.getLogger(__name__)


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

    `on_batch(result, batch_size, seconds)` is called after every decode that answered its requests
    (metrics). A request whose client went away (its `submit` cancelled) leaves the queue; one that
    is already being decoded is decoded and its row dropped.
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
        try:
            return await request.future
        except asyncio.CancelledError:  # the client went away: its request takes no place in a batch
            queue = self._pending.get(k, [])
            for i, queued in enumerate(queue):
                if queued is request:
                    del queue[i]
                    break
            if k in self._pending and not queue:
                del self._pending[k]
            self._wake.set()
            raise

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
            queue = self._pending.get(k)
            if not queue:  # every request of k was cancelled while it waited
                continue
            batch = queue[: self.max_batch]
            del queue[: self.max_batch]
            if not queue:
                del self._pending[k]
            await self._decode(batch, k)

    async def _fill(self, k: int) -> None:
        """Wait until k's queue holds a full batch or its oldest request has waited max_wait (or the
        queue empties: its clients went away)."""
        deadline = self._pending[k][0].arrival + self.max_wait
        while 0 < len(self._pending.get(k, ())) < self.max_batch and not self._closed:
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
            scores = result.scores.tolist()
            if len(result.items) != len(batch) or len(scores) != len(batch):
                raise RuntimeError(f"the decode of {len(batch)} histories returned {len(result.items)} rows")
            answers = [Answer(items, row, len(batch)) for items, row in zip(result.items, scores, strict=True)]
        except Exception as error:  # noqa: BLE001 -- a decode failure fails its requests, never the batcher
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(error)
            return
        for r, answer in zip(batch, answers, strict=True):
            if not r.future.done():  # a client that went away cancels its future
                r.future.set_result(answer)
        if self.on_batch is not None:
            try:
                self.on_batch(result, len(batch), time.perf_counter() - start)
            except Exception:  # noqa: BLE001 -- metrics must not stop the service
                log.exception("on_batch failed; the batcher goes on")
