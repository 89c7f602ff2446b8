"""The scripts prepared for a lent GPU run on this CPU as well: a device session is short and rare,
so the script it runs must not have rotted since it was written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(BENCHMARKS / args[0]), *args[1:]], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_gpu_check_passes_on_cpu():
    out = run_script("gpu_check.py")
    assert "torch.float32: tree attention == HF in 9/9 runs; strict SD == tree attention in 24/24" in out
    assert "GPU CHECK OK" in out


def test_the_gpu_engine_benchmark_checks_and_times_a_small_table_on_cpu():
    out = run_script("gpu_engine.py", "--device", "cpu", "--quick")
    assert "check torch.float32: requests (of 6 random ones) whose lists differ from the dynamic tree path's: " \
           "{'hf': 0, 'graph': 0, 'static': 0, 'sd': 0}" in out
    assert "engine x HF" in out and "none" in out.splitlines()[-1]  # the table's last row: no list differs
