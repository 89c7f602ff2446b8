"""Per-step cost of trie-constrained decoding: vectorised TrieLogitsProcessor vs HF's per-row path.

    python -m atspeed.rec.bench_trie [--data DIR] [--batch 1 4 16] [--beams 20] [--device cpu] [--threads 1]

Rows = B requests x K beams. For each depth of an item ID (0 … L-1) the rows hold random valid
prefixes (as beams do), scores are random; both processors see the same inputs and must give the
same output. Times are per processor call (one decoding step), median over repeats. Uses Beauty
(../shared/data/beauty from the repo root) when present, else the synthetic catalogue.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

from atspeed.rec.data import load_index
from atspeed.rec.synthetic import generate_dataset
from atspeed.rec.tokenizer import build_tokenizer, item_vocab
from atspeed.rec.trie import TrieLogitsProcessor, build_trie, prefix_allowed_tokens_fn

BEAUTY = Path(__file__).resolve().parents[2] / "../shared/data/beauty"
PROMPT_LEN = 81  # BOS + 20 items x 4 tokens


def catalogue(data: Path) -> tuple[str, dict]:
    if (data / "beauty.index.json").exists():
        return "beauty", load_index(data / "beauty.index.json", allow_duplicate_ids=True)
    return "synthetic", generate_dataset().index


def median_time(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=BEAUTY)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--beams", type=int, default=20)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier timings of tiny ops)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    name, index = catalogue(args.data)
    tokenizer = build_tokenizer(index)
    vocab = item_vocab(tokenizer, index)
    trie = build_trie(vocab.tokens, len(tokenizer)).to(device)
    V, L, K = len(tokenizer), vocab.id_length, args.beams
    eos = tokenizer.eos_token_id
    fast = TrieLogitsProcessor(trie, PROMPT_LEN, eos_token_id=eos)
    hf = PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn(trie, PROMPT_LEN, eos), num_beams=K)
    print(
        f"catalogue: {name}, {len(index)} items, vocab {V}, trie tables {trie.nbytes() / 1e6:.1f} MB, "
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'B':>4} {'rows':>5} {'vectorised ms':>14} {'HF prefix_fn ms':>16} {'HF / vectorised':>16}")
    for B in args.batch:
        N = B * K
        fast_t, hf_t = [], []
        for depth in range(L):  # one call per generation step of an item
            items = vocab.tokens[torch.randint(len(index), (N,))]  # [N, L]
            prompt = torch.randint(4, V, (N, PROMPT_LEN))
            input_ids = torch.cat([prompt, items[:, :depth]], 1).to(device)  # [N, PROMPT_LEN + depth]
            scores = torch.randn(N, V, device=device)
            assert torch.equal(fast(input_ids, scores), hf(input_ids, scores)), "processors disagree"
            fast_t.append(median_time(lambda x=input_ids, s=scores: fast(x, s), args.repeats, device))
            hf_t.append(median_time(lambda x=input_ids, s=scores: hf(x, s), max(3, args.repeats // 4), device))
        f, h = 1e3 * sum(fast_t) / L, 1e3 * sum(hf_t) / L
        print(f"{B:>4} {N:>5} {f:>14.3f} {h:>16.3f} {h / f:>15.1f}x")


if __name__ == "__main__":
    main()
