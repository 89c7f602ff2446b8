"""What lockstep costs a batch, and what independent rows (the static engine) win back.

    python benchmarks/bench_lockstep.py

The dynamic path advances a batch in lockstep: a round ends at the first level any request
rejects, so the batch needs more rounds than its requests decoded alone. The static engine lets
each request accept and advance on its own: the batch runs as many rounds as its slowest request,
but every round computes the full static shape for every request. Per draft quality this prints
the rounds of the batch on each path, the mean rounds of the requests decoded alone, and the wall
time of both paths (same lists checked).
"""

from __future__ import annotations

import argparse

import torch

from atspeed.beamsd import beam_search_by_SD
from atspeed.benchmarking import compare
from atspeed.models import draft_target_pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--beams", type=int, default=5)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.001, 0.003, 0.01])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(
        f"CPU pair (4x256 target, 1-layer draft), B={args.batch}, K={args.beams}, N=40, gamma=3, "
        f"{args.new} new tokens, {torch.get_num_threads()} threads"
    )
    print(
        f"{'noise':>6} {'lockstep rounds':>15} {'static rounds':>13} {'alone (mean)':>12} "
        f"{'lockstep ms':>11} {'static ms':>9} {'static x':>8}  same"
    )
    for noise in args.noise:
        target, draft = draft_target_pair("cpu", noise)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 1024, (args.batch, 24), generator=g)
        kw = dict(max_new_tokens=args.new, gamma=3, beam_size=args.beams, draft_beam_size=40, eos_token_id=None)
        with torch.inference_mode():
            res = compare(
                {
                    engine: lambda engine=engine: beam_search_by_SD(
                        target, draft, {"input_ids": ids}, **kw, engine=engine
                    )
                    for engine in ("dynamic", "static")
                },
                args.repeats,
            )
            alone = [beam_search_by_SD(target, draft, {"input_ids": ids[i : i + 1]}, **kw) for i in range(args.batch)]
        (dyn_ms, dyn), (st_ms, st) = res["dynamic"], res["static"]
        same = torch.equal(dyn["beam_sequences"], st["beam_sequences"])
        mean_alone = sum(a["n_run"] for a in alone) / args.batch
        print(
            f"{noise:>6} {dyn['n_run']:>15} {st['n_run']:>13} {mean_alone:>12.2f} {dyn_ms:>11.1f} {st_ms:>9.1f} "
            f"{dyn_ms / st_ms:>7.2f}x  {'yes' if same else 'NO'}"
        )


if __name__ == "__main__":
    main()
