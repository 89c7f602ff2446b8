"""The batcher alone, on a fake decode (no model): coalescing, routing, bounds, errors, closing."""

from __future__ import annotations

import asyncio
import time
import types

import pytest
import torch

from atspeed.rec.recommend import Recommendations
from atspeed.serve.batcher import Batcher, BatcherClosed


class FakeDecode:
    """Item j of a history h is sum(h) + j: an answer shows which request it belongs to."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, int]] = []  # (batch size, k)
        self.fail = fail

    def __call__(self, histories, k):
        self.calls.append((len(histories), k))
        if self.fail:
            raise RuntimeError("decode failed")
        items = [[sum(h) + j for j in range(k)] for h in histories]
        return Recommendations(items=items, scores=torch.tensor(items, dtype=torch.float32))


async def run(batcher: Batcher, requests):
    batcher.start()
    try:
        return await asyncio.wait_for(asyncio.gather(*(batcher.submit(h, k) for h, k in requests)), 10)
    finally:
        await batcher.close()


def test_concurrent_requests_with_the_same_k_are_decoded_in_one_call():
    decode = FakeDecode()
    asyncio.run(run(Batcher(decode, max_batch=8, max_wait=1.0), [([i], 3) for i in range(8)]))
    assert decode.calls == [(8, 3)]


def test_each_request_gets_its_own_row():
    answers = asyncio.run(run(Batcher(FakeDecode(), max_batch=8, max_wait=0.05), [([i, 10], 2) for i in range(8)]))
    assert [a.items for a in answers] == [[i + 10, i + 11] for i in range(8)]
    assert [a.scores for a in answers] == [[float(i + 10), float(i + 11)] for i in range(8)]


def test_requests_with_different_k_are_never_decoded_together():
    decode = FakeDecode()
    answers = asyncio.run(run(Batcher(decode, max_batch=8, max_wait=0.05), [([i], 1 + i % 2) for i in range(6)]))
    assert sorted(decode.calls) == [(3, 1), (3, 2)]
    assert [len(a.items) for a in answers] == [1, 2, 1, 2, 1, 2]


def test_max_batch_caps_the_batch_size():
    decode = FakeDecode()
    asyncio.run(run(Batcher(decode, max_batch=4, max_wait=0.05), [([i], 1) for i in range(10)]))
    assert decode.calls == [(4, 1), (4, 1), (2, 1)]


def test_a_lone_request_is_decoded_once_it_has_waited_max_wait(monkeypatch):
    """The batcher's clock says an hour has passed since the request arrived: with max_wait = 1 h it
    must decode the lone request at once instead of waiting for a batch that never fills (no
    wall-clock bound: a batcher that waited would hit the 10 s guard)."""
    import atspeed.serve.batcher as batcher_module

    an_hour_later = types.SimpleNamespace(monotonic=lambda: time.monotonic() + 3601, perf_counter=time.perf_counter)
    monkeypatch.setattr(batcher_module, "time", an_hour_later)
    decode = FakeDecode()
    (answer,) = asyncio.run(run(Batcher(decode, max_batch=64, max_wait=3600), [([1], 1)]))
    assert decode.calls == [(1, 1)] and answer.batch_size == 1


def test_a_failed_decode_fails_its_requests_and_the_batcher_goes_on():
    async def fail_then_succeed():
        decode = FakeDecode(fail=True)
        batcher = Batcher(decode, max_batch=2, max_wait=0.01)
        batcher.start()
        with pytest.raises(RuntimeError, match="decode failed"):
            await asyncio.wait_for(batcher.submit([1], 1), 10)
        decode.fail = False
        answer = await asyncio.wait_for(batcher.submit([2], 1), 10)
        await batcher.close()
        return answer

    assert asyncio.run(fail_then_succeed()).items == [2]


def test_close_decodes_what_is_queued_then_refuses_new_requests():
    async def close_with_queue():
        batcher = Batcher(FakeDecode(), max_batch=64, max_wait=5.0)
        batcher.start()
        queued = [asyncio.ensure_future(batcher.submit([i], 1)) for i in range(3)]
        await asyncio.sleep(0)  # let them enqueue
        await asyncio.wait_for(batcher.close(), 10)  # does not wait out max_wait
        with pytest.raises(BatcherClosed):
            await batcher.submit([9], 1)
        return [q.result().items for q in queued]

    assert asyncio.run(close_with_queue()) == [[0], [1], [2]]


class ShortDecode(FakeDecode):
    """Returns one row fewer than it was given histories."""

    def __call__(self, histories, k):
        out = super().__call__(histories, k)
        return Recommendations(items=out.items[:-1], scores=out.scores[:-1])


def test_a_decode_with_too_few_rows_fails_its_requests_and_the_batcher_goes_on():
    async def short_then_fine():
        batcher = Batcher(ShortDecode(), max_batch=2, max_wait=0.01)
        batcher.start()
        with pytest.raises(RuntimeError, match="the decode of 1 histories returned 0 rows"):
            await asyncio.wait_for(batcher.submit([1], 1), 10)
        batcher.decode = FakeDecode()
        answer = await asyncio.wait_for(batcher.submit([2], 1), 10)
        await batcher.close()
        return answer

    assert asyncio.run(short_then_fine()).items == [2]


def test_a_failing_on_batch_hook_answers_the_request_and_the_batcher_goes_on(caplog):
    calls = []

    def broken_metrics(*args):
        calls.append(args)
        raise ValueError("metrics hiccup")

    async def two_requests():
        batcher = Batcher(FakeDecode(), max_batch=2, max_wait=0.01, on_batch=broken_metrics)
        batcher.start()
        answers = [await asyncio.wait_for(batcher.submit([i], 1), 10) for i in (1, 2)]
        await batcher.close()
        return [a.items for a in answers]

    assert asyncio.run(two_requests()) == [[1], [2]]
    assert len(calls) == 2  # one per batch: the requests came one after the other
    assert [r.getMessage() for r in caplog.records].count("on_batch failed; the batcher goes on") == 2


def test_a_request_whose_client_went_away_leaves_the_queue_and_is_not_decoded():
    async def cancel_three_then_ask():
        decode = FakeDecode()
        batcher = Batcher(decode, max_batch=4, max_wait=0.2)
        batcher.start()
        gone = [asyncio.ensure_future(batcher.submit([i], 1)) for i in range(3)]
        await asyncio.sleep(0)  # let them enqueue
        for g in gone:
            g.cancel()
        await asyncio.gather(*gone, return_exceptions=True)
        queued_after_cancel = batcher.queued
        answer = await asyncio.wait_for(batcher.submit([7], 1), 10)
        await batcher.close()
        return queued_after_cancel, decode.calls, answer

    queued, calls, answer = asyncio.run(cancel_three_then_ask())
    assert queued == 0 and calls == [(1, 1)] and answer.items == [7] and answer.batch_size == 1
