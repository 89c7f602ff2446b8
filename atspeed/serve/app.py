"""The HTTP service: FastAPI routes over a decoder, either one loaded `Recommender` and its `Batcher`
in this process (`create_app`), or model replicas on Ray Serve (`atspeed.serve.ray_serve`).

    POST /recommend         one user's top-K items
    POST /recommend/batch   many users, one K
    GET  /health            200 once the models are loaded and warmed up, 503 before and while stopping
    GET  /metrics           Prometheus text format
    GET  /docs              OpenAPI (FastAPI's own)

Every refusal, the web framework's own included (404, 405, a body over `max_body_bytes` however it
is sent), is answered as `{"error": kind, "detail": what and where}` and counted by kind; bad input
gets a 4xx. The checks are `atspeed.rec.recommend`'s own (`check_k`, `check_histories`), plus the
service's bounds on request size. A bug or a failed decode is a 500 of the same shape, logged and
counted with the other answers. The decode runs in the batcher's worker thread (in this process or
in each Ray replica), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from atspeed.rec.recommend import Recommender, check_histories, check_k, recommend
from atspeed.serve.batcher import Answer, Batcher, BatcherClosed
from atspeed.serve.config import ServeConfig
from atspeed.serve.metrics import Metrics
from atspeed.serve.schemas import (
    BatchRequest,
    BatchResponse,
    ErrorBody,
    Recommendation,
    RecommendRequest,
    RecommendResponse,
)

PATHS = ("/recommend", "/recommend/batch", "/health", "/metrics")  # metric labels; anything else is "other"
POST_PATHS = PATHS[:2]
# the web framework's own refusals, by status: the error kind they are answered and counted as
HTTP_KINDS = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
MAX_ERRORS_SHOWN = 5  # validation errors named in one answer (a body of a million bad items has a million)
log = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the service refuses: HTTP status, error kind (a metric label) and a message."""

    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers


@dataclass(frozen=True)
class Catalogue:
    """What the app checks requests against: the item count, the distinct semantic IDs (the largest K:
    items that share an ID are one beam) and each item's original key, if known."""

    num_items: int
    num_ids: int
    item_keys: Sequence | None = None

    @classmethod
    def of(cls, rec: Recommender, item_keys: Sequence | None = None) -> Catalogue:
        return cls(rec.num_items, rec.num_ids, item_keys)


class Decoder(Protocol):
    """Where the app's checked requests are decoded: this process's batcher (`LocalDecoder`), or model
    replicas on Ray Serve (`atspeed.serve.ray_serve`). The routes, checks and errors are the app's."""

    async def start(self, metrics: Metrics) -> None:
        """Called once by the app's startup, before it reports ready."""

    async def answer(self, history: Sequence[int], k: int) -> Answer:
        """One checked request's top-k; a RequestError for a refusal the client should see."""

    async def close(self) -> None:
        """Called once at shutdown, after the server stopped taking requests."""


class LocalDecoder:
    """Dynamic batching in this process: a `Batcher` over `recommend()`, warmed up before it starts."""

    def __init__(self, rec: Recommender, config: ServeConfig) -> None:
        self.rec, self.config = rec, config
        self.batcher: Batcher | None = None

    async def start(self, metrics: Metrics) -> None:
        config = self.config
        decode = partial(_decode, self.rec, config.method, config.max_batch)
        batcher = Batcher(decode, max_batch=config.max_batch, max_wait=config.max_wait_ms / 1000,
                          on_batch=metrics.on_batch)
        await asyncio.to_thread(_warm_up, decode, Catalogue.of(self.rec))
        batcher.start()
        metrics.queued.set_function(lambda: batcher.queued)
        self.batcher = batcher

    async def answer(self, history: Sequence[int], k: int) -> Answer:
        if self.batcher is None:
            raise RequestError(503, "not_ready", "The models are not loaded yet.", {"Retry-After": "1"})
        try:
            return await self.batcher.submit(history, k)
        except BatcherClosed as e:
            raise RequestError(503, "shutting_down", str(e), {"Retry-After": "1"}) from None

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()


def create_app(rec: Recommender, config: ServeConfig | None = None, item_keys: Sequence | None = None) -> FastAPI:
    """The service for a loaded recommender; `item_keys[i]` is item i's original key, if known."""
    config = config or ServeConfig()
    return build_app(LocalDecoder(rec, config), Catalogue.of(rec, item_keys), config)


def build_app(decoder: Decoder, catalogue: Catalogue, config: ServeConfig) -> FastAPI:
    """The routes over any decoder of `catalogue` (create_app: the local one)."""
    num_items, item_keys = catalogue.num_items, catalogue.item_keys
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await decoder.start(metrics)
        app.state.ready = True
        yield
        app.state.ready = False  # the server has stopped taking connections and finished in-flight requests
        await decoder.close()

    app = FastAPI(title="atspeed", summary="Top-K next items by trie-constrained beam search, batched on the fly",
                  lifespan=lifespan, responses={code: {"model": ErrorBody} for code in (400, 413, 415, 422, 503)})
    app.state.ready = False
    app.state.metrics = metrics

    async def answer(history: Sequence[int], k: int) -> Answer:
        if not app.state.ready:
            raise RequestError(503, "not_ready", "The models are not loaded yet.", {"Retry-After": "1"})
        return await decoder.answer(history, k)

    def result(user: object, a: Answer) -> Recommendation:
        keys = [item_keys[i] for i in a.items] if item_keys is not None else None
        return Recommendation(user=user, items=a.items, keys=keys, scores=a.scores)

    @app.post("/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
    async def recommend_one(body: RecommendRequest, request: Request) -> RecommendResponse:
        """The top-K items for one user's history."""
        _check(config, catalogue, [body.history], body.k)
        a = await answer(body.history, body.k)
        return RecommendResponse(**result(body.user, a).model_dump(), method=config.method, k=body.k,
                                 latency_ms=_ms_since(request))

    @app.post("/recommend/batch", response_model=BatchResponse, response_model_exclude_none=True)
    async def recommend_many(body: BatchRequest, request: Request) -> BatchResponse:
        """The top-K items for each of several users (at most max_users), in request order."""
        if len(body.users) > config.max_users:
            raise RequestError(413, "batch_too_large",
                               f"{len(body.users)} users in one request; the limit is {config.max_users}.")
        _check(config, catalogue, [u.history for u in body.users], body.k)
        answers = await asyncio.gather(*(answer(u.history, body.k) for u in body.users))
        return BatchResponse(results=[result(u.user, a) for u, a in zip(body.users, answers, strict=True)],
                             method=config.method, k=body.k, latency_ms=_ms_since(request))

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 when the models are loaded and warmed up (a load balancer's readiness check)."""
        ready = bool(app.state.ready)
        body = {"status": "ok" if ready else "unavailable", "method": config.method, "items": num_items,
                "max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Counters and histograms in Prometheus' text format."""
        return Response(metrics.render(), media_type=metrics.content_type)

    # added before _install_handlers' counting middleware, so inside it: the 413 it raises while the route
    # reads the body is answered by the app's handler (error shape) and then counted like any answer
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    _install_handlers(app, config, metrics)
    return app


def _decode(rec: Recommender, method: str, max_batch: int, histories: Sequence[Sequence[int]], k: int):
    return recommend(rec, histories, k, method=method, batch_size=max_batch)


def _warm_up(decode, catalogue: Catalogue) -> None:
    """First calls allocate and pick kernels: pay that before the first user does (batch 1 and 2)."""
    k = min(20, catalogue.num_ids)
    decode([[0]], k)
    decode([[0], [0, 1 % catalogue.num_items]], k)


def _check(config: ServeConfig, catalogue: Catalogue, histories: list[list[int]], k: int) -> None:
    """The request's K and histories, by recommend()'s own checks plus the service's size bounds."""
    try:
        check_k(k, catalogue.num_items, catalogue.num_ids)
    except ValueError as e:
        raise RequestError(422, "invalid_k", str(e)) from None
    if k > config.max_k:
        raise RequestError(422, "invalid_k", f"k must be at most {config.max_k} (the service's max_k), got {k}.")
    for row, history in enumerate(histories):
        if len(history) > config.max_history:
            raise RequestError(422, "history_too_long", f"History {row} has {len(history)} items; the limit is "
                               f"{config.max_history} (the model reads the last 20).")
    try:
        check_histories(histories, catalogue.num_items)
    except ValueError as e:
        raise RequestError(422, "invalid_history", str(e)) from None


def _ms_since(request: Request) -> float:
    return round((time.perf_counter() - request.state.start) * 1000, 3)


def _install_handlers(app: FastAPI, config: ServeConfig, metrics: Metrics) -> None:
    """Every refusal as `{"error", "detail"}`, counted by kind; request counts and latency per path."""

    def refuse(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(kind).inc()
        return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, e: RequestError) -> JSONResponse:
        return refuse(e.status, e.kind, e.detail, e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        bad_json = [err for err in errors if err.get("type") == "json_invalid"]
        if bad_json:
            where, why = bad_json[0].get("loc", ("body", "?"))[-1], bad_json[0].get("ctx", {}).get("error", "")
            return refuse(400, "malformed_json", f"The body is not valid JSON: {why} at character {where}.")
        shown = "; ".join(_describe(err) for err in errors[:MAX_ERRORS_SHOWN])
        more = f"; and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        return refuse(422, "invalid_request", shown + more)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:  # the framework's own refusals
        detail = (f"The body is larger than the limit of {config.max_body_bytes} bytes." if e.status_code == 413
                  else str(e.detail))
        return refuse(e.status_code, HTTP_KINDS.get(e.status_code, f"http_{e.status_code}"), detail, e.headers)

    @app.middleware("http")
    async def count(request: Request, call_next):
        request.state.start = time.perf_counter()
        path = request.url.path if request.url.path in PATHS else "other"
        refusal = _refuse_body(request, config.max_body_bytes)
        try:
            response = refuse(*refusal) if refusal else await call_next(request)
        except Exception as e:  # noqa: BLE001 -- a bug or a failed decode, not bad input: answered and counted
            log.exception("%s %s failed", request.method, request.url.path)
            response = refuse(500, "internal", f"{type(e).__name__}: {e}")
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - request.state.start)
        return response


def _refuse_body(request: Request, max_bytes: int) -> tuple[int, str, str] | None:
    """A body for a POST route that is not declared JSON, or declared larger than the limit, is
    refused before it is read (a body without a Content-Length is counted as it arrives: BodyLimit)."""
    if request.method != "POST" or request.url.path not in POST_PATHS:
        return None
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        return 415, "not_json", f"Send the body as JSON with 'Content-Type: application/json' (got {kind or 'none'!r})."
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > max_bytes:
        return 413, "body_too_large", f"The body has {size} bytes; the limit is {max_bytes}."
    return None


class BodyLimit:
    """Counts a request's body bytes as they arrive and refuses the request past `max_bytes` (a 413
    through the app's own handler), whether or not it declared a Content-Length: a chunked body
    declares none. FastAPI's own max_body_size (0.164+) answers such requests in plain text, outside
    the service's error shape, so the service counts for itself."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # FastAPI's HTTPException: its body reader passes it on as is
                raise HTTPException(413)
            return message

        await self.app(scope, counted, send)


def _describe(err: dict) -> str:
    """One pydantic error as 'body.history.2: Input should be a valid integer (got "x")'."""
    where = ".".join(str(part) for part in err.get("loc", ()))
    got = f" (got {err['input']!r})" if "input" in err and err.get("type") != "missing" else ""
    return f"{where}: {err.get('msg', 'invalid')}{got}"[:500]
