"""Service test helpers: an in-process client (httpx over ASGI, the app's lifespan run around it: no
sockets) and a Prometheus sample reader. A module of its own: `conftest` names several modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from atspeed.rec.recommend import Recommender
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
