"""Helpers for the speculative beam search tests: tiny draft/target pairs with controlled agreement,
the lossless check (speculative == tree attention == HF), the target's exact sequence distribution
and a chi-square goodness-of-fit test (scipy-free).

Models are float64 (see helpers.py): HF casts logits to float32, so the speculative forward over a
draft tree and HF's per-beam forward give bit-identical log-probs in practice, and the outputs must
be identical; exact score ties are handled by `helpers.assert_same_beams`, never by a tolerance.
"""

from __future__ import annotations

import copy
import functools
import itertools
from typing import Any, Mapping

import torch

from atspeed.beamsd import beam_search_by_SD, beam_search_by_TreeAttn
from helpers import assert_same_beams, hf_generate, make_model

VOCAB = 64


@functools.lru_cache(maxsize=None)
def _pair(seed: int, noise: float, vocab_size: int, max_positions: int, logit_scale: float):
    target = make_model("llama", seed=seed, vocab_size=vocab_size, num_layers=2, max_positions=max_positions)
    draft = make_model("llama", seed=seed, vocab_size=vocab_size, num_layers=1, max_positions=max_positions)
    # the draft is the target's first layer, embeddings, final norm and head ...
    draft.model.embed_tokens.load_state_dict(target.model.embed_tokens.state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    draft.model.layers[0].load_state_dict(target.model.layers[0].state_dict())
    g = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        target.lm_head.weight.mul_(logit_scale)
        draft.lm_head.load_state_dict(target.lm_head.state_dict())
        # ... and the target's second layer adds `noise` * N(0, 1) output projections (0: same function)
        for proj in (target.model.layers[1].self_attn.o_proj, target.model.layers[1].mlp.down_proj):
            proj.weight.copy_(torch.randn(proj.weight.shape, generator=g, dtype=proj.weight.dtype) * noise)
    return target, draft


def model_pair(
    seed: int = 0, noise: float = 0.0, vocab_size: int = VOCAB, max_positions: int = 256, logit_scale: float = 1.0
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(target, draft), cached: tests must not mutate them (use `copy.deepcopy`).

    The target is 2 layers, the draft is its first layer; the target's second layer has output
    projections of std `noise`, so noise=0 gives a draft computing exactly the target's function
    (draft_target_pair's construction, at the size of a unit test)."""
    return _pair(seed, float(noise), vocab_size, max_positions, float(logit_scale))


@functools.lru_cache(maxsize=None)
def _unrelated(seed: int, vocab_size: int, max_positions: int):
    return make_model("llama", seed=seed, vocab_size=vocab_size, num_layers=1, max_positions=max_positions)


def unrelated_draft(seed: int = 99, vocab_size: int = VOCAB, max_positions: int = 256) -> torch.nn.Module:
    """A random draft that shares nothing with the target but its vocabulary (cached: do not mutate)."""
    return _unrelated(seed, vocab_size, max_positions)


def fresh(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


def run_sd(target, draft, inputs, *, K: int, N: int, gamma: int, max_new_tokens: int, **kwargs) -> dict[str, Any]:
    """beam_search_by_SD with the paper's names; a `schedule` in kwargs sets the draft length instead of gamma."""
    if kwargs.get("schedule") is not None:
        gamma = None
    return beam_search_by_SD(
        target, draft, inputs, max_new_tokens=max_new_tokens, gamma=gamma, beam_size=K, draft_beam_size=N, **kwargs
    )


def assert_lossless(
    target,
    draft,
    inputs: Mapping[str, torch.Tensor],
    *,
    K: int,
    N: int,
    gamma: int,
    max_new_tokens: int,
    num_return_sequences: int | None = None,
    logits_processor=None,
    prefix_allowed_tokens_fn=None,
    schedule=None,
    engine: str = "auto",
    **generate_kwargs,
) -> dict[str, Any]:
    """Speculative beam search must return exactly tree-attention beam search's and HF's beams.

    For K = 1 HF runs greedy search (not beam search), so HF is the oracle only where greedy and
    1-beam search coincide (no EOS, no processors: HF's greedy processes raw logits, beam search
    log-probs), and then for sequences only (greedy has no sequence scores). Returns the
    speculative output."""
    R = num_return_sequences or K
    common = dict(num_return_sequences=R, **generate_kwargs)
    processors = dict(
        logits_processor=copy.deepcopy(logits_processor), prefix_allowed_tokens_fn=prefix_allowed_tokens_fn
    )
    out = run_sd(target, draft, inputs, K=K, N=N, gamma=gamma, max_new_tokens=max_new_tokens, schedule=schedule,
                 engine=engine, **processors, **common)
    tree = beam_search_by_TreeAttn(
        target, inputs, max_new_tokens=max_new_tokens, beam_size=K,
        **dict(processors, logits_processor=copy.deepcopy(logits_processor)), **common
    )
    assert_same_beams(tree, out, R)
    hf_kwargs = dict(inputs, max_new_tokens=max_new_tokens, num_beams=K, **common)
    if logits_processor is not None:
        hf_kwargs["logits_processor"] = copy.deepcopy(logits_processor)
    if prefix_allowed_tokens_fn is not None:
        hf_kwargs["prefix_allowed_tokens_fn"] = prefix_allowed_tokens_fn
    if K > 1:
        ref = hf_generate(target, return_dict_in_generate=True, output_scores=True, **hf_kwargs)
        assert_same_beams(ref, out, R)
    elif _greedy_is_beam_search(target, generate_kwargs, logits_processor, prefix_allowed_tokens_fn):
        ref = hf_generate(target, **hf_kwargs)
        assert torch.equal(ref, out["beam_sequences"]), f"HF greedy:\n{ref}\nspeculative:\n{out['beam_sequences']}"
    return out


def _greedy_is_beam_search(target, generate_kwargs, logits_processor, prefix_allowed_tokens_fn) -> bool:
    eos = generate_kwargs.get("eos_token_id", target.generation_config.eos_token_id)
    plain = set(generate_kwargs) <= {"eos_token_id", "pad_token_id", "num_return_sequences"}
    return eos is None and plain and logits_processor is None and prefix_allowed_tokens_fn is None


# ------------------------------------------------------------------ exact sampling distributions


def seeded_prompt(length: int, vocab_size: int, seed: int = 0, low: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab_size, (1, length), generator=g)


@torch.no_grad()
def sequence_distribution(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Exact probability of every continuation of `prompt` [1, n] by `steps` tokens under plain
    (untruncated, temperature 1) sampling from `model`: a [V] * steps tensor summing to 1.
    Computed from the model's own causal forward on every prefix, in float64."""
    V = model.config.vocab_size
    probs = torch.ones((), dtype=torch.float64)
    prefixes = prompt  # [V**t, n + t]
    for _ in range(steps):
        logits = model(input_ids=prefixes).logits[:, -1].double()
        step = torch.softmax(logits, -1).reshape(*([V] * (prefixes.shape[1] - prompt.shape[1])), V)
        probs = probs[..., None] * step
        rows = prefixes.shape[0]
        prefixes = torch.cat(
            (prefixes.repeat_interleave(V, 0), torch.arange(V).repeat(rows)[:, None]), dim=1
        )
    return probs


def chi_square(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int, float]:
    """Pearson's goodness-of-fit of observed `counts` to `probs` (same shape). Cells with an expected
    count below `min_expected` are pooled into one cell; a pool still below it is merged into the
    smallest kept cell. Returns (statistic, degrees of freedom, p-value); the p-value is the chi-square upper tail
    Q(df/2, x/2), the regularised upper incomplete gamma function."""
    counts, probs = counts.flatten().double(), probs.flatten().double()
    n = counts.sum()
    expected = probs * n
    big = expected >= min_expected
    obs = [counts[big]]
    exp = [expected[big]]
    rest_exp, rest_obs = expected[~big].sum(), counts[~big].sum()
    if rest_exp >= min_expected:
        obs.append(rest_obs[None])
        exp.append(rest_exp[None])
    else:  # pool too small for a cell of its own
        i = int(exp[0].argmin())
        exp[0] = exp[0].clone()
        obs[0] = obs[0].clone()
        exp[0][i] += rest_exp
        obs[0][i] += rest_obs
    o, e = torch.cat(obs), torch.cat(exp)
    stat = float(((o - e) ** 2 / e).sum())
    df = int(o.numel()) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                            torch.tensor(stat / 2, dtype=torch.float64)))
    return stat, df, p_value


def chi_square_critical(df: int, alpha: float) -> float:
    """The statistic whose upper tail is `alpha` (bisection on the p-value)."""
    lo, hi = 0.0, 10.0 * df + 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        half = torch.tensor([df / 2, mid / 2], dtype=torch.float64)
        p = float(torch.special.gammaincc(half[0], half[1]))
        lo, hi = (mid, hi) if p > alpha else (lo, mid)
    return hi


def tally(sequences: list[tuple[int, ...]], vocab_size: int, steps: int) -> torch.Tensor:
    """Counts of sampled continuations as a [V] * steps tensor."""
    counts = torch.zeros([vocab_size] * steps, dtype=torch.float64)
    for seq in sequences:
        counts[tuple(seq)] += 1
    return counts


def accept_any_level_distribution(p: torch.Tensor, q: torch.Tensor, num_drafts: int) -> torch.Tensor:
    """Exact distribution [V] of the token that the paper's relaxed rule ("accept_any") keeps at one
    drafted level with K = 1: `num_drafts` tokens drawn from q without replacement, each accepted
    with probability min(1, p/q); one accepted token uniformly at random, else one from
    normalize(max(p - q, 0)). p, q: [V] float64. Enumerates every ordered draw (V!/(V-n)! of them)."""
    V = p.numel()
    accept = (p / q).clamp(max=1.0)
    residual = (p - q).clamp_min(0.0)
    residual = residual / residual.sum()
    draws = torch.tensor(list(itertools.permutations(range(V), num_drafts)))  # [D, n]
    q_draw = q[draws]  # [D, n]
    left = 1.0 - torch.cumsum(q_draw, dim=1) + q_draw  # mass not yet drawn before each draw
    p_draw = (q_draw / left).prod(dim=1)  # [D]
    patterns = torch.tensor(list(itertools.product((False, True), repeat=num_drafts)))  # [P, n] accepted?
    a = accept[draws][:, None, :]  # [D, 1, n]
    p_pattern = p_draw[:, None] * torch.where(patterns, a, 1.0 - a).prod(dim=-1)  # [D, P]
    kept = patterns.sum(-1)  # [P]
    result = torch.zeros(V, dtype=torch.float64)
    share = p_pattern[:, :, None] * patterns / kept.clamp_min(1)[:, None]  # [D, P, n] uniform among accepted
    result.index_add_(0, draws.flatten(), share.sum(1).flatten())
    return result + p_pattern[:, kept == 0].sum() * residual
