"""Load generator for `atspeed serve`: users/s and P50/P95/P99 latency against a running service.

    python -m atspeed.serve --port 8000 &                            # the service (demo models)
    python benchmarks/bench_serve.py --closed 1,8,64 --duration 20   # closed loop at each concurrency
    python benchmarks/bench_serve.py --open 30 --duration 120        # open loop at 30 requests/s

Closed loop: C clients, each sending its next request when the last one is answered (throughput
at a concurrency). Open loop: requests start on a fixed schedule at the target rate whatever the
answers do, and latency is counted from the scheduled start, so a slow service cannot hide its
queue (no coordinated omission). Histories are random catalogue items (seeded): the decode costs
the same for any history of the same length. A non-200 answer or a transport error is an error.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import httpx
import numpy as np


def histories(num_items: int, count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(num_items) for _ in range(length)] for _ in range(count)]


class Tally:
    """Latencies of the answered requests, and errors by reason."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    async def send(self, client: httpx.AsyncClient, body: dict, start: float) -> None:
        try:
            response = await client.post("/recommend", json=body)
            reason = None if response.status_code == 200 else f"HTTP {response.status_code}"
        except httpx.HTTPError as e:
            reason = type(e).__name__
        if reason is None:
            self.latencies.append(time.perf_counter() - start)
        else:
            self.errors[reason] = self.errors.get(reason, 0) + 1

    def line(self, label: str, seconds: float) -> str:
        ms = np.percentile(self.latencies, [50, 95, 99]) * 1000 if self.latencies else [float("nan")] * 3
        errors = sum(self.errors.values())
        detail = f" ({', '.join(f'{k}: {v}' for k, v in self.errors.items())})" if errors else ""
        return (f"{label:<18} {len(self.latencies):>7} {len(self.latencies) / seconds:>9.1f} {ms[0]:>8.1f} "
                f"{ms[1]:>8.1f} {ms[2]:>8.1f} {errors:>6}{detail}")


HEADER = f"{'run':<18} {'answers':>7} {'users/s':>9} {'P50 ms':>8} {'P95 ms':>8} {'P99 ms':>8} {'errors':>6}"


async def closed_loop(client: httpx.AsyncClient, bodies: list[dict], concurrency: int, duration: float) -> str:
    tally, end = Tally(), time.perf_counter() + duration

    async def user(offset: int) -> None:
        i = offset
        while time.perf_counter() < end:
            await tally.send(client, bodies[i % len(bodies)], time.perf_counter())
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(user(c) for c in range(concurrency)))
    return tally.line(f"closed c={concurrency}", time.perf_counter() - start)


async def open_loop(client: httpx.AsyncClient, bodies: list[dict], rate: float, duration: float) -> str:
    tally, start = Tally(), time.perf_counter()
    tasks = []
    for i in range(int(rate * duration)):
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.create_task(tally.send(client, bodies[i % len(bodies)], scheduled)))
    await asyncio.gather(*tasks)
    return tally.line(f"open {rate:g}/s", time.perf_counter() - start)


async def run(args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=args.connections, max_keepalive_connections=args.connections)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as client:
        health = (await client.get("/health")).json()
        bodies = [{"history": h, "k": args.k} for h in histories(health["items"], 512, args.history, args.seed)]
        print(f"{args.url}: method {health['method']}, max_batch {health['max_batch']}, max_wait_ms "
              f"{health['max_wait_ms']}, K = {args.k}, {args.history}-item histories, {args.duration:g} s per run")
        await closed_loop(client, bodies, 1, args.warmup)  # warm the connection and the service
        print(HEADER)
        for c in args.closed:
            print(await closed_loop(client, bodies, c, args.duration), flush=True)
        for rate in args.open:
            print(await open_loop(client, bodies, rate, args.duration), flush=True)


def numbers(text: str, kind: type) -> list:
    return [kind(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--closed", type=lambda s: numbers(s, int), default=[], help="concurrencies, e.g. 1,8,64")
    p.add_argument("--open", type=lambda s: numbers(s, float), default=[], help="target rates (requests/s)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of one client before the runs")
    p.add_argument("-k", type=int, default=20)
    p.add_argument("--history", type=int, default=20, help="items per history")
    p.add_argument("--connections", type=int, default=256)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
