"""HF beam search vs tree attention vs speculative beam search, side by side in one process.

    python benchmarks/bench_speculative.py                      # CPU: 4x256 Llama target, 1-layer draft
    python benchmarks/bench_speculative.py --size 1b --device cuda --dtype bfloat16   # GPU (~5 min on an H100)

Columns: wall time of each method (median ms), speedup over HF beam search, target forward calls per
request and accepted levels per round of strict SD ("acc/rnd") and relaxed SD ("relax"), and
whether HF, tree attention and strict SD returned the same sequences ("same"; in bf16 the three
round differently, so "no" there is numerics, not the algorithm: the fp32 check is gpu_check.py).
"adapt" is strict SD with the adaptive draft length; "relaxed" is beam sampling (do_sample=True)
with the paper's accept-any verification.

Draft/target pair with controlled agreement, from random weights (no downloads): draft and target
share width, embeddings and their first layers; the target adds decoder layers whose output
projections (attention o_proj, MLP down_proj) start at zero, so it computes the draft's function at
the cost of a big model. `--noise` adds Gaussian noise of that scale to those projections to make
the two disagree. Recommendation shape: 84-token prompt, 4 new tokens, N = 40, gamma = 3.
"""

from __future__ import annotations

import argparse

import torch

from atspeed.beamsd import beam_search_by_SD
from atspeed.benchmarking import compare
from atspeed.decoding.speculative import DraftSchedule
from atspeed.hf.generate import generate_with_tree_attention
from atspeed.models import SIZES, draft_target_pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.02])
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 3, 5, 10, 20])
    ap.add_argument("--draft-beams", type=int, default=40)
    ap.add_argument("--gamma", type=int, default=3)
    ap.add_argument("--new", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=84)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    dev = args.device
    print(f"torch {torch.__version__}; device {torch.cuda.get_device_name() if dev.startswith('cuda') else 'cpu'}; "
          f"{args.size} pair, {args.dtype}; prompt {args.prompt}, {args.new} new tokens, N={args.draft_beams}, "
          f"gamma={args.gamma}, batch {args.batch}")
    for noise in args.noise:
        target, draft = draft_target_pair(args.size, noise, device=dev, dtype=dtype)
        n_t = sum(p.numel() for p in target.parameters()) / 1e6
        n_d = sum(p.numel() for p in draft.parameters()) / 1e6
        print(f"\nnoise {noise}: target {n_t:.0f}M params ({target.config.num_hidden_layers} layers), "
              f"draft {n_d:.0f}M ({draft.config.num_hidden_layers} layer)")
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(3, target.config.vocab_size, (args.batch, args.prompt), generator=g).to(dev)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        print(f"{'K':>3} {'HF ms':>8} {'tree':>7} {'strict':>7} {'adapt':>7} {'relaxed':>7} | {'x tree':>6} "
              f"{'x strict':>8} {'x adapt':>7} {'x relax':>7} | {'T calls':>7} {'acc/rnd':>7} {'relax':>6} {'same':>5}")
        for K in args.beams:
            common = dict(max_new_tokens=args.new, num_beams=K, num_return_sequences=K, pad_token_id=0,
                          eos_token_id=None, return_dict_in_generate=True)
            schedule = DraftSchedule(args.gamma, adaptive=True, max_gamma=args.gamma)

            def hf():
                return target.generate(**inputs, **common)

            def tree():
                return generate_with_tree_attention(target, always_beam=True, **inputs, **common)

            def strict():
                return beam_search_by_SD(target, draft, inputs, args.new, args.gamma, K, max(K, args.draft_beams),
                                       eos_token_id=None, pad_token_id=0)

            def adaptive():
                return beam_search_by_SD(target, draft, inputs, args.new, args.gamma, K, max(K, args.draft_beams),
                                       schedule=schedule, eos_token_id=None, pad_token_id=0)

            def relaxed():  # beam sampling, the paper's accept-any rule
                return beam_search_by_SD(target, draft, inputs, args.new, args.gamma, K, max(K, args.draft_beams),
                                         do_sample=True, top_k=0, eos_token_id=None, pad_token_id=0)

            methods = (hf, tree, strict, adaptive, relaxed)
            with torch.inference_mode():
                torch.manual_seed(0)
                res = compare({f.__name__: f for f in methods}, args.repeats)
            t = {name: ms for name, (ms, _) in res.items()}
            ref, tr = res["hf"][1].sequences, res["tree"][1].sequences
            sd, rx = res["strict"][1], res["relaxed"][1]
            same = torch.equal(tr, sd["beam_sequences"]) and torch.equal(ref, tr)
            print(f"{K:>3} {t['hf']:>8.1f} {t['tree']:>7.1f} {t['strict']:>7.1f} {t['adaptive']:>7.1f} "
                  f"{t['relaxed']:>7.1f} | {t['hf'] / t['tree']:>5.2f}x {t['hf'] / t['strict']:>7.2f}x "
                  f"{t['hf'] / t['adaptive']:>6.2f}x {t['hf'] / t['relaxed']:>6.2f}x | "
                  f"{sd['target_calls'] / args.batch:>7.2f} {sd['ave_accept_steps']:>7.2f} "
                  f"{rx['ave_accept_steps']:>6.2f} {'yes' if same else 'no':>5}")
        target = draft = None  # free the pair before building the next one
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
