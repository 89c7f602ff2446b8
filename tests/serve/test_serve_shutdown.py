"""The real process: `python -m atspeed.serve` under uvicorn on a loopback port, stopped by SIGTERM
with requests in flight; and a loading error before anything is served (in-process)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import free_port, metric

from atspeed.serve.main import main

STARTUP_S = 120  # importing torch and transformers on a busy 2-core machine


def wait_until_healthy(base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"the service did not become healthy (exit code {proc.poll()})")


async def in_flight_then_sigterm(base: str, proc: subprocess.Popen, histories) -> tuple[list, bool]:
    """8 requests held by the batcher (max wait 5 s), SIGTERM, then their answers; and whether new
    connections were refused meanwhile."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        posts = [asyncio.ensure_future(client.post("/recommend", json={"history": h, "k": 20})) for h in histories]
        for _ in range(100):  # until the batcher holds all 8 (at most 10 s)
            if metric((await client.get("/metrics")).text, "atspeed_queued_requests") == len(posts):
                break
            await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        refused = False
        for _ in range(40):  # until a new connection is refused (at most 4 s, inside the 5 s wait)
            try:
                async with httpx.AsyncClient(base_url=base, timeout=1) as fresh:
                    await fresh.get("/health")
            except httpx.TransportError:
                refused = True
                break
            await asyncio.sleep(0.1)
        return await asyncio.wait_for(asyncio.gather(*posts), 60), refused


def test_sigterm_answers_requests_in_flight_and_exits_0(synthetic_dir, histories, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "atspeed.serve", "--data", str(synthetic_dir), "--port", str(port),
                             "--max-batch", "64", "--max-wait-ms", "5000", "--threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(base, proc)
        answers, refused = asyncio.run(in_flight_then_sigterm(base, proc, histories[:8]))
        assert [a.status_code for a in answers] == [200] * 8
        assert all(len(a.json()["items"]) == 20 for a in answers)
        assert refused, "the service still took new connections after SIGTERM"
        assert proc.wait(timeout=60) == 0, Path(log.name).read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_a_missing_model_is_one_error_line_and_exit_2(synthetic_dir, tmp_path, capsys):
    empty = tmp_path / "nothing"  # a folder, so the model loader (not the option parser) finds no model
    empty.mkdir()
    with pytest.raises(SystemExit) as exit:
        main(["--data", str(synthetic_dir), "--target", str(empty), "--port", str(free_port())])
    assert exit.value.code == 2
    assert capsys.readouterr().err.startswith("Error: No model at")
