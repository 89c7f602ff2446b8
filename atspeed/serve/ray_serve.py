"""`atspeed serve --engine ray`: the same FastAPI app on Ray Serve, in front of model replicas.

    HTTP -> Ray Serve proxy -> Ingress (1 replica: `build_app`'s routes, checks, errors and metrics)
                            -> DeploymentHandle -> Model (N replicas: each loads the models once in
                                                   its constructor and batches its own requests)

Why two deployments: a replica that dies mid-request is answered by Ray's proxy with a bare 500, but
in a caller that holds a DeploymentHandle the same loss is an exception (ActorDiedError). The ingress
turns it, like a replica that is unavailable or too slow, into a 503 with Retry-After, which clients
and load balancers retry; the router stops sending to the dead replica and Ray Serve starts a new one
(health checks every HEALTH_CHECK_S). The decode path is `LocalDecoder`'s (the local service's batcher
over `recommend()`), run inside each Model replica.

On a cluster (`ray_address`), model and data folders must be readable at the same paths on every node
and atspeed installed there; the defaults (demo models, synthetic data) resolve on each replica's node.
This module imports Ray: `atspeed.serve.main` imports it only for `--engine ray`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import replace

import ray
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from atspeed.rec.data import find_index_file
from atspeed.rec.ray_engine import init_ray
from atspeed.rec.recommend import model_dir
from atspeed.serve.app import Catalogue, LocalDecoder, RequestError, build_app
from atspeed.serve.batcher import Answer
from atspeed.serve.config import ServeConfig
from atspeed.serve.main import load, model_folders
from atspeed.serve.metrics import Metrics

APP = "atspeed"  # the Ray Serve application's name
TIMEOUT_S = 60.0  # the longest the ingress waits for a replica's answer before a 503
HEALTH_CHECK_S = 2.0  # how often Ray Serve checks a replica (a dead one is replaced after a failed check)
RETRY_AFTER = {"Retry-After": "1"}  # another replica answers at once; a restarted one takes seconds


@serve.deployment(name="Model", health_check_period_s=HEALTH_CHECK_S)
class Model:
    """One model replica: the recommender, loaded once, behind its own dynamic batcher."""

    async def __init__(self, config: ServeConfig) -> None:
        import torch

        if config.device == "cpu":  # replicas share the node's cores: no oversubscription
            torch.set_num_threads(config.threads or max(1, int(config.cpus_per_replica)))
        rec, item_keys = await asyncio.to_thread(load, config)
        self.catalogue_ = Catalogue.of(rec, item_keys)
        self.decoder = LocalDecoder(rec, config)
        await self.decoder.start(Metrics())  # warm-up, then the batcher; its metrics stay in this replica

    def catalogue(self) -> Catalogue:
        """What the ingress checks requests against and names items by: this replica's catalogue."""
        return self.catalogue_

    async def answer(self, history: list[int], k: int) -> Answer:
        return await self.decoder.answer(history, k)

    def pid(self) -> int:
        """This replica's process (tests kill it)."""
        return os.getpid()


class ReplicaDecoder:
    """The app's decoder on Ray: each request goes to a Model replica through a DeploymentHandle."""

    def __init__(self, model: DeploymentHandle, timeout_s: float = TIMEOUT_S) -> None:
        self.model, self.timeout_s = model, timeout_s

    async def start(self, metrics: Metrics) -> None:
        """Nothing to start: the replicas warmed up in their constructors."""

    async def answer(self, history: Sequence[int], k: int) -> Answer:
        """A replica's answer; a lost, unavailable or too slow replica is a 503 with Retry-After."""
        response = self.model.answer.remote(list(history), k)
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except RayTaskError as e:  # raised in the replica: its refusal, or a failed decode (a 500)
            raise (e.cause if isinstance(e.cause, RequestError) else e) from None
        except (RayActorError, DeploymentUnavailableError, BackPressureError) as e:
            raise RequestError(
                503,
                "replica_unavailable",
                f"The model replica was lost or is not available ({type(e).__name__}); retry.",
                RETRY_AFTER,
            ) from None
        except asyncio.TimeoutError:
            response.cancel()
            raise RequestError(
                503, "replica_timeout", f"No model replica answered within {self.timeout_s:g} s; retry.", RETRY_AFTER
            ) from None

    async def close(self) -> None:
        """Nothing to close: Ray Serve drains and stops the replicas."""


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
@serve.ingress()
class Ingress:
    """The HTTP app (`build_app`) over the Model replicas; it needs no model of its own."""

    async def __init__(self, model: DeploymentHandle, config: ServeConfig) -> None:
        catalogue = await model.catalogue.remote()  # waits for the first Model replica
        self.http = build_app(ReplicaDecoder(model), catalogue, config)  # not "app": Ray's property

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.http


def application(config: ServeConfig) -> serve.Application:
    """The Ray Serve application for `config`: `config.replicas` Model replicas behind one Ingress."""
    model = Model.options(
        num_replicas=config.replicas,
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": config.gpus_per_replica},
        max_ongoing_requests=2 * config.max_batch,  # a full batch decoding, the next one filling
    )
    if config.gpus_per_replica > 0:
        config = replace(config, device="cuda")  # Ray gives each replica its share of a GPU
    return Ingress.bind(model.bind(config), config)


def deploy(config: ServeConfig) -> DeploymentHandle:
    """Start Ray Serve's HTTP proxy on config.host:port (in the connected Ray) and deploy the app; returns
    the ingress's handle once every replica is up."""
    serve.start(http_options={"host": config.host, "port": config.port})
    return serve.run(application(config), name=APP, route_prefix="/")


def check_folders(config: ServeConfig) -> None:
    """The folders the replicas will load, checked here first (on a cluster: paths as this node sees them)."""
    target, draft = model_folders(config)
    for folder in (target, draft):
        if folder is not None:
            model_dir(folder)
    if config.data is not None:
        find_index_file(config.data)


def serve_on_ray(config: ServeConfig) -> None:
    """`atspeed serve --engine ray`: deploy, serve until SIGTERM / Ctrl-C, then delete the app (and stop the
    local Ray, if this process started one). Bad folders raise before Ray starts."""
    check_folders(config)
    own_ray = not ray.is_initialized() and not (config.ray_address or os.environ.get("RAY_ADDRESS"))
    init_ray(config.ray_address)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    deployed = False
    try:
        deploy(config)
        deployed = True
        print(
            f"atspeed on Ray Serve: http://{config.host}:{config.port}, model replicas: {config.replicas}", flush=True
        )
        while not stop.wait(1.0):
            pass
    finally:
        if deployed:
            serve.delete(APP)  # the proxy stops routing to it; in-flight requests finish
        if own_ray:  # a local Ray this process started; a cluster's Serve keeps its other apps
            serve.shutdown()
            ray.shutdown()
