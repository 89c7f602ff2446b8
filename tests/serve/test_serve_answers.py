"""The service answers what `recommend()` answers, alone or batched with other requests."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from serve_helpers import assert_same, expected, metric, served

from atspeed.serve.app import create_app


@pytest.mark.parametrize("max_batch", [1, 8])
def test_recommend_equals_the_recommend_function(rec, histories, max_batch):
    async def ask():
        async with served(rec, max_batch=max_batch) as client:
            return [(await client.post("/recommend", json={"history": h, "k": 20})).json() for h in histories[:4]]

    for answer, history in zip(asyncio.run(ask()), histories[:4], strict=True):
        assert_same(answer, *expected(rec, history, 20))
        assert (answer["k"], answer["method"]) == (20, "tree") and answer["latency_ms"] > 0


def test_batch_endpoint_equals_the_recommend_function(rec, histories):
    users = [{"user": f"u{i}", "history": h} for i, h in enumerate(histories[:6])]

    async def ask():
        async with served(rec, max_batch=4) as client:
            return (await client.post("/recommend/batch", json={"users": users, "k": 5})).json()

    body = asyncio.run(ask())
    assert [r["user"] for r in body["results"]] == [u["user"] for u in users]
    for result, history in zip(body["results"], histories[:6], strict=True):
        assert_same(result, *expected(rec, history, 5))


def test_concurrent_requests_are_coalesced_and_each_gets_its_own_answer(rec, histories):
    async def ask():
        async with served(rec, max_batch=8, max_wait_ms=200) as client:
            posts = [client.post("/recommend", json={"user": i, "history": h, "k": 10})
                     for i, h in enumerate(histories[:16])]
            answers = await asyncio.wait_for(asyncio.gather(*posts), 60)
            return [a.json() for a in answers], (await client.get("/metrics")).text

    answers, metrics = asyncio.run(ask())
    for i, (answer, history) in enumerate(zip(answers, histories[:16], strict=True)):
        assert answer["user"] == i
        assert_same(answer, *expected(rec, history, 10))
    batches, requests = metric(metrics, "atspeed_batch_size_count"), metric(metrics, "atspeed_batch_size_sum")
    assert requests == 16 and batches < 16  # 16 requests in fewer decodes (the warm-up bypasses the batcher)
    assert metric(metrics, 'atspeed_batch_size_bucket{le="1.0"}') < batches  # some batch held more than one


def test_speculative_answers_equal_the_recommend_function_and_acceptance_is_counted(rec, histories):
    async def ask():
        async with served(rec, method="speculative", max_batch=4) as client:
            posts = [client.post("/recommend", json={"history": h, "k": 20}) for h in histories[:4]]
            return [a.json() for a in await asyncio.gather(*posts)], (await client.get("/metrics")).text

    answers, metrics = asyncio.run(ask())
    for answer, history in zip(answers, histories[:4], strict=True):
        assert_same(answer, *expected(rec, history, 20, "speculative"))
    assert metric(metrics, "atspeed_draft_rounds_total") > 0
    assert metric(metrics, "atspeed_draft_accepted_levels_total") > 0


def test_original_item_keys_come_with_the_items(rec, histories):
    keys = [f"sku-{i}" for i in range(rec.num_items)]

    async def ask():
        async with served(rec, item_keys=keys) as client:
            return (await client.post("/recommend", json={"history": histories[0], "k": 3})).json()

    answer = asyncio.run(ask())
    assert answer["keys"] == [f"sku-{i}" for i in answer["items"]]


def test_health_is_ok_once_started_and_docs_are_served(rec):
    async def ask():
        async with served(rec) as client:
            return await client.get("/health"), await client.get("/openapi.json"), await client.get("/docs")

    health, openapi, docs = asyncio.run(ask())
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert {"/recommend", "/recommend/batch", "/health", "/metrics"} <= set(openapi.json()["paths"])
    assert docs.status_code == 200


def test_health_is_unavailable_before_startup(rec):
    async def ask():
        app = create_app(rec)  # not started: no lifespan, no warm-up
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            return await client.get("/health"), await client.post("/recommend", json={"history": [1], "k": 3})

    health, refused = asyncio.run(ask())
    assert health.status_code == 503
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
