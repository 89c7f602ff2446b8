"""HF beam search vs tree attention vs speculative beam search, side by side in one process.

    python benchmarks/bench_speculative.py                      # CPU: 4x256 Llama target, 1-layer draft
    python benchmarks/bench_speculative.py --size 1b --device cuda --dtype bfloat16   # GPU (~5 min on an H100)

Draft/target pair with controlled agreement, from random weights (no downloads): draft and target
share width, embeddings and their first layers; the target adds decoder layers whose output
projections (attention o_proj, MLP down_proj) start at zero, so it computes the draft's function at
the cost of a big model. `--noise` adds Gaussian noise of that scale to those projections to make
the two disagree. Recommendation shape: 84-token prompt, 4 new tokens, N = 40, gamma = 3.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from atspeed.beamsd import run_speculative
from atspeed.decoding.speculative import DraftSchedule
from atspeed.hf.generate import generate_with_tree_attention

SIZES = {  # width, MLP, heads, kv heads, draft layers, target layers, vocab
    "cpu": dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=4,
                draft_layers=1, target_layers=4, vocab_size=1024),
    # TinyLlama-1.1B's shape: the target is ~1.1B parameters, the 1-layer draft ~10x cheaper per token
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
               draft_layers=1, target_layers=22, vocab_size=32000),
}


def build_pair(size: str, noise: float, device: str, dtype: torch.dtype, seed: int = 0):
    spec = dict(SIZES[size])
    d_layers, t_layers = spec.pop("draft_layers"), spec.pop("target_layers")
    common = dict(spec, max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    with torch.device(device):
        target = LlamaForCausalLM(LlamaConfig(num_hidden_layers=t_layers, **common)).to(dtype).eval()
        draft = LlamaForCausalLM(LlamaConfig(num_hidden_layers=d_layers, **common)).to(dtype).eval()
    draft.model.embed_tokens.load_state_dict(target.model.embed_tokens.state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    draft.lm_head.load_state_dict(target.lm_head.state_dict())
    with torch.no_grad():
        for i, layer in enumerate(target.model.layers):
            if i < d_layers:
                draft.model.layers[i].load_state_dict(layer.state_dict())
                continue
            for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
                proj.weight.copy_(torch.randn_like(proj.weight) * noise)
    for m in (target, draft):
        m.generation_config.pad_token_id = 0
    return target, draft


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


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
        target, draft = build_pair(args.size, noise, dev, dtype)
        n_t = sum(p.numel() for p in target.parameters()) / 1e6
        n_d = sum(p.numel() for p in draft.parameters()) / 1e6
        print(f"\nnoise {noise}: target {n_t:.0f}M params ({target.config.num_hidden_layers} layers), "
              f"draft {n_d:.0f}M ({draft.config.num_hidden_layers} layer)")
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(3, target.config.vocab_size, (args.batch, args.prompt), generator=g).to(dev)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        print(f"{'K':>3} {'HF ms':>8} {'tree':>7} {'strict':>7} {'adapt':>7} | {'x tree':>6} {'x strict':>8} "
              f"{'x adapt':>7} | {'T calls':>7} {'acc/rnd':>7} {'same':>5}")
        for K in args.beams:
            common = dict(max_new_tokens=args.new, num_beams=K, num_return_sequences=K, pad_token_id=0,
                          eos_token_id=None, return_dict_in_generate=True)
            schedule = DraftSchedule(args.gamma, adaptive=True, max_gamma=args.gamma)

            def hf():
                return target.generate(**inputs, **common)

            def tree():
                return generate_with_tree_attention(target, always_beam=True, **inputs, **common)

            def strict():
                return run_speculative(target, draft, inputs, args.new, args.gamma, K, max(K, args.draft_beams),
                                       eos_token_id=None, pad_token_id=0)

            def adaptive():
                return run_speculative(target, draft, inputs, args.new, args.gamma, K, max(K, args.draft_beams),
                                       schedule=schedule, eos_token_id=None, pad_token_id=0)

            with torch.inference_mode():
                outs = [f() for f in (hf, tree, strict, adaptive)]  # warm-up
                t = {f.__name__: median_ms(f, args.repeats, dev) for f in (hf, tree, strict, adaptive)}
            ref, tr, sd = outs[0].sequences, outs[1].sequences, outs[2]
            same = torch.equal(tr, sd["beam_sequences"]) and torch.equal(ref, tr)
            print(f"{K:>3} {t['hf']:>8.1f} {t['tree']:>7.1f} {t['strict']:>7.1f} {t['adaptive']:>7.1f} | "
                  f"{t['hf'] / t['tree']:>5.2f}x {t['hf'] / t['strict']:>7.2f}x {t['hf'] / t['adaptive']:>6.2f}x | "
                  f"{sd['target_calls'] / args.batch:>7.2f} {sd['ave_accept_steps']:>7.2f} {'yes' if same else 'no':>5}")
        del target, draft
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
