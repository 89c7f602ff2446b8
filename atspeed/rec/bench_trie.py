"""Per-step cost of trie-constrained decoding: the vectorised TrieLogitsProcessor vs HF's per-row
`prefix_allowed_tokens_fn` path (library code; the script is `benchmarks/bench_trie.py`).

Rows = B requests x K beams. For each depth of an item ID (0 … L-1) the rows hold random valid
prefixes (as beams do), scores are random; both processors see the same inputs and must give the
same output. Times are per processor call (one decoding step): the median of interleaved repeats
(`atspeed.benchmarking.compare`), averaged over the L depths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

from atspeed.benchmarking import compare
from atspeed.rec.data import SemanticID, find_index_file, load_index
from atspeed.rec.synthetic import generate_dataset
from atspeed.rec.tokenizer import build_tokenizer, item_vocab
from atspeed.rec.trie import TrieLogitsProcessor, build_trie, prefix_allowed_tokens_fn

PROMPT_LEN = 81  # BOS + 20 items x 4 tokens


@dataclass(frozen=True)
class TrieStepCost:
    batch: int  # requests B
    rows: int  # B x K beams
    vectorised_ms: float  # TrieLogitsProcessor, per decoding step
    hf_ms: float  # PrefixConstrainedLogitsProcessor with the trie's prefix_allowed_tokens_fn


def catalogue(data: str | os.PathLike | None = None) -> tuple[str, dict[int, SemanticID]]:
    """The item index of the dataset folder `data` (shared IDs allowed: only the trie matters here),
    or the synthetic catalogue when `data` is None."""
    if data is None:
        return "synthetic", generate_dataset().index
    index_file = find_index_file(data)
    return index_file.name.removesuffix(".index.json"), load_index(index_file, allow_duplicate_ids=True)


def trie_step_costs(
    index: Mapping[int, SemanticID],
    batches: Sequence[int] = (1, 4, 16),
    beams: int = 20,
    repeats: int = 20,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[TrieStepCost]:
    """One row per batch size B: ms per step of both processors on B x `beams` rows of random valid prefixes."""
    device = torch.device(device)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(index)
    vocab = item_vocab(tokenizer, index)
    trie = build_trie(vocab.tokens, len(tokenizer)).to(device)
    eos = tokenizer.eos_token_id
    fast = TrieLogitsProcessor(trie, PROMPT_LEN, eos_token_id=eos)
    hf = PrefixConstrainedLogitsProcessor(prefix_allowed_tokens_fn(trie, PROMPT_LEN, eos), num_beams=beams)
    costs = []
    for batch in batches:
        rows = batch * beams
        fast_ms, hf_ms = [], []
        for depth in range(vocab.id_length):  # one call per generation step of an item
            items = vocab.tokens[torch.randint(len(index), (rows,))]  # [rows, L]
            prompt = torch.randint(4, len(tokenizer), (rows, PROMPT_LEN))
            input_ids = torch.cat([prompt, items[:, :depth]], 1).to(device)  # [rows, PROMPT_LEN + depth]
            scores = torch.randn(rows, len(tokenizer), device=device)
            timed = compare({"fast": lambda: fast(input_ids, scores), "hf": lambda: hf(input_ids, scores)}, repeats)
            if not torch.equal(timed["fast"][1], timed["hf"][1]):
                raise AssertionError(f"the processors disagree at B={batch}, depth {depth}")
            fast_ms.append(timed["fast"][0])
            hf_ms.append(timed["hf"][0])
        costs.append(TrieStepCost(batch, rows, sum(fast_ms) / len(fast_ms), sum(hf_ms) / len(hf_ms)))
    return costs


def format_costs(costs: Sequence[TrieStepCost]) -> str:
    lines = [f"{'B':>4} {'rows':>5} {'vectorised ms':>14} {'HF prefix_fn ms':>16} {'HF / vectorised':>16}"]
    for c in costs:
        lines.append(f"{c.batch:>4} {c.rows:>5} {c.vectorised_ms:>14.3f} {c.hf_ms:>16.3f} "
                     f"{c.hf_ms / c.vectorised_ms:>15.1f}x")
    return "\n".join(lines)


def run(
    data: str | os.PathLike | None = None,
    batches: Sequence[int] = (1, 4, 16),
    beams: int = 20,
    repeats: int = 20,
    device: str = "cpu",
    threads: int | None = 1,
) -> str:
    """The whole benchmark as `atspeed bench trie` and `benchmarks/bench_trie.py` print it: a line on the
    catalogue and machine, then the table. `threads`: torch CPU threads (1: steadier timings of tiny ops)."""
    if threads is not None:
        torch.set_num_threads(threads)
    name, index = catalogue(data)
    costs = trie_step_costs(index, batches, beams, repeats, device)
    return (f"catalogue: {name}, {len(index)} items, device {device}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, K = {beams}\n{format_costs(costs)}")

