"""Batch recommendation on Ray Data: the same job on a laptop, one multi-GPU node, or a cluster.

The driver reads and checks the input and plans the decode batches (`batch.prepare`); Ray Data
sends the planned batches to a fixed pool of actors (`RecommendWorker`), each of which loads the
target (and draft) once and runs `batch.recommend_batch`, the function the in-process engine runs.
The driver collects the lists, checks that every user came back exactly once, and writes both
files atomically (`batch.write_outputs`), so a failed job leaves no output and the lists equal
the in-process run's, whatever the actor count.

Reliability is Ray's: a worker process that dies is restarted (`max_restarts`) and its unfinished
batches are retried on the new process (`max_task_retries`). A batch that keeps killing its
worker fails the job after RETRIES retries, and no failed batch is ever dropped
(`max_errored_blocks = 0`). Python errors inside decoding are bugs, not bad luck: they are not
retried. Bad input rows never reach the workers; they go to the errors file.

On a cluster, start Ray first (or set RAY_ADDRESS) and put the model folders and the dataset on
storage every node can read, with atspeed installed on every node.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from functools import partial

import numpy as np
import pandas as pd
import ray
import ray.data
import torch
from ray.data import ActorPoolStrategy, DataContext

from atspeed.rec.batch import (
    BatchResult,
    assemble,
    catalogue_size,
    check_settings,
    empty_results,
    plan_batches,
    recommend_batch,
    run_job,
)
from atspeed.rec.data import MAX_HISTORY
from atspeed.rec.recommend import Recommendations, check_histories, load_recommender

RETRIES = 3  # retries of a batch whose worker died; restarts of a worker are unbounded (preemption)
BATCHES_PER_BLOCK = 4  # planned batches per Ray block: the unit of scheduling and of retry


class RecommendWorker:
    """A Ray Data actor: loads the recommender once, then decodes planned batches."""

    def __init__(self, target_dir: str, data_dir: str, draft_dir: str | None, *, device: str, threads: int,
                 allow_duplicate_ids: bool, settings: dict, delay_s: float = 0.0):
        if device == "cpu":
            torch.set_num_threads(threads)  # actors share the node's cores: no oversubscription
        self.rec = load_recommender(target_dir, data_dir, draft_dir, device=device,
                                    allow_duplicate_ids=allow_duplicate_ids)
        self.settings, self.delay_s = settings, delay_s

    def __call__(self, plan: pd.DataFrame) -> pd.DataFrame:
        if self.delay_s:
            time.sleep(self.delay_s)
        return recommend_batch(self.rec, plan, **self.settings)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address` (or RAY_ADDRESS); else start a local one, once per process."""
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)


@contextlib.contextmanager
def _data_context(**settings: object) -> Iterator[None]:
    """Set Ray Data's DataContext for one job and put the caller's values back after it."""
    ctx = DataContext.get_current()
    old = {name: getattr(ctx, name) for name in settings}
    for name, value in settings.items():
        setattr(ctx, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(ctx, name, value)


def _blocks(plan: pd.DataFrame, num_actors: int) -> list[pd.DataFrame]:
    """Up to BATCHES_PER_BLOCK planned batches per block, and >= 4 blocks per actor when there is work."""
    per_block = max(1, min(BATCHES_PER_BLOCK, len(plan) // (4 * num_actors)))
    return [plan.iloc[s : s + per_block] for s in range(0, len(plan), per_block)]


def decode_ray(
    plan: pd.DataFrame,
    target_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    draft_dir: str | os.PathLike | None = None,
    *,
    k: int,
    method: str = "tree",
    draft_beams: int | None = None,
    gamma: int = 3,
    seed: int = 0,
    num_actors: int = 1,
    num_gpus_per_actor: float = 0,
    num_cpus_per_actor: float = 1,
    allow_duplicate_ids: bool = False,
    address: str | None = None,
    progress: bool = True,
    delay_s: float = 0.0,
) -> pd.DataFrame:
    """`recommend_batch` over every planned batch in a pool of `num_actors` Ray actors.

    Returns the rows in no particular order (`batch.assemble` orders and checks them).
    `delay_s` is a testing hook: each worker sleeps that long before each batch.
    """
    if num_actors < 1:
        raise ValueError(f"num_actors must be >= 1, got {num_actors}.")
    if plan.empty:
        return empty_results()
    init_ray(address)
    worker_args = dict(
        target_dir=str(target_dir), data_dir=str(data_dir), draft_dir=None if draft_dir is None else str(draft_dir),
        device="cuda" if num_gpus_per_actor > 0 else "cpu", threads=max(1, int(num_cpus_per_actor)),
        allow_duplicate_ids=allow_duplicate_ids, delay_s=delay_s,
        settings=dict(k=k, method=method, draft_beams=draft_beams, gamma=gamma, seed=seed),
    )
    reliable = dict(max_errored_blocks=0, actor_task_retry_on_errors=False, max_consecutive_actor_init_deaths=RETRIES)
    with _data_context(**reliable, enable_progress_bars=progress), warnings.catch_warnings():
        # Ray 2.60 deprecates max_restarts / max_task_retries here (no named replacement yet); its
        # default is (-1, -1), which would retry a batch that keeps killing its worker forever.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        lists = ray.data.from_pandas(_blocks(plan, num_actors)).map_batches(
            RecommendWorker,
            fn_constructor_kwargs=worker_args,
            batch_size=1,  # one planned batch per call: the decode batches are the plan's, not Ray's
            batch_format="pandas",
            compute=ActorPoolStrategy(size=num_actors),
            num_cpus=num_cpus_per_actor,
            num_gpus=num_gpus_per_actor,
            max_restarts=-1,
            max_task_retries=RETRIES,
        )
        parts = list(lists.iter_batches(batch_size=None, batch_format="pandas"))
    return pd.concat(parts, ignore_index=True) if parts else empty_results()


def run_ray(
    input: str | os.PathLike,
    output: str | os.PathLike,
    target_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    draft_dir: str | os.PathLike | None = None,
    *,
    k: int = 10,
    method: str = "tree",
    batch_size: int = 16,
    num_actors: int = 1,
    num_gpus_per_actor: float = 0,
    num_cpus_per_actor: float = 1,
    draft_beams: int | None = None,
    gamma: int = 3,
    seed: int = 0,
    overwrite: bool = False,
    allow_duplicate_ids: bool = False,
    address: str | None = None,
    progress: bool = True,
    delay_s: float = 0.0,
) -> BatchResult:
    """`batch.run_local`'s job on Ray Data: the same lists and errors, written the same way."""
    decode = partial(decode_ray, target_dir=target_dir, data_dir=data_dir, draft_dir=draft_dir, k=k, method=method,
                     draft_beams=draft_beams, gamma=gamma, seed=seed, num_actors=num_actors,
                     num_gpus_per_actor=num_gpus_per_actor, num_cpus_per_actor=num_cpus_per_actor,
                     allow_duplicate_ids=allow_duplicate_ids, address=address, progress=progress, delay_s=delay_s)
    return run_job(input, output, target_dir, data_dir, draft_dir, decode, k=k, method=method,
                   batch_size=batch_size, overwrite=overwrite, allow_duplicate_ids=allow_duplicate_ids,
                   metadata={"engine": "ray", "num_actors": num_actors})


def rank_histories(
    histories: Sequence[Sequence[int]],
    k: int,
    target_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    draft_dir: str | os.PathLike | None = None,
    *,
    method: str = "tree",
    batch_size: int = 16,
    max_history: int = MAX_HISTORY,
    allow_duplicate_ids: bool = False,
    **ray_options: object,
) -> Recommendations:
    """`recommend(rec, histories, k, method=..., batch_size=...)` on Ray: the same items and scores.

    For teacher data at scale: in-memory histories (0-based item ids, as `recommend` takes them)
    in, the top-`k` items (0-based) and scores per history out, in order. `ray_options` go to
    `decode_ray` (num_actors, num_gpus_per_actor, ...).
    """
    check_settings(method, target_dir, draft_dir)
    check_histories(histories, catalogue_size(data_dir, k, allow_duplicate_ids=allow_duplicate_ids))
    good = pd.DataFrame({"row": range(len(histories)), "user": range(len(histories)),
                         "history": [tuple(h) for h in histories]})
    start = time.perf_counter()
    results = decode_ray(plan_batches(good, batch_size, max_history), target_dir, data_dir, draft_dir, k=k,
                         method=method, allow_duplicate_ids=allow_duplicate_ids, **ray_options)
    lists = assemble(good, results)
    scores = np.array([np.asarray(s, dtype=np.float32) for s in lists["scores"]], dtype=np.float32).reshape(-1, k)
    return Recommendations(items=[[int(i) for i in items] for items in lists["items"]],
                           scores=torch.from_numpy(scores), seconds=time.perf_counter() - start)
