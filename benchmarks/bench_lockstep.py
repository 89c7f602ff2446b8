"""What lockstep costs a batch: speculative rounds for B requests decoded together vs one at a time.

    python benchmarks/bench_lockstep.py

A batch advances in lockstep (a round ends at the first level any request rejects), so a batch
needs at least as many rounds as its slowest request. This prints, per draft quality, the rounds
of the batch and the mean rounds of the same requests decoded alone.
"""

from __future__ import annotations

import argparse

import torch

from atspeed.beamsd import beam_search_by_SD
from atspeed.models import draft_target_pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--beams", type=int, default=5)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.001, 0.003, 0.01])
    args = ap.parse_args()
    print(f"CPU pair (4x256 target, 1-layer draft), B={args.batch}, K={args.beams}, N=40, gamma=3, "
          f"{args.new} new tokens")
    print(f"{'noise':>6} {'batch rounds':>12} {'alone rounds (mean)':>20} {'lockstep cost':>13}")
    for noise in args.noise:
        target, draft = draft_target_pair("cpu", noise)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 1024, (args.batch, 24), generator=g)
        kw = dict(max_new_tokens=args.new, gamma=3, beam_size=args.beams, draft_beam_size=40, eos_token_id=None)
        with torch.inference_mode():
            batch = beam_search_by_SD(target, draft, {"input_ids": ids}, **kw)
            alone = [beam_search_by_SD(target, draft, {"input_ids": ids[i : i + 1]}, **kw) for i in range(args.batch)]
        mean_alone = sum(a["n_run"] for a in alone) / args.batch
        print(f"{noise:>6} {batch['n_run']:>12} {mean_alone:>20.2f} {batch['n_run'] / mean_alone:>12.2f}x")


if __name__ == "__main__":
    main()
