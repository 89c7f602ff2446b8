"""`atspeed bench decode`: the README's example with timings. HF beam search, tree attention and strict
speculative beam search on the built-in random pair (`atspeed.models.draft_target_pair`, no downloads),
side by side in one process: whether each returns HF's top-K, and how long it took."""

from __future__ import annotations

import torch

from atspeed.beamsd import beam_search_by_SD, beam_search_by_TreeAttn
from atspeed.benchmarking import compare
from atspeed.models import draft_target_pair

HF = "HF generate(num_beams=K)"


def decode_benchmark(beams: int = 20, draft_beams: int = 40, gamma: int = 3, new_tokens: int = 4,
                     prompt_len: int = 84, repeats: int = 5) -> str:
    """The comparison as `atspeed bench decode` prints it: a line on the setting, the table (ms, speedup
    over HF, same top-K as HF), and the speculative run's rounds, accepted levels and target calls."""
    torch.manual_seed(0)
    target, draft = draft_target_pair("cpu", noise=0.0)
    prompt = torch.randint(3, target.config.vocab_size, (1, prompt_len))
    inputs = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}
    runs = {
        HF: lambda: target.generate(**inputs, max_new_tokens=new_tokens, num_beams=beams, num_return_sequences=beams,
                                    return_dict_in_generate=True, output_scores=True).sequences,
        "tree attention": lambda: beam_search_by_TreeAttn(target, inputs, max_new_tokens=new_tokens, beam_size=beams),
        "speculative (strict)": lambda: beam_search_by_SD(target, draft, inputs, max_new_tokens=new_tokens,
                                                          gamma=gamma, beam_size=beams,
                                                          draft_beam_size=max(beams, draft_beams)),
    }
    with torch.inference_mode():
        results = compare(runs, repeats)
    hf_ms, reference = results[HF]
    lines = [f"target: random Llama {target.config.num_hidden_layers}x{target.config.hidden_size}; draft: its first "
             f"layer (always agrees). prompt {prompt_len} tokens, K={beams}, {new_tokens} new tokens", "",
             f"{'method':<26} {'ms':>8} {'speedup':>8}  same top-{beams} as HF"]
    for name, (ms, out) in results.items():
        sequences = out if name == HF else out["beam_sequences"]
        same = torch.equal(sequences[:, prompt_len:], reference[:, prompt_len:])
        lines.append(f"{name:<26} {ms:>8.1f} {hf_ms / ms:>7.2f}x  {'yes' if same else 'NO'}")
    sd = results["speculative (strict)"][1]
    lines += ["", f"speculative: {sd['n_run']} round(s), {sd['ave_accept_steps']:.2f} accepted levels per round, "
              f"{sd['target_calls']} target forward call(s)"]
    return "\n".join(lines)
