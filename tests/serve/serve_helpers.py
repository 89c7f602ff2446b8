"""Service test helpers: an in-process client (httpx over ASGI, the app's lifespan run around it: no
sockets), a Prometheus sample reader, a free port, and the check that an answer is `recommend()`'s.
A module of its own: `conftest` names several modules."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import torch

from atspeed.rec.recommend import Recommender, recommend
from atspeed.serve.app import create_app
from atspeed.serve.config import ServeConfig


@asynccontextmanager
async def served(rec: Recommender, item_keys=None, **settings) -> AsyncIterator[httpx.AsyncClient]:
    """A started app (lifespan: warm-up, batcher) and a client talking to it in-process."""
    app = create_app(rec, ServeConfig(**settings), item_keys)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=60) as client:
            yield client


def metric(text: str, name: str) -> float:
    """The value of one unlabelled sample in Prometheus text (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected(rec: Recommender, history, k: int, method: str = "tree"):
    """recommend() for this one history: (items, scores)."""
    out = recommend(rec, [history], k, method=method)
    return out.items[0], out.scores[0]


def assert_same(answer: dict, items, scores) -> None:
    """Same items, same scores up to float32 rounding (a batch pads its prompts: sums round differently)."""
    assert answer["items"] == items
    torch.testing.assert_close(torch.tensor(answer["scores"]), scores, rtol=0, atol=1e-4)
