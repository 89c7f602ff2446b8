"""`--engine ray`: the service on Ray Serve (a local 2-CPU Ray, the demo models on the synthetic data),
through Ray's HTTP proxy. Its answers are `recommend()`'s, and a model replica killed with SIGKILL under
load costs clean 503s with Retry-After (no hang, no 500) until Ray Serve has replaced it.

One Ray and one application (2 model replicas) for the module: a deploy costs ~20 s here, and Ray Serve
restarts every replica on each one, so the answers are checked on the same 2 replicas as the kill."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import pytest
from serve_helpers import assert_same, expected, free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")  # ray[serve]: missing grpc skips the module

from ray.exceptions import RayActorError  # noqa: E402

from atspeed.serve.config import ServeConfig  # noqa: E402
from atspeed.serve.ray_serve import APP, deploy, serve_on_ray  # noqa: E402

K = 10
CLIENT_TIMEOUT_S = 30  # a request that takes this long counts as hung
RECOVERY_S = 90  # Ray Serve notices the dead replica (health checks every 2 s) and loads a new one


@pytest.fixture(scope="module")
def base():
    """The app on a local Ray sized like the CI machine, 2 model replicas, deployed once for the module (each
    deploy restarts every replica); its base URL."""
    ray.init(num_cpus=2, include_dashboard=False)
    port = free_port()
    deploy(ServeConfig(port=port, replicas=2, cpus_per_replica=0.5, threads=1, max_wait_ms=20))
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def replica_pids(count: int, deadline_s: float, avoid: int | None = None) -> set[int]:
    """The processes of `count` live model replicas (none of them `avoid`), asked through a handle."""
    model = serve.get_deployment_handle("Model", app_name=APP)
    pids: set[int] = set()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            pids.add(model.pid.remote().result(timeout_s=10))
        except (RayActorError, TimeoutError):
            time.sleep(0.5)  # the killed one, until the router drops it
        pids.discard(avoid)
        if len(pids) == count:
            return pids
    raise AssertionError(f"{count} live model replicas not found within {deadline_s} s (saw {pids})")


async def post_all(base: str, histories) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=CLIENT_TIMEOUT_S) as client:
        return await asyncio.gather(*(client.post("/recommend", json={"history": h, "k": K}) for h in histories))


async def load_while_killing(base: str, histories, pid: int) -> list[httpx.Response | str]:
    """8 users in closed loops; SIGKILL to `pid` after 1.5 s, 4 s more of load. Each request's response,
    or "timeout" for one that hung."""
    outcomes: list[httpx.Response | str] = []
    stop = asyncio.Event()

    async def user(client: httpx.AsyncClient, history) -> None:
        while not stop.is_set():
            try:
                outcomes.append(await client.post("/recommend", json={"history": history, "k": K}))
            except httpx.TimeoutException:
                outcomes.append("timeout")

    async with httpx.AsyncClient(base_url=base, timeout=CLIENT_TIMEOUT_S) as client:
        users = [asyncio.ensure_future(user(client, h)) for h in histories]
        await asyncio.sleep(1.5)
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(4)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*users), CLIENT_TIMEOUT_S + 5)
    return outcomes


def test_a_missing_model_is_refused_before_ray_starts(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model at"):
        serve_on_ray(ServeConfig(engine="ray", target=tmp_path / "nothing"))
    assert not ray.is_initialized()


def test_answers_on_ray_serve_equal_the_recommend_function(base, rec, histories):
    answers = asyncio.run(post_all(base, histories[:8]))  # concurrent: batched in the replica
    for answer, history in zip(answers, histories[:8], strict=True):
        assert answer.status_code == 200, answer.text
        assert_same(answer.json(), *expected(rec, history, K))


def test_the_batch_endpoint_on_ray_serve_equals_the_recommend_function(base, rec, histories):
    users = [{"user": i, "history": h} for i, h in enumerate(histories[:5])]
    body = httpx.post(f"{base}/recommend/batch", json={"users": users, "k": K}, timeout=CLIENT_TIMEOUT_S).json()
    assert [r["user"] for r in body["results"]] == list(range(5))
    for result, history in zip(body["results"], histories[:5], strict=True):
        assert_same(result, *expected(rec, history, K))


def test_bad_input_on_ray_serve_gets_the_same_4xx(base):
    response = httpx.post(f"{base}/recommend", json={"history": [1, 9999], "k": K}, timeout=CLIENT_TIMEOUT_S)
    assert response.status_code == 422 and response.json()["error"] == "invalid_history"


def check_outcomes(outcomes: list, answers: dict) -> list[httpx.Response]:
    """Nothing hung, every answer is a correct 200 or a clean 503; returns the 503s."""
    assert "timeout" not in outcomes
    codes = [o.status_code for o in outcomes]
    assert set(codes) <= {200, 503}, [o.text for o in outcomes if o.status_code not in (200, 503)]
    refused = [o for o in outcomes if o.status_code == 503]
    assert all(o.headers.get("retry-after") == "1" and o.json()["error"] == "replica_unavailable" for o in refused)
    assert codes.count(200) > len(refused)  # the other replica kept answering
    for o in outcomes:
        if o.status_code == 200:
            assert_same(o.json(), *answers[tuple(json.loads(o.request.content)["history"])])
    return refused


def test_a_killed_replica_costs_clean_503s_and_is_replaced(base, rec, histories):
    answers = {tuple(h): expected(rec, h, K) for h in histories[:8]}
    refused: list[httpx.Response] = []
    for _ in range(3):  # on a loaded machine a kill can fall between two requests: then kill again
        victim, survivor = sorted(replica_pids(2, RECOVERY_S))
        refused = check_outcomes(asyncio.run(load_while_killing(base, histories[:8], victim)), answers)
        assert survivor in replica_pids(2, RECOVERY_S, avoid=victim)  # a new replica beside the survivor
        if refused:
            break
    assert refused, "no request was in flight on the killed replica, in 3 kills"

    assert httpx.get(f"{base}/health", timeout=CLIENT_TIMEOUT_S).status_code == 200
    after = asyncio.run(post_all(base, histories[:8]))
    for answer, history in zip(after, histories[:8], strict=True):
        assert answer.status_code == 200, answer.text
        assert_same(answer.json(), *answers[tuple(history)])
