"""The engine on a GPU in one run (about 5 minutes on an H200): correctness first, then speed.

    python benchmarks/gpu_engine.py | tee benchmarks/results/gpu_engine_h200.txt
    python benchmarks/gpu_engine.py --device cpu --quick      # a smoke test of this script

1. Check, tiny random models: in float32 the captured graph, the eager static engine and HF
   generate() return the same lists (random batches, padding, K up to 512, the item trie), and
   static speculative decoding returns the target's beam search; in bfloat16 lists that differ
   from HF's are counted (near-ties round differently in a shared tree than in K copies).
2. First call of a shape (capture included) vs replay, rec shape on the 1.1B target.
3. The engine table on the 1.1B pair (atspeed.models.draft_target_pair("1b")), bf16, rec shape:
   HF generate() (dynamic and static cache), today's tree path, the engine (graph), the engine
   without graphs, and strict SD with an always-right and a noisy draft; the roofline measured in
   the same run. Cells are skipped (and said so) when the time budget runs out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' tiny-model helpers

from helpers import batch, fresh_copy, make_model  # noqa: E402

from atspeed.beamsd import beam_search_by_SD  # noqa: E402
from atspeed.benchmarking import ALL_ENGINE_METHODS, engine_benchmark  # noqa: E402
from atspeed.hf.generate import generate_with_tree_attention  # noqa: E402
from atspeed.models import draft_target_pair  # noqa: E402


def same(ref, out, K: int) -> bool:
    """Same lists: equal sequences, or per request the same set of possible hypotheses (score above
    -1e8) where exactly tied or impossible ones come in another order. Scores are not compared to
    the bit: in float32 a shared tree and K copies sum in different orders."""
    a, b = (x["beam_sequences"] if "beam_sequences" in x else x.sequences for x in (ref, out))
    if torch.equal(a, b):
        return True
    scores = ref["beam_scores"] if "beam_scores" in ref else ref.sequences_scores
    for r in range(0, a.shape[0], K):
        live = (scores[r : r + K] > -1e8).nonzero().flatten() + r
        if {tuple(x) for x in a[live].tolist()} != {tuple(x) for x in b[live].tolist()}:
            return False
    return True


def check(device: str, dtype: torch.dtype, trials: int) -> None:
    from test_static_engine import trie_processor

    target = make_model("llama", seed=0).to(device, dtype)
    draft = fresh_copy(target)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    differ = {"hf": 0, "graph": 0, "static": 0, "sd": 0}
    for trial in range(trials):
        g = torch.Generator().manual_seed(trial)
        lengths = torch.randint(1, 12, (1 + trial % 4,), generator=g).tolist()
        inputs = {k: v.to(device) for k, v in batch(lengths, seed=trial).items()}
        K = [2, 3, 8, 20, 64, 512][trial % 6]
        kw = dict(
            max_new_tokens=4 if trial % 3 else 3,
            num_beams=K,
            num_return_sequences=K,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_scores=True,
        )
        if trial % 3 == 0:
            kw["logits_processor"] = trie_processor(64, inputs["input_ids"].shape[1])
        ref = generate_with_tree_attention(
            target, always_beam=True, engine="dynamic", step_scores=False, **kw, **inputs
        )
        differ["hf"] += not same(target.generate(**inputs, **kw), ref, K)
        for engine in ("graph", "static"):
            if engine == "graph" and device == "cpu":
                continue
            out = generate_with_tree_attention(
                target, always_beam=True, engine=engine, step_scores=False, **kw, **inputs
            )
            differ[engine] += not same(ref, out, K)
        sd = beam_search_by_SD(
            target,
            draft,
            inputs,
            kw["max_new_tokens"],
            3,
            K,
            max(K, 10),
            engine="static",
            pad_token_id=0,
            logits_processor=kw.get("logits_processor"),
        )
        differ["sd"] += not same(ref, sd, K)
    print(
        f"check {dtype}: requests (of {trials} random ones) whose lists differ from the dynamic tree path's: {differ}"
    )


def first_call(device: str, dtype: torch.dtype) -> None:
    target, _ = draft_target_pair("1b" if device.startswith("cuda") else "cpu", device=device, dtype=dtype)
    for B, K in ((1, 20), (64, 256)):
        ids = torch.randint(3, target.config.vocab_size, (B, 84), device=device)
        kw = dict(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=4,
            num_beams=K,
            num_return_sequences=K,
            pad_token_id=0,
            always_beam=True,
            return_dict_in_generate=True,
        )
        times = []
        for _ in range(3):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = generate_with_tree_attention(target, **kw)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(1e3 * (time.perf_counter() - start))
        print(
            f"B={B} K={K}: first call {times[0]:.0f} ms (capture included), then {times[1]:.1f} / {times[2]:.1f} ms; "
            f"engine: {out.stats['engine']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="a few cells only (smoke test)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}; device {args.device}")
    check(args.device, torch.float32, 6 if args.quick else 24)
    if args.device.startswith("cuda"):
        check(args.device, torch.bfloat16, 24)
    if args.device.startswith("cuda") or not args.quick:
        first_call(args.device, torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    if args.quick:
        engine_benchmark("cpu", args.device, "float32", [1], [5], ("hf", "tree", "engine", "engine+sd"), repeats=1)
        return
    engine_benchmark(
        "1b",
        args.device,
        "bfloat16",
        [1, 8, 64],
        [1, 5, 20, 50, 128, 256, 512],
        ALL_ENGINE_METHODS,
        repeats=3,
        hf_max_rows=8192,
        time_budget_s=200,
    )


if __name__ == "__main__":
    main()
