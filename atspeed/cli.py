"""Command-line interface: `atspeed --help`."""

from __future__ import annotations

import click
import torch

from atspeed.beamsd import beam_search_by_SD, beam_search_by_TreeAttn
from atspeed.benchmarking import compare
from atspeed.models import draft_target_pair


@click.group()
def main() -> None:
    """atspeed: fast beam search by tree attention and speculative beam search."""


@main.command()
@click.option("--beams", "-k", default=20, show_default=True, help="beam size K (items returned)")
@click.option("--draft-beams", "-n", default=40, show_default=True, help="draft beams N")
@click.option("--gamma", default=3, show_default=True, help="draft length")
@click.option("--new-tokens", default=4, show_default=True, help="tokens to generate (an item ID is 4)")
@click.option("--prompt-len", default=84, show_default=True)
@click.option("--repeats", default=5, show_default=True)
def demo(beams: int, draft_beams: int, gamma: int, new_tokens: int, prompt_len: int, repeats: int) -> None:
    """Side by side on a built-in random model pair (no downloads): HF beam search, tree-attention
    beam search and strict speculative beam search; same outputs, and how long each took."""
    torch.manual_seed(0)
    target, draft = draft_target_pair("cpu", noise=0.0)
    prompt = torch.randint(3, target.config.vocab_size, (1, prompt_len))
    inputs = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}
    click.echo(f"target: random Llama {target.config.num_hidden_layers}x{target.config.hidden_size}; draft: its "
               f"first layer (always agrees). prompt {prompt_len} tokens, K={beams}, {new_tokens} new tokens")
    with torch.inference_mode():
        runs = {
            "HF generate(num_beams=K)": lambda: target.generate(
                **inputs, max_new_tokens=new_tokens, num_beams=beams, num_return_sequences=beams,
                return_dict_in_generate=True, output_scores=True),
            "tree attention": lambda: beam_search_by_TreeAttn(target, inputs, max_new_tokens=new_tokens,
                                                             beam_size=beams),
            "speculative (strict)": lambda: beam_search_by_SD(target, draft, inputs, max_new_tokens=new_tokens,
                                                              gamma=gamma, beam_size=beams,
                                                              draft_beam_size=max(beams, draft_beams)),
        }
        results = compare(runs, repeats)
    hf_ms, hf_out = results["HF generate(num_beams=K)"]
    ref = hf_out.sequences[:, prompt_len:]
    click.echo(f"\n{'method':<26} {'ms':>8} {'speedup':>8}  same top-{beams} as HF")
    for name, (ms, out) in results.items():
        seqs = out.sequences if name.startswith("HF") else out["beam_sequences"]
        same = torch.equal(seqs[:, prompt_len:], ref)
        click.echo(f"{name:<26} {ms:>8.1f} {hf_ms / ms:>7.2f}x  {'yes' if same else 'NO'}")
    sd = results["speculative (strict)"][1]
    click.echo(f"\nspeculative: {sd['n_run']} round(s), {sd['ave_accept_steps']:.2f} accepted levels per round, "
               f"{sd['target_calls']} target forward call(s)")
    click.echo("top-3 continuations (token ids): " + "; ".join(str(r.tolist()) for r in ref[:3]))


if __name__ == "__main__":
    main()
