"""Bad input gets a 4xx with {"error": kind, "detail": ...} naming the problem, and the service
keeps answering."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

import httpx
import pytest
from serve_helpers import served

from atspeed.serve.app import create_app
from atspeed.serve.config import ServeConfig

LIMITS = ServeConfig(max_users=4, max_history=50, max_k=100, max_body_bytes=20_000)

# (path, body: JSON value or raw bytes, status, error kind, a fragment of the detail)
CASES = {
    "unknown item": ("/recommend", {"history": [1, 9999], "k": 5}, 422, "invalid_history", "9999"),
    "negative item": ("/recommend", {"history": [-1], "k": 5}, 422, "invalid_history", "-1"),
    "empty history": ("/recommend", {"history": [], "k": 5}, 422, "invalid_history", "empty"),
    "too long history": ("/recommend", {"history": [1] * 51, "k": 5}, 422, "history_too_long", "50"),
    "k zero": ("/recommend", {"history": [1], "k": 0}, 422, "invalid_k", "got 0"),
    "k over the catalogue": ("/recommend", {"history": [1], "k": 513}, 422, "invalid_k", "512"),
    "k over max_k": ("/recommend", {"history": [1], "k": 101}, 422, "invalid_k", "max_k"),
    "k not an integer": ("/recommend", {"history": [1], "k": 2.5}, 422, "invalid_request", "body.k"),
    "k as text": ("/recommend", {"history": [1], "k": "20"}, 422, "invalid_request", "body.k"),
    "k a boolean": ("/recommend", {"history": [1], "k": True}, 422, "invalid_request", "body.k"),
    "item as text": ("/recommend", {"history": [1, "3"], "k": 5}, 422, "invalid_request", "body.history.1"),
    "item a boolean": ("/recommend", {"history": [True], "k": 5}, 422, "invalid_request", "body.history.0"),
    "history not a list": ("/recommend", {"history": "1 2 3", "k": 5}, 422, "invalid_request", "body.history"),
    "history missing": ("/recommend", {"k": 5}, 422, "invalid_request", "body.history"),
    "misspelt field": ("/recommend", {"history": [1], "kk": 5}, 422, "invalid_request", "body.kk"),
    "body not an object": ("/recommend", [1, 2], 422, "invalid_request", "body"),
    "empty body": ("/recommend", b"", 422, "invalid_request", "body"),
    "malformed JSON": ("/recommend", b'{"history": [1,', 400, "malformed_json", "not valid JSON"),
    "body too large": ("/recommend", {"history": [1] * 10_000, "k": 5}, 413, "body_too_large", "20000"),
    "batch over the limit": ("/recommend/batch", {"users": [{"history": [1]}] * 5, "k": 5}, 413,
                             "batch_too_large", "limit is 4"),
    "bad row in a batch": ("/recommend/batch", {"users": [{"history": [1]}, {"history": [600]}], "k": 5}, 422,
                           "invalid_history", "History 1"),
    "bad k in a batch": ("/recommend/batch", {"users": [{"history": [1]}], "k": -3}, 422, "invalid_k", "-3"),
    "users not a list": ("/recommend/batch", {"users": {"history": [1]}, "k": 5}, 422, "invalid_request",
                         "body.users"),
}


@pytest.fixture(scope="module")
def app(rec):
    """Refusals come before any decode: the app need not be started (no lifespan)."""
    return create_app(rec, LIMITS)


async def post(client: httpx.AsyncClient, path: str, body: object, kind: str = "application/json") -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(path, content=raw, headers={"content-type": kind})


def post_once(app, path: str, body: object, kind: str = "application/json") -> httpx.Response:
    async def once():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            return await post(client, path, body, kind)

    return asyncio.run(once())


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_a_4xx_naming_the_problem(app, case):
    path, body, status, kind, fragment = CASES[case]
    response = post_once(app, path, body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == kind
    assert fragment in response.json()["detail"]


def test_a_body_that_is_not_declared_json_gets_415(app):
    response = post_once(app, "/recommend", b'{"history": [1]}', kind="text/plain")
    assert response.status_code == 415 and response.json()["error"] == "not_json"


def test_the_service_keeps_answering_after_bad_input(rec):
    async def bad_then_good():
        async with served(rec, **asdict(LIMITS)) as client:
            for path, body, *_ in CASES.values():
                await post(client, path, body)
            good = await post(client, "/recommend", {"history": [3, 4], "k": 5})
            return good, (await client.get("/metrics")).text

    response, metrics = asyncio.run(bad_then_good())
    assert response.status_code == 200 and len(response.json()["items"]) == 5
    assert 'atspeed_errors_total{kind="invalid_history"} 4.0' in metrics
    assert 'status="500"' not in metrics


def request_once(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def once():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(once())


def test_a_lone_surrogate_in_the_user_id_is_refused_not_a_500(app):
    response = post_once(app, "/recommend", b'{"history": [1], "k": 5, "user": "\\ud800"}')
    assert response.status_code == 422 and response.json()["error"] == "invalid_request"
    assert "lone surrogate" in response.json()["detail"]


def test_a_body_sent_in_chunks_is_held_to_the_same_size_limit(app):
    """No Content-Length to read: the bytes are counted as they arrive."""
    async def chunks():
        yield b'{"history": ['
        for _ in range(8_000):  # 24 kB > the 20,000-byte limit
            yield b"1, "
        yield b'1], "k": 5}'

    response = request_once(app, "POST", "/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"] == "body_too_large"
    assert "20000" in response.json()["detail"]


@pytest.mark.parametrize(("method", "path", "status", "kind"), [("GET", "/recommend", 405, "method_not_allowed"),
                                                                ("POST", "/nowhere", 404, "not_found"),
                                                                ("POST", "/health", 405, "method_not_allowed")])
def test_the_frameworks_own_refusals_have_the_same_shape(app, method, path, status, kind):
    response = request_once(app, method, path, content=b"{}", headers={"content-type": "application/json"})
    assert response.status_code == status and response.json()["error"] == kind and response.json()["detail"]


def test_json_nested_too_deep_to_parse_is_a_400_of_the_same_shape(app):
    response = post_once(app, "/recommend", b"[" * 20_000)
    assert response.status_code == 400 and response.json()["error"] == "malformed_body"


def test_an_answer_names_a_few_validation_errors_not_every_one(app):
    response = post_once(app, "/recommend", {"history": ["x"] * 1_000, "k": 5})
    assert response.status_code == 422 and len(response.text) < 2_000
    assert response.json()["detail"].endswith("; and 995 more")


def test_a_failure_inside_the_service_is_a_500_of_the_same_shape_and_counted(rec, monkeypatch):
    import atspeed.serve.app as app_module

    async def fail_then_metrics():
        async with served(rec, **asdict(LIMITS)) as client:
            def broken(*args, **kwargs):
                raise RuntimeError("decode broke")

            monkeypatch.setattr(app_module, "recommend", broken)
            failed = await post(client, "/recommend", {"history": [3, 4], "k": 5})
            return failed, (await client.get("/metrics")).text

    response, metrics = asyncio.run(fail_then_metrics())
    assert response.status_code == 500 and response.json() == {"error": "internal",
                                                                "detail": "RuntimeError: decode broke"}
    assert 'atspeed_requests_total{path="/recommend",status="500"} 1.0' in metrics
    assert 'atspeed_errors_total{kind="internal"} 1.0' in metrics


def shared_id_recommender():
    """6 items, 4 distinct semantic IDs: at most 4 distinct items per list."""
    from atspeed.rec.recipes import new_model
    from atspeed.rec.recommend import build_recommender
    from atspeed.rec.tokenizer import build_tokenizer

    index = {0: ("<a_0>", "<b_0>"), 1: ("<a_0>", "<b_1>"), 2: ("<a_1>", "<b_0>"), 3: ("<a_1>", "<b_1>"),
             4: ("<a_0>", "<b_0>"), 5: ("<a_0>", "<b_1>")}
    tokenizer = build_tokenizer(index)
    return build_recommender(new_model("tiny", tokenizer), tokenizer, index)


def test_k_beyond_the_distinct_semantic_ids_gets_422_naming_them():
    response = post_once(create_app(shared_id_recommender(), LIMITS), "/recommend", {"history": [1], "k": 5})
    assert response.status_code == 422 and response.json()["error"] == "invalid_k", response.text
    assert "distinct semantic IDs (4" in response.json()["detail"]


def test_a_catalogue_with_fewer_ids_than_the_warm_up_k_starts_and_answers():
    async def start_and_ask():
        async with served(shared_id_recommender()) as client:
            return await post(client, "/recommend", {"history": [1, 2], "k": 4})

    response = asyncio.run(start_and_ask())
    assert response.status_code == 200 and len(set(response.json()["items"])) == 4, response.text
