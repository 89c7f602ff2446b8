"""CUDA correctness: tree attention and strict speculative beam search vs HF generate on a GPU.

    python benchmarks/gpu_check.py

fp32 (exact comparison) and bf16 (runs; agreement rate reported, since bf16 rounding differs
between batched copies and a shared tree).
"""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from atspeed.beamsd import beam_search_by_SD, beam_search_by_TreeAttn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def tiny(seed: int, dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=0, eos_token_id=2)
    return LlamaForCausalLM(cfg).to(DEVICE, dtype).eval()


def main() -> None:
    print("device:", torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu")
    for dtype in (torch.float32, torch.bfloat16):
        target = tiny(0, dtype)
        good, noisy = copy.deepcopy(target), tiny(1, dtype)
        agree = total = hf_same = hf_total = 0
        for trial in range(12):
            g = torch.Generator().manual_seed(trial)
            B = 1 + trial % 3
            ids = torch.randint(3, 256, (B, 12 + trial), generator=g)
            mask = torch.ones_like(ids)
            mask[1:, : trial % 5] = 0  # left padding for rows > 0
            inputs = {"input_ids": ids.to(DEVICE), "attention_mask": mask.to(DEVICE)}
            K = [1, 3, 5, 8, 20][trial % 5]
            ref = target.generate(**inputs, max_new_tokens=6, num_beams=K, num_return_sequences=K,
                                  return_dict_in_generate=True, output_scores=True, eos_token_id=2, pad_token_id=0)
            tree = beam_search_by_TreeAttn(
                target, inputs, max_new_tokens=6, beam_size=K, eos_token_id=2, pad_token_id=0
            )
            for draft in (good, noisy):
                sd = beam_search_by_SD(target, draft, inputs, max_new_tokens=6, gamma=3, beam_size=K,
                                       draft_beam_size=max(K, 10), eos_token_id=2, pad_token_id=0)
                total += 1
                agree += torch.equal(sd["beam_sequences"], tree["beam_sequences"])
            if K > 1:
                hf_total += 1
                hf_same += torch.equal(ref.sequences, tree["beam_sequences"])
        print(f"{dtype}: tree attention == HF in {hf_same}/{hf_total} runs; "
              f"strict SD == tree attention in {agree}/{total}")
    print("GPU CHECK OK")


if __name__ == "__main__":
    main()
