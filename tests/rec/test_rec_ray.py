"""Batch recommendation on Ray Data, on a local 2-CPU Ray: the lists and errors equal the in-process
run's whatever the actor count and batch size, a killed worker's batches are redone so every user is
written exactly once, and an existing output is refused or replaced whole."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from atspeed.rec.batch import errors_path, run_local  # noqa: E402
from atspeed.rec.data import eval_cases  # noqa: E402
from atspeed.rec.ray_engine import rank_histories, run_ray  # noqa: E402
from atspeed.rec.recommend import load_recommender, recommend  # noqa: E402

K = 5
USERS = 24
BAD_LINES = ["{broken", json.dumps({"user": "empty", "history": []}), json.dumps({"user": "gone", "history": [0]})]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module, sized like the CI machine."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def histories(synthetic) -> list[tuple[int, ...]]:
    return [c.history for c in eval_cases(synthetic)[:USERS]]  # 0-based


@pytest.fixture(scope="module")
def users_file(histories, tmp_path_factory):
    """USERS good users (string ids) with three bad lines among them."""
    lines = [json.dumps({"user": f"u{i}", "history": [x + 1 for x in h]}) for i, h in enumerate(histories)]
    for i, bad in enumerate(BAD_LINES):
        lines.insert(1 + 7 * i, bad)
    path = tmp_path_factory.mktemp("input") / "users.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_both(users_file, tmp_path, target_dir, synthetic_dir, **options):
    """The in-process and the Ray output of the same job: (lists, errors) of each."""
    common = dict(k=K, batch_size=options.pop("batch_size"), progress=False)
    local = run_local(users_file, tmp_path / "local.parquet", target_dir, synthetic_dir, **common)
    on_ray = run_ray(users_file, tmp_path / "ray.parquet", target_dir, synthetic_dir, **common, **options)
    return [(pd.read_parquet(r.output), pq.read_table(r.errors_output).to_pylist()) for r in (local, on_ray)]


@pytest.mark.parametrize(("num_actors", "batch_size"), [(1, 4), (2, 3)])
def test_ray_writes_the_in_process_lists_and_errors(users_file, tmp_path, target_dir, synthetic_dir, num_actors,
                                                    batch_size):
    (local, local_errors), (on_ray, ray_errors) = run_both(users_file, tmp_path, target_dir, synthetic_dir,
                                                           batch_size=batch_size, num_actors=num_actors)
    assert len(on_ray) == USERS and on_ray["user"].tolist() == [f"u{i}" for i in range(USERS)]
    pd.testing.assert_frame_equal(on_ray, local)  # items and scores, bit for bit
    assert ray_errors == local_errors
    assert [e["user"] for e in ray_errors] == [None, "empty", "gone"]


def test_an_existing_output_is_refused_before_any_work(users_file, tmp_path, target_dir, synthetic_dir):
    (tmp_path / "lists.parquet").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        run_ray(users_file, tmp_path / "lists.parquet", target_dir, synthetic_dir, k=K, progress=False)
    assert (tmp_path / "lists.parquet").read_bytes() == b"old"


def test_overwrite_replaces_both_files_with_one_runs_output(users_file, tmp_path, target_dir, synthetic_dir):
    out = tmp_path / "lists.parquet"
    out.write_bytes(b"old lists")
    errors_path(out).write_bytes(b"old errors")
    run_ray(users_file, out, target_dir, synthetic_dir, k=K, batch_size=8, overwrite=True, progress=False)
    assert len(pd.read_parquet(out)) == USERS and len(pd.read_parquet(errors_path(out))) == len(BAD_LINES)
    assert len({pq.read_schema(p).metadata[b"atspeed.run"] for p in (out, errors_path(out))}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lists.errors.parquet", "lists.parquet"]


def worker_pids() -> list[int]:
    """Ray Data actors running RecommendWorker that have finished loading their models."""
    pids = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error, IndexError):
            title = proc.cmdline()[0]
            if title.startswith("ray::MapWorker(MapBatches(RecommendWorker))") and not title.endswith("__init__"):
                pids.append(proc.pid)
    return pids


def test_a_killed_worker_is_replaced_and_every_user_is_written_once(users_file, tmp_path, target_dir,
                                                                    synthetic_dir):
    reference = run_local(users_file, tmp_path / "local.parquet", target_dir, synthetic_dir, k=K, batch_size=2,
                          progress=False)
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(run_ray, users_file, tmp_path / "ray.parquet", target_dir, synthetic_dir, k=K,
                          batch_size=2, num_actors=2, delay_s=0.3, progress=False)  # 12 batches, ~2 s of work
        deadline = time.monotonic() + 60
        while not worker_pids() and time.monotonic() < deadline and not job.done():
            time.sleep(0.05)
        time.sleep(0.5)  # a batch or two in
        victims = worker_pids()
        assert victims and not job.done(), "the job ended before a worker could be killed"
        os.kill(victims[0], signal.SIGKILL)
        result = job.result(timeout=180)
    lists = pd.read_parquet(result.output)
    assert len(lists) == USERS and lists["user"].is_unique
    assert set(lists["user"]) == {f"u{i}" for i in range(USERS)}
    pd.testing.assert_frame_equal(lists, pd.read_parquet(reference.output))


def test_rank_histories_is_recommend_on_ray(histories, target_dir, synthetic_dir):
    """The teacher-data path: in-memory 0-based histories in, `recommend`'s items and scores out."""
    ref = recommend(load_recommender(target_dir, synthetic_dir), histories, K, batch_size=5)
    out = rank_histories(histories, K, target_dir, synthetic_dir, batch_size=5, num_actors=2, progress=False)
    assert out.items == ref.items
    assert torch.equal(out.scores, ref.scores)
    assert np.asarray(out.items).min() >= 0


def test_teacher_data_made_on_ray_equals_teacher_data_made_in_process(target_dir, synthetic_dir, synthetic,
                                                                       tmp_path):
    from functools import partial

    from atspeed.align.teacher import generate_teacher_data, load_teacher_data
    from atspeed.rec.data import RecDataset

    small = RecDataset(name=synthetic.name, index=synthetic.index, valid={}, test={},
                       train={u: s for u, s in list(synthetic.train.items())[:12]})
    rec = load_recommender(target_dir, synthetic_dir)
    rank = partial(rank_histories, k=3, target_dir=target_dir, data_dir=synthetic_dir, batch_size=8,
                   num_actors=2, progress=False)
    local = load_teacher_data(generate_teacher_data(rec, small, tmp_path / "local", k=3, chunk_size=1000,
                                                    progress=False))
    on_ray = load_teacher_data(generate_teacher_data(rec, small, tmp_path / "ray", k=3, chunk_size=1000,
                                                     progress=False, rank=rank))
    assert local.histories == on_ray.histories
    assert torch.equal(local.items, on_ray.items)
    torch.testing.assert_close(local.scores, on_ray.scores)
