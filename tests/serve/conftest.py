"""Fixtures for the service tests: the demo models on the synthetic dataset, loaded once, and an
in-process client (httpx over ASGI, the app's lifespan run around it: no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from atspeed.rec.data import eval_cases, load_dataset
from atspeed.rec.recommend import PRETRAINED, Recommender, load_recommender
from atspeed.rec.synthetic import write_synthetic
from atspeed.serve.app import create_app
from atspeed.serve.config import ServeConfig


@pytest.fixture(scope="session")
def serve_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-synthetic")
    write_synthetic(root)
    return root


@pytest.fixture(scope="session")
def rec(serve_data) -> Recommender:
    return load_recommender(PRETRAINED / "synthetic-target", serve_data, PRETRAINED / "synthetic-draft")


@pytest.fixture(scope="session")
def histories(serve_data) -> list[list[int]]:
    """Real test-user histories (0-based items), 24 of them."""
    return [list(case.history) for case in eval_cases(load_dataset(serve_data))[:24]]


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
