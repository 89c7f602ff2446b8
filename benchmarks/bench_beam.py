"""HF beam search vs tree-attention beam search, side by side in one process.

    python benchmarks/bench_beam.py            # both shapes, K in {1, 5, 10, 20}
    python benchmarks/bench_beam.py --quick    # fewer repeats

Same model, same prompts, interleaved repeats; prints wall-time ratios and KV-cache bytes, and
checks that both produce the same sequences.
"""

from __future__ import annotations

import argparse

import torch

from atspeed.benchmarking import compare
from atspeed.hf.compat import cache_bytes
from atspeed.hf.generate import generate_with_tree_attention
from atspeed.models import bench_model


def run_case(model, prompt, K: int, new: int, use_eos: bool, repeats: int) -> dict:
    kwargs = dict(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new,
        num_beams=K,
        num_return_sequences=K,
        return_dict_in_generate=True,
        output_scores=True,
        eos_token_id=model.config.eos_token_id if use_eos else None,
        pad_token_id=0,
        early_stopping=False,
    )

    def hf():
        return model.generate(**kwargs)

    def tree():  # K = 1 too runs beam search (HF runs greedy search there)
        return generate_with_tree_attention(model, always_beam=True, **kwargs)

    with torch.inference_mode():
        res = compare({"hf": hf, "tree": tree}, repeats)
    (hf_ms, out_hf), (tree_ms, out_tree) = res["hf"], res["tree"]
    same = torch.equal(out_hf.sequences, out_tree.sequences)
    hf_cache = out_hf.get("cache", out_hf.get("past_key_values"))
    hf_bytes = cache_bytes(hf_cache) if hf_cache is not None else 0
    tree_stats = out_tree.stats
    return {
        "K": K,
        "hf_ms": hf_ms,
        "tree_ms": tree_ms,
        "same": same,
        "hf_kv": hf_bytes,
        "tree_kv": tree_stats.get("peak_cache_bytes", 0),
        "gen": out_tree.sequences.shape[1] - prompt.shape[1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10, 20])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    model = bench_model()
    g = torch.Generator().manual_seed(1)
    shapes = {
        "(a) rec: 84-token prompt, 4 new": (torch.randint(3, 1024, (1, 84), generator=g), 4, False, args.beams),
        "(b) text: 32-token prompt, 64 new, EOS": (torch.randint(3, 1024, (1, 32), generator=g), 64, True, args.beams),
        "(c) long: 32-token prompt, 256 new (cache compaction)": (
            torch.randint(3, 1024, (1, 32), generator=g), 256, False, [8]),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          "model: random Llama 4x256, vocab 1024, fp32, CPU")
    for name, (prompt, new, eos, beams) in shapes.items():
        print(f"\n{name}")
        print(f"{'K':>3} {'HF ms':>9} {'tree ms':>9} {'speedup':>8} {'HF KV MB':>9} {'tree KV MB':>10} {'gen':>4} same")
        for K in beams:
            r = run_case(model, prompt, K, new, eos, repeats if new < 256 else 2)
            print(
                f"{r['K']:>3} {r['hf_ms']:>9.1f} {r['tree_ms']:>9.1f} {r['hf_ms'] / r['tree_ms']:>7.2f}x "
                f"{r['hf_kv'] / 2**20:>9.2f} {r['tree_kv'] / 2**20:>10.2f} {r['gen']:>4} {'yes' if r['same'] else 'NO'}"
            )


if __name__ == "__main__":
    main()
