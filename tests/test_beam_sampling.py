"""Beam sampling (`do_sample=True` with K beams) through tree attention: valid outputs, seeded
reproducibility, and, for a given seed, HF's own beam-sampling result."""

from __future__ import annotations

import pytest
import torch

from atspeed import replace_beam_search_with_TreeAttn
from helpers import (
    FIRST_FREE_TOKEN,
    ForwardRecorder,
    assert_same_generate_output,
    batch,
    ending_tokens,
    fresh_copy,
    hf_generate,
    make_model,
)

B, K, R, NEW = 2, 4, 3, 10


@pytest.fixture(scope="module")
def model():
    return make_model("qwen2", seed=4)


@pytest.fixture(scope="module")
def inputs():
    return batch((7, 3), seed=2)


@pytest.fixture(scope="module")
def eos(model, inputs):
    return ending_tokens(model, inputs, K, 1)


def sample(model, inputs, seed, **kwargs):
    patched = replace_beam_search_with_TreeAttn(fresh_copy(model))
    torch.manual_seed(seed)
    settings = dict(max_new_tokens=NEW, num_beams=K, num_return_sequences=R, do_sample=True,
                    return_dict_in_generate=True, output_scores=True)
    settings.update(kwargs)
    return patched.generate(**inputs, **settings)


@pytest.mark.parametrize("with_eos", [False, True])
def test_beam_sampling_outputs_are_valid(model, inputs, eos, with_eos):
    out = sample(model, inputs, seed=0, eos_token_id=eos if with_eos else None)
    n = inputs["input_ids"].shape[1]
    assert out.sequences.shape[0] == B * R
    assert n < out.sequences.shape[1] <= n + NEW
    assert torch.equal(out.sequences[:, :n], inputs["input_ids"].repeat_interleave(R, dim=0))
    generated = out.sequences[:, n:]
    assert ((generated >= 0) & (generated < model.config.vocab_size)).all()
    scores = out.sequences_scores.view(B, R)
    assert torch.isfinite(scores).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "hypotheses must be sorted by score, best first"
    assert out.beam_indices.shape == (B * R, out.sequences.shape[1] - n)
    for b in range(B):  # beam indices point into this request's own K beams
        rows = out.beam_indices[b * R : (b + 1) * R]
        live = rows[rows >= 0]
        assert ((live >= b * K) & (live < (b + 1) * K)).all()
    assert len(out.scores) >= out.sequences.shape[1] - n and out.scores[0].shape == (B * K, model.config.vocab_size)


def test_beam_sampling_scores_are_the_length_normalised_sum_of_step_log_probs(model, inputs, eos):
    out = sample(model, inputs, seed=1, eos_token_id=eos, length_penalty=1.0)
    transition = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    lengths = (out.beam_indices >= 0).sum(dim=1)
    # An internal consistency check (different float32 summation order), not a comparison with HF.
    torch.testing.assert_close(transition.sum(dim=1) / lengths, out.sequences_scores, rtol=1e-5, atol=1e-5)


def test_beam_sampling_uses_tree_attention(model, inputs):
    patched = replace_beam_search_with_TreeAttn(fresh_copy(model))
    with ForwardRecorder(patched) as calls:
        patched.generate(**inputs, max_new_tokens=4, num_beams=K, do_sample=True)
    assert calls.batch_sizes == {B}


def test_beam_sampling_is_reproducible_with_a_seed(model, inputs, eos):
    first = sample(model, inputs, seed=7, eos_token_id=eos)
    again = sample(model, inputs, seed=7, eos_token_id=eos)
    assert torch.equal(first.sequences, again.sequences)
    assert torch.equal(first.sequences_scores, again.sequences_scores)
    assert torch.equal(first.beam_indices, again.beam_indices)


def test_beam_sampling_depends_on_the_seed(model, inputs):
    results = {tuple(sample(model, inputs, seed=s, temperature=2.0).sequences.flatten().tolist()) for s in range(4)}
    assert len(results) > 1, "four seeds gave the same sample: sampling is not random"


def test_beam_sampling_differs_from_beam_search(model, inputs):
    greedy = sample(model, inputs, seed=0, do_sample=False)
    sampled = [sample(model, inputs, seed=s, temperature=3.0) for s in range(3)]
    assert any(not torch.equal(s.sequences, greedy.sequences) for s in sampled)


@pytest.mark.parametrize(
    "options",
    [{}, {"temperature": 1.7}, {"top_k": 5}, {"top_p": 0.8}, {"length_penalty": 0.0, "early_stopping": True}],
    ids=["plain", "temperature", "top_k", "top_p", "lp0_early_stopping"],
)
def test_beam_sampling_equals_hf_with_the_same_seed(model, inputs, eos, options):
    settings = dict(max_new_tokens=NEW, num_beams=K, num_return_sequences=R, do_sample=True, eos_token_id=eos,
                    return_dict_in_generate=True, output_scores=True, **options)
    for seed in range(4):
        torch.manual_seed(seed)
        ref = hf_generate(model, **inputs, **settings)
        out = sample(model, inputs, seed=seed, **settings)
        assert_same_generate_output(ref, out, R)


def test_beam_sampling_with_min_new_tokens_never_ends_early(model, inputs, eos):
    out = sample(model, inputs, seed=5, eos_token_id=eos, min_new_tokens=6, temperature=1.5)
    n = inputs["input_ids"].shape[1]
    assert not (out.sequences[:, n : n + 6] == eos[0]).any()
    assert (out.sequences[:, n:] >= FIRST_FREE_TOKEN).any()
