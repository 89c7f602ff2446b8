"""Batch recommendation throughput: in-process vs Ray Data with 1 and 2 actors, on the same input.

    python benchmarks/bench_ray.py                    # synthetic data, random `target` recipe (4.4 M params)
    python benchmarks/bench_ray.py --users 4000 --target runs/target --data data/beauty

Prints users/second per engine, end to end (model loading and actor start-up included, Ray's own
start-up not: it is started once before the runs), and checks that every engine wrote the same
file contents (users, items and scores, bit for bit). The in-process engine uses torch's default
thread count; each Ray actor uses one thread on one CPU. Without --target, a randomly initialised
model of the `target` recipe is used: throughput does not depend on what the weights learned.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from atspeed.rec.batch import run_local
from atspeed.rec.data import load_dataset, train_samples
from atspeed.rec.ray_engine import init_ray, run_ray
from atspeed.rec.recipes import new_model
from atspeed.rec.synthetic import write_synthetic
from atspeed.rec.tokenizer import build_tokenizer
from atspeed.rec.train import save_final


def make_inputs(work: Path, data_dir: Path | None, target_dir: Path | None, users: int) -> tuple[Path, Path, Path]:
    """(data_dir, target_dir, users.parquet): the given ones, or synthetic data and a random target."""
    if data_dir is None:
        data_dir = work / "data"
        write_synthetic(data_dir)
    ds = load_dataset(data_dir)
    if target_dir is None:
        torch.manual_seed(0)
        tokenizer = build_tokenizer(ds.index)
        (work / "target").mkdir()
        target_dir = save_final(new_model("target", tokenizer), tokenizer, work / "target")
    samples = train_samples(ds)[:users]  # training prompts: the teacher-data workload
    table = pa.table({"user": list(range(len(samples))), "history": [[i + 1 for i in s.history] for s in samples]})
    pq.write_table(table, work / "users.parquet")
    return data_dir, target_dir, work / "users.parquet"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--method", default="tree", choices=["hf", "tree"])
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (default: synthetic)")
    ap.add_argument("--target", type=Path, default=None, help="trained target (default: random target recipe)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_ray."))
    data_dir, target_dir, users = make_inputs(work, args.data, args.target, args.users)
    n_users = pq.read_metadata(users).num_rows
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads in process; {n_users} users, K={args.k}, "
          f"batch {args.batch_size}, method {args.method}")
    settings = dict(k=args.k, batch_size=args.batch_size, method=args.method, progress=False)

    runs = []
    start = time.perf_counter()
    run_local(users, work / "local.parquet", target_dir, data_dir, **settings)
    runs.append(("in-process", "-", time.perf_counter() - start, work / "local.parquet"))
    init_ray(num_cpus=os.cpu_count())
    for n in args.actors:
        out = work / f"ray{n}.parquet"
        start = time.perf_counter()
        run_ray(users, out, target_dir, data_dir, num_actors=n, **settings)
        runs.append(("ray", str(n), time.perf_counter() - start, out))

    reference = pd.read_parquet(runs[0][3])
    print(f"\n{'engine':<11} {'actors':>6} {'seconds':>8} {'users/s':>8}  same lists")
    for engine, actors, seconds, out in runs:
        same = pd.read_parquet(out).equals(reference)
        print(f"{engine:<11} {actors:>6} {seconds:>8.1f} {n_users / seconds:>8.1f}  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
