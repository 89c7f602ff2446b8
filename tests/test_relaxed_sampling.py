"""Relaxed verification (do_sample=True): beam sampling where the draft proposes and the target
accepts by speculative sampling.

- With one target beam, "accept_any" with one draft beam and "recursive" with several are
  speculative sampling: the output follows the target's own sampling distribution exactly.
- "accept_any" with several draft beams (the paper's rule) over-accepts: it follows its own rule's
  distribution, which is measurably not the target's.

Distribution tests draw a few hundred seeded samples (torch.manual_seed(i) before call i, so every
run is the same) of 2 or 3 new tokens on a 12-token vocabulary, with a peaked target (scaled LM
head) and a draft that disagrees with it a lot, and compare them with the exact distribution
computed from the target's logits by a chi-square goodness-of-fit test (rare cells pooled).
"""

from __future__ import annotations

import functools

import pytest
import torch

from helpers import hf_generate, left_pad, random_prompts
from spec_helpers import (
    accept_any_level_distribution,
    chi_square,
    chi_square_critical,
    model_pair,
    run_sd,
    seeded_prompt,
    sequence_distribution,
    tally,
)

V = 12  # vocabulary: every continuation of 2 tokens is one of 144 cells
SAMPLES = 400
ALPHA = 1e-3  # exact samplers must not be rejected at this level
PROMPT_LEN = 4


def pair():
    """A peaked target and a draft that disagrees with it (total variation ~0.5 on the first token)."""
    return model_pair(seed=0, noise=0.3, vocab_size=V, logit_scale=1.5)


def prompt() -> torch.Tensor:
    return seeded_prompt(PROMPT_LEN, V, seed=1)


@functools.lru_cache(maxsize=None)
def speculative_samples(rule: str, draft_beams: int, steps: int, eos_token_id: int | None = None) -> list[tuple]:
    """SAMPLES seeded one-beam runs: the generated tokens of each (EOS-ended ones padded with 0)."""
    target, draft = pair()
    out = []
    for seed in range(SAMPLES):
        torch.manual_seed(seed)
        result = run_sd(
            target, draft, {"input_ids": prompt()}, K=1, N=draft_beams, gamma=steps - 1, max_new_tokens=steps,
            do_sample=True, top_k=0, eos_token_id=eos_token_id, pad_token_id=0, sampling_verification=rule,
        )
        generated = result["beam_sequences"][0, PROMPT_LEN:].tolist()
        out.append(tuple(generated + [0] * (steps - len(generated))))
    return out


@functools.lru_cache(maxsize=None)
def target_distribution(steps: int) -> torch.Tensor:
    target, _ = pair()
    return sequence_distribution(target, prompt(), steps)


def assert_follows(samples: list[tuple], probs: torch.Tensor) -> None:
    stat, df, p_value = chi_square(tally(samples, V, probs.dim()), probs)
    assert p_value > ALPHA, f"chi-square {stat:.1f} on {df} degrees of freedom: p = {p_value:.2e}"


# ------------------------------------------------------------------ the test harness itself


def test_exact_distribution_is_what_hf_sampling_draws():
    """The oracle and the chi-square test agree with HF's own sampling of the target."""
    target, _ = pair()
    samples = []
    for seed in range(SAMPLES):
        torch.manual_seed(seed)
        out = hf_generate(target, input_ids=prompt(), max_new_tokens=2, do_sample=True, top_k=0, num_beams=1,
                          eos_token_id=None, pad_token_id=0)
        samples.append(tuple(out[0, PROMPT_LEN:].tolist()))
    probs = target_distribution(2)
    assert torch.isclose(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert_follows(samples, probs)


def test_chi_square_test_rejects_the_drafts_distribution():
    """The test has power: SAMPLES draws from the draft's distribution are told apart from the target's."""
    _, draft = pair()
    q = sequence_distribution(draft, prompt(), 2).flatten()
    draws = torch.multinomial(q, SAMPLES, replacement=True, generator=torch.Generator().manual_seed(0))
    samples = [(int(i) // V, int(i) % V) for i in draws]
    stat, df, p_value = chi_square(tally(samples, V, 2), target_distribution(2))
    assert p_value < 1e-12, f"chi-square {stat:.1f} on {df} degrees of freedom"


# ------------------------------------------------------------------ exact with one target beam


def test_accept_any_with_one_draft_beam_samples_the_target_distribution():
    assert_follows(speculative_samples("accept_any", 1, 2), target_distribution(2))


def test_accept_any_with_one_draft_beam_over_two_drafted_levels_samples_the_target_distribution():
    assert_follows(speculative_samples("accept_any", 1, 3), target_distribution(3))


def test_recursive_with_four_draft_beams_samples_the_target_distribution():
    assert_follows(speculative_samples("recursive", 4, 2), target_distribution(2))


def test_recursive_with_four_draft_beams_over_two_drafted_levels_samples_the_target_distribution():
    assert_follows(speculative_samples("recursive", 4, 3), target_distribution(3))


@pytest.mark.parametrize("rule, draft_beams", [("accept_any", 1), ("recursive", 4)])
def test_one_beam_sampling_with_eos_samples_the_targets_ended_sequences(rule, draft_beams):
    """A sampled EOS ends the sequence: [EOS] has the target's probability of EOS first."""
    probs = target_distribution(2).clone()
    eos = int(probs.sum(1).argsort(descending=True)[1])  # the second most likely first token
    ended = probs[eos].sum()
    probs[eos] = 0.0
    probs[eos, 0] = ended  # [EOS] comes back padded with pad_token_id=0
    samples = speculative_samples(rule, draft_beams, 2, eos_token_id=eos)
    assert sum(s[0] == eos for s in samples) > 50, "the test needs many EOS-ended samples"
    assert_follows(samples, probs)


# ------------------------------------------------------------------ the paper's rule with several draft beams


def accept_any_distribution(draft_beams: int) -> torch.Tensor:
    """First token by the paper's rule, second token from the target (gamma = 1)."""
    target, draft = pair()
    p1 = sequence_distribution(target, prompt(), 1)
    q1 = sequence_distribution(draft, prompt(), 1)
    first = accept_any_level_distribution(p1, q1, draft_beams)
    return first[:, None] * (target_distribution(2) / p1[:, None])


def test_accept_any_with_four_draft_beams_drifts_from_the_target_distribution():
    stat, df, _ = chi_square(tally(speculative_samples("accept_any", 4, 2), V, 2), target_distribution(2))
    assert stat > 3 * chi_square_critical(df, 1e-6), f"chi-square {stat:.1f} on {df} degrees of freedom"


def test_accept_any_with_four_draft_beams_follows_the_papers_rule():
    """Four drafts without replacement, each accepted with min(1, p/q), one kept uniformly, else the residual."""
    assert_follows(speculative_samples("accept_any", 4, 2), accept_any_distribution(4))


def test_accept_any_with_one_draft_beam_is_the_papers_rule_too():
    assert torch.allclose(accept_any_distribution(1), target_distribution(2), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ beam sampling outputs


def beam_sample(seed: int, rule: str = "accept_any", K: int = 3, N: int = 6, **kwargs):
    target, draft = model_pair(noise=0.1)
    torch.manual_seed(seed)
    return run_sd(target, draft, left_pad(random_prompts((7, 3), seed=1)), K=K, N=N, gamma=3, max_new_tokens=8,
                  do_sample=True, sampling_verification=rule, **kwargs)


@pytest.mark.parametrize("rule, K, N", [("accept_any", 3, 6), ("recursive", 1, 4)])
def test_same_seed_gives_the_same_output(rule, K, N):
    first, again = beam_sample(7, rule, K, N), beam_sample(7, rule, K, N)
    assert torch.equal(first["beam_sequences"], again["beam_sequences"])
    assert torch.equal(first["beam_scores"], again["beam_scores"])
    assert first["per_round_accepted"] == again["per_round_accepted"]


def test_different_seeds_give_different_outputs():
    outputs = {tuple(beam_sample(seed)["beam_sequences"].flatten().tolist()) for seed in range(5)}
    assert len(outputs) > 1


@pytest.mark.parametrize("eos_token_id", [None, [21, 34]])
def test_returned_sequences_are_sorted_by_score(eos_token_id):
    for seed in range(10):
        scores = beam_sample(seed, eos_token_id=eos_token_id)["beam_scores"].view(2, 3)  # [B, K]
        assert (scores[:, :-1] >= scores[:, 1:]).all(), f"seed {seed}: {scores}"


def test_returned_hypotheses_of_a_request_are_distinct():
    for seed in range(5):
        sequences = beam_sample(seed)["beam_sequences"].view(2, 3, -1)
        for request in sequences:
            assert len({tuple(row.tolist()) for row in request}) == 3


def test_scores_are_the_targets_length_normalised_log_probabilities():
    """Whatever was accepted, a returned hypothesis scores its summed log-probs under the target / its length."""
    target, _ = model_pair(noise=0.1)
    texts = random_prompts((7, 3), seed=1)
    n = max(map(len, texts))
    for seed in range(3):
        out = beam_sample(seed)
        for row, (sequence, score) in enumerate(zip(out["beam_sequences"], out["beam_scores"])):
            text = torch.tensor(texts[row // 3])
            generated = sequence[n:]
            ids = torch.cat((text, generated))[None]
            with torch.no_grad():
                log_probs = torch.log_softmax(target(input_ids=ids).logits[0, len(text) - 1 : -1].float(), -1)
            expected = log_probs.gather(1, generated[:, None]).sum() / len(generated)
            assert torch.isclose(score, expected, rtol=1e-5, atol=1e-5), (seed, row, float(score), float(expected))


@pytest.mark.parametrize("rule, K, N", [("accept_any", 3, 3), ("accept_any", 1, 1)])
def test_identical_draft_with_as_many_draft_beams_accepts_every_level(rule, K, N):
    target, draft = model_pair(noise=0.0)
    for seed in range(3):
        torch.manual_seed(seed)
        out = run_sd(target, draft, left_pad(random_prompts((7, 3), seed=1)), K=K, N=N, gamma=3, max_new_tokens=8,
                     do_sample=True, sampling_verification=rule)
        assert out["ave_accept_rate"] == 1.0, out["per_round_accepted"]


def test_accept_any_never_fills_with_a_node_it_already_accepted():
    """A drafted node whose parent is no current beam maps to beam 0; when it has the token of an
    accepted node under beam 0, it must not hide that node from the exclusion of the fill."""
    from atspeed.decoding.relaxed import DraftLevel, accept_any

    V, K = 4, 2
    log_probs = torch.log_softmax(torch.tensor([[[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 0.0, 0.0]]]), -1)  # [1, K, V]
    running = torch.zeros(1, K)
    # node 0: token 0 under draft node 7 (= beam 0); node 1: token 0 under draft node 9 (no beam)
    level = DraftLevel(tokens=torch.tensor([[0, 0]]), parents=torch.tensor([[7, 9]]),
                       q=torch.full((1, 10, V), 1e-6))
    level.q[0, 7, 0] = 0.1  # q(x) < p(x) for node 0: always accepted, and p - q > 0 there
    beam_node = torch.tensor([[7, 8]])
    for seed in range(50):
        (_, idx), _ = accept_any(log_probs, running, level, beam_node, torch.Generator().manual_seed(seed))
        assert len(set(idx[0].tolist())) == K


def test_accept_any_fills_with_impossible_continuations_when_a_constraint_leaves_too_few():
    """Only 2 tokens are possible and both are drafted and accepted, but K = 3 beams must be kept:
    the third is a -inf candidate (as in beam search), never an error."""
    from atspeed.decoding.relaxed import DraftLevel, accept_any

    V, K = 4, 3
    logits = torch.tensor([0.0, 0.0, -float("inf"), -float("inf")])
    log_probs = torch.log_softmax(logits, -1).expand(1, K, V).clone()
    running = torch.tensor([[0.0, -1e9, -1e9]])  # one live beam, as at the first step
    q = torch.zeros(1, 5, V)
    q[0, 0, :3] = 0.25  # q <= p on tokens 0 and 1: always accepted; token 2 (p = 0): never
    level = DraftLevel(tokens=torch.tensor([[0, 1, 2]]), parents=torch.tensor([[0, 0, 0]]), q=q)
    (scores, idx), all_drafted = accept_any(log_probs, running, level, torch.tensor([[0, 1, 2]]),
                                            torch.Generator().manual_seed(0))
    assert not all_drafted
    assert set(idx[0, :2].tolist()) == {0, 1} and scores[0, 2] < -1e8
