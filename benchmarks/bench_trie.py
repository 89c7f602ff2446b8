"""Per-step cost of trie-constrained decoding: vectorised TrieLogitsProcessor vs HF's per-row path.

    python benchmarks/bench_trie.py [--data DIR] [--batch 1 4 16] [--beams 20] [--device cpu] [--threads 1]

Uses Beauty (../shared/data/beauty next to the repository) when present, else the synthetic
catalogue. The measurement is `atspeed.rec.bench_trie.run` (what `atspeed bench trie` prints).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from atspeed.rec.bench_trie import run

BEAUTY = Path(__file__).resolve().parents[1] / "../shared/data/beauty"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=BEAUTY if BEAUTY.is_dir() else None,
                   help="dataset folder (default: Beauty if present, else the synthetic catalogue)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16], help="requests B (rows = B x K)")
    p.add_argument("--beams", type=int, default=20, help="K")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier timings of tiny ops)")
    args = p.parse_args()
    print(run(args.data, args.batch, args.beams, args.repeats, args.device, args.threads))


if __name__ == "__main__":
    main()
