"""The static engine against HF generate() and today's tree path, side by side in one process.

    python benchmarks/bench_engine.py                                   # CPU: 4x256 Llama, B in {1, 16}
    python benchmarks/bench_engine.py --size 1b --device cuda --dtype bfloat16 \\
        --batches 1 8 64 --beams 1 5 20 50 128 256 512                  # GPU: the 1.1B pair

Recommendation shape: 84-token prompt, 4 new tokens. Columns: ms per request of HF generate() as
users call it (K = 1 is greedy search), HF with its static cache, today's tree path (the dynamic,
compacting one), the engine, the engine with strict speculative decoding (an always-right draft
and a noisy one; N = 40, gamma = 3); the engine's users/s and speedup over HF; the roofline (every
weight read once per forward and 2 FLOPs per weight per token, at the matmul and copy rates
measured in this run) and the engine's distance to it; methods whose sequences differ from HF's.
"""

from __future__ import annotations

import argparse

import torch

from atspeed.benchmarking import ALL_ENGINE_METHODS, ENGINE_METHODS, engine_benchmark
from atspeed.models import SIZES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 20, 128, 256])
    ap.add_argument("--methods", nargs="+", default=list(ENGINE_METHODS), choices=ALL_ENGINE_METHODS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-max-rows", type=int, default=4096, help="skip HF above B*K beam rows")
    ap.add_argument("--noise", type=float, default=0.02, help="the noisy draft's disagreement")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine_benchmark(
        args.size,
        args.device,
        args.dtype,
        args.batches,
        args.beams,
        tuple(args.methods),
        repeats=args.repeats,
        hf_max_rows=args.hf_max_rows,
        noise=args.noise,
    )


if __name__ == "__main__":
    main()
