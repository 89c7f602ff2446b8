"""Strict speculative beam search (do_sample=False) is lossless: whatever the draft, the output is
exactly the target's beam search (HF generate(num_beams=K) and atspeed's tree-attention beam
search), sequences and scores. The draft only changes the counters (accepted levels, calls).

Drafts used (spec_helpers.model_pair): an identical draft (the target's function exactly), a
partially agreeing one (noise on the target's extra layer) and an unrelated random one.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from atspeed.beamsd import beam_search_by_SD
from atspeed.decoding.speculative import DraftSchedule
from helpers import (
    FIRST_FREE_TOKEN,
    PAD,
    assert_same_beams,
    ending_tokens,
    examples,
    frequent_tokens,
    hf_fill_value,
    left_pad,
    make_model,
    pad_generated,
    per_request,
    random_prompts,
)
from spec_helpers import assert_lossless, fresh, model_pair, run_sd, unrelated_draft

PARTIAL_NOISE = 0.1  # the draft accepts some levels and rejects others


def prompts(lengths=(7, 3), seed: int = 1):
    return left_pad(random_prompts(lengths, seed=seed))


def identical():
    return model_pair(noise=0.0)


def partial():
    return model_pair(noise=PARTIAL_NOISE)


def unrelated():
    target, _ = model_pair()
    return target, unrelated_draft()


def eos_ids(target, inputs, count=1, k=4):
    """EOS ids that really end some of the target's beams for this prompt."""
    return ending_tokens(target, inputs, k, count)


# ------------------------------------------------------------------ any draft, same output


def test_identical_draft_accepts_every_level_and_matches_hf():
    target, draft = identical()
    out = assert_lossless(target, draft, prompts(), K=4, N=4, gamma=3, max_new_tokens=8)
    assert out["ave_accept_rate"] == 1.0
    assert out["per_round_accepted"] == [3, 3]


def test_target_as_its_own_draft_accepts_every_level_and_matches_hf():
    target, _ = identical()
    out = assert_lossless(target, target, prompts(), K=3, N=3, gamma=2, max_new_tokens=9)
    assert out["ave_accept_rate"] == 1.0


def test_unrelated_draft_accepts_nothing_and_still_matches_hf():
    """One token per round: 10 rounds, so both caches are also compacted (every 4 rounds)."""
    target, draft = unrelated()
    out = assert_lossless(target, draft, prompts(), K=4, N=4, gamma=3, max_new_tokens=10, engine="dynamic")
    assert out["total_accept_steps"] == 0 and out["ave_accept_rate"] == 0.0
    assert out["n_run"] == 10 and out["target_calls"] == 10


def test_partially_agreeing_draft_matches_hf():
    target, draft = partial()
    out = assert_lossless(target, draft, prompts(), K=4, N=8, gamma=3, max_new_tokens=16)
    assert 0.0 < out["ave_accept_rate"] < 1.0, out["per_round_accepted"]


@pytest.mark.parametrize("gamma", [1, 2, 3])
@pytest.mark.parametrize("draft_beams", ["K", "2K", 40])
def test_draft_beams_and_draft_length_do_not_change_the_output(draft_beams, gamma):
    target, draft = partial()
    K = 4
    N = {"K": K, "2K": 2 * K}.get(draft_beams, draft_beams)
    inputs = prompts()
    assert_lossless(target, draft, inputs, K=K, N=N, gamma=gamma, max_new_tokens=12,
                    eos_token_id=eos_ids(target, inputs))


@pytest.mark.parametrize("draft_arch", ["gpt2", "qwen3"])
def test_draft_of_another_architecture_matches_hf(draft_arch):
    target, _ = model_pair()
    draft = make_model(draft_arch, seed=3, num_layers=1)
    assert_lossless(target, draft, prompts(), K=3, N=6, gamma=2, max_new_tokens=10)


def test_one_beam_matches_tree_attention_and_hf_greedy():
    target, draft = partial()
    assert_lossless(target, draft, prompts(), K=1, N=3, gamma=3, max_new_tokens=12)


def test_one_beam_with_eos_matches_tree_attention_beam_search():
    target, draft = partial()
    inputs = prompts()
    assert_lossless(target, draft, inputs, K=1, N=2, gamma=2, max_new_tokens=12, eos_token_id=eos_ids(target, inputs))


@pytest.mark.parametrize("num_return_sequences", [1, 3])
def test_fewer_return_sequences_than_beams_match_hf(num_return_sequences):
    target, draft = partial()
    inputs = prompts()
    out = assert_lossless(target, draft, inputs, K=5, N=5, gamma=2, max_new_tokens=10,
                          num_return_sequences=num_return_sequences, eos_token_id=eos_ids(target, inputs))
    assert out["beam_sequences"].shape[0] == 2 * num_return_sequences


def test_long_generation_past_cache_compaction_matches_hf():
    target, draft = partial()
    out = assert_lossless(target, draft, prompts(), K=3, N=6, gamma=2, max_new_tokens=30)
    assert out["n_run"] >= 8, "the test needs enough rounds for several cache compactions"


def test_float32_draft_for_a_float64_target_matches_hf():
    target, draft = partial()
    out = assert_lossless(target, fresh(draft).float(), prompts(), K=3, N=6, gamma=2, max_new_tokens=10)
    assert out["total_accept_steps"] > 0


# ------------------------------------------------------------------ EOS handling


def test_eos_finished_hypotheses_match_hf():
    target, draft = partial()
    inputs = prompts()
    eos = eos_ids(target, inputs)
    out = assert_lossless(target, draft, inputs, K=4, N=8, gamma=3, max_new_tokens=16, eos_token_id=eos)
    assert (out["beam_sequences"][:, inputs["input_ids"].shape[1]:] == eos[0]).any(), "no hypothesis ended with EOS"


def test_several_eos_token_ids_match_hf():
    target, draft = partial()
    inputs = prompts()
    eos = eos_ids(target, inputs, 3)
    assert_lossless(target, draft, inputs, K=5, N=10, gamma=2, max_new_tokens=14, eos_token_id=eos)


@pytest.mark.parametrize("length_penalty", [-1.0, 0.0, 0.5, 2.0])
def test_length_penalty_matches_hf(length_penalty):
    target, draft = partial()
    inputs = prompts()
    assert_lossless(target, draft, inputs, K=4, N=8, gamma=3, max_new_tokens=14,
                    eos_token_id=eos_ids(target, inputs, 2), length_penalty=length_penalty)


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [-0.5, 1.0, 2.0])
def test_early_stopping_matches_hf(early_stopping, length_penalty):
    target, draft = partial()
    inputs = prompts()
    assert_lossless(target, draft, inputs, K=3, N=6, gamma=3, max_new_tokens=14,
                    eos_token_id=eos_ids(target, inputs, 2), early_stopping=early_stopping,
                    length_penalty=length_penalty)


def test_early_stopping_true_ends_the_search_before_max_new_tokens():
    target, draft = partial()
    inputs = prompts((6,))
    out = assert_lossless(target, draft, inputs, K=2, N=4, gamma=3, max_new_tokens=40,
                          eos_token_id=eos_ids(target, inputs, 3, k=2), early_stopping=True)
    assert out["total_accept_tokens"] < 40


def test_eos_as_the_best_first_token_matches_hf():
    """length_penalty=0: a one-token hypothesis [EOS] beats every longer one, in the very first round."""
    target, draft = partial()
    inputs = prompts((5,))
    first = run_sd(target, draft, inputs, K=1, N=1, gamma=1, max_new_tokens=1)["beam_sequences"][0, -1].item()
    out = assert_lossless(target, draft, inputs, K=3, N=6, gamma=3, max_new_tokens=8, eos_token_id=first,
                          pad_token_id=7, length_penalty=0.0)
    best = out["beam_sequences"][0, 5:].tolist()
    assert len(best) > 1 and best == [first] + [7] * (len(best) - 1)


@pytest.mark.parametrize("pad_token_id", [None, PAD, 5])
def test_finished_hypotheses_are_filled_like_hf(pad_token_id):
    target, draft = partial()
    inputs = prompts()
    eos = eos_ids(target, inputs)
    out = assert_lossless(target, draft, inputs, K=5, N=5, gamma=3, max_new_tokens=16, eos_token_id=eos,
                          pad_token_id=pad_token_id)
    fill = hf_fill_value(pad_token_id, eos)
    ended = [row for row in out["beam_sequences"][:, inputs["input_ids"].shape[1]:].tolist()
             if eos[0] in row and row.index(eos[0]) < len(row) - 1]
    assert ended, "the test needs a hypothesis that ends before the longest one"
    for row in ended:
        assert set(row[row.index(eos[0]) + 1:]) == {fill}


def test_eos_from_the_target_generation_config_matches_hf():
    target, draft = partial()
    inputs = prompts()
    target = fresh(target)
    target.generation_config.eos_token_id = eos_ids(target, inputs, 2)
    assert_lossless(target, draft, inputs, K=4, N=6, gamma=2, max_new_tokens=12)


# ------------------------------------------------------------------ logits processors, on both models


class ParityPenalty(LogitsProcessor):
    """Depends on the running sequences: penalises tokens of the last token's parity, boosts one id per step."""

    def __call__(self, input_ids, scores):
        parity = torch.arange(scores.shape[-1]) % 2 == (input_ids[:, -1:] % 2)
        boost = torch.arange(scores.shape[-1]) == (3 * input_ids.shape[1]) % scores.shape[-1]
        return scores - 0.7 * parity + 1.5 * boost


def per_request_prefix(batch_id, ids):
    """A different narrow vocabulary per request and step parity (needs the right num_beams to find batch_id)."""
    return [5, 6, 7 + batch_id, 20 + batch_id, 30] if ids.shape[-1] % 2 else list(range(3, 40))


PROCESSINGS = ["custom logits_processor", "prefix_allowed_tokens_fn", "repetition_penalty", "no_repeat_ngram_size",
               "bad_words_ids", "sequence_bias", "suppress_tokens"]


def processing(name: str, target, inputs) -> dict:
    """Logits processing that changes the target's beams here (token-based ones hit its frequent tokens)."""
    f = frequent_tokens(target, inputs, 4, 3)
    return {
        "custom logits_processor": dict(logits_processor=LogitsProcessorList([ParityPenalty()])),
        "prefix_allowed_tokens_fn": dict(prefix_allowed_tokens_fn=per_request_prefix),
        "repetition_penalty": dict(repetition_penalty=1.5),
        "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
        "bad_words_ids": dict(bad_words_ids=[[f[0]], [f[1], f[2]]]),
        "sequence_bias": dict(sequence_bias={(f[0],): -4.0, (f[1], f[2]): 3.0}),
        "suppress_tokens": dict(suppress_tokens=[f[0], f[1]], begin_suppress_tokens=[f[2]]),
    }[name]


@pytest.mark.parametrize("name", PROCESSINGS)
def test_logits_processing_matches_hf(name):
    target, draft = partial()
    inputs = prompts()
    assert_lossless(target, draft, inputs, K=4, N=8, gamma=3, max_new_tokens=12, **processing(name, target, inputs))


@pytest.mark.parametrize("name", PROCESSINGS)
def test_logits_processing_applies_to_the_draft_too(name):
    """An identical draft with N = K accepts every level only if it drafts under the same processing."""
    target, draft = identical()
    inputs = prompts()
    out = assert_lossless(target, draft, inputs, K=4, N=4, gamma=3, max_new_tokens=12,
                          **processing(name, target, inputs))
    assert out["ave_accept_rate"] == 1.0, out["per_round_accepted"]


@pytest.mark.parametrize("draft_beams", [8, 12])
def test_prefix_allowed_tokens_fn_gets_each_requests_batch_id_in_the_draft_beams(draft_beams):
    """The draft's N beams per request map to the right batch_id: an identical draft accepts every level."""
    target, draft = identical()
    out = assert_lossless(target, draft, prompts((7, 3, 5)), K=4, N=draft_beams, gamma=3, max_new_tokens=12,
                          prefix_allowed_tokens_fn=per_request_prefix)
    assert out["ave_accept_rate"] == 1.0, out["per_round_accepted"]


def test_min_new_tokens_delays_eos_like_hf():
    target, draft = partial()
    inputs = prompts()
    eos = eos_ids(target, inputs)
    out = assert_lossless(target, draft, inputs, K=4, N=8, gamma=3, max_new_tokens=12, min_new_tokens=5,
                          eos_token_id=eos)
    assert not (out["beam_sequences"][:, inputs["input_ids"].shape[1]:][:, :4] == eos[0]).any()


class StopAfterToken(StoppingCriteria):
    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


def test_custom_stopping_criteria_match_hf():
    target, draft = partial()
    inputs = prompts()
    stop = frequent_tokens(target, inputs, 4, 1)[0]
    assert_lossless(target, draft, inputs, K=4, N=8, gamma=3, max_new_tokens=12,
                    stopping_criteria=StoppingCriteriaList([StopAfterToken(stop)]))


# ------------------------------------------------------------------ batches


def test_left_padded_batch_matches_hf_batch():
    target, draft = partial()
    inputs = prompts((9, 2, 5, 1), seed=3)
    assert_lossless(target, draft, inputs, K=4, N=8, gamma=3, max_new_tokens=14, num_return_sequences=3,
                    eos_token_id=eos_ids(target, inputs, 2))


@pytest.mark.parametrize("drafts", [identical, partial, unrelated], ids=["identical", "partial", "unrelated"])
def test_left_padded_batch_rows_equal_each_prompt_alone(drafts):
    target, draft = drafts()
    K, R = 4, 3
    texts = random_prompts((8, 2, 5), seed=5)
    inputs = left_pad(texts)
    eos = eos_ids(target, inputs, 2)
    settings_ = dict(K=K, N=2 * K, gamma=3, max_new_tokens=12, num_return_sequences=R, eos_token_id=eos)
    out = run_sd(target, draft, inputs, **settings_)
    n = inputs["input_ids"].shape[1]
    steps = out["beam_sequences"].shape[1] - n
    fill = hf_fill_value(PAD, eos)
    for b, text in enumerate(texts):
        alone = assert_lossless(target, draft, left_pad([text]), **settings_)
        expected = pad_generated(per_request(alone, 0, R, len(text), K), steps, fill)
        assert_same_beams(expected, per_request(out, b, R, n, K), R)


def test_identical_draft_batch_accepts_every_level():
    target, draft = identical()
    out = assert_lossless(target, draft, prompts((6, 2, 4)), K=3, N=3, gamma=2, max_new_tokens=9)
    assert out["ave_accept_rate"] == 1.0


# ------------------------------------------------------------------ target calls and counters


def test_always_right_draft_generates_four_tokens_in_one_target_call():
    """gamma=3 accepted levels + the bonus token = 4 tokens: one target forward (prompt + tree)."""
    target, draft = identical()
    out = assert_lossless(target, draft, prompts((6,)), K=4, N=4, gamma=3, max_new_tokens=4)
    assert out["target_calls"] == 1 and out["n_run"] == 1
    assert out["per_round_accepted"] == [3]
    assert out["draft_calls"] == 3  # prompt with level 1, then levels 2 and 3


def test_always_right_draft_batch_takes_one_target_call_for_all_requests():
    target, draft = identical()
    out = assert_lossless(target, draft, prompts((6, 1, 3)), K=4, N=4, gamma=3, max_new_tokens=4)
    assert out["target_calls"] == 1


def test_first_target_call_reads_the_prompt_and_every_draft_node():
    """One forward over the prompt (6 tokens) and the draft tree (N * gamma = 4 * 3 nodes); the draft reads
    the prompt with level 0, then levels 1 and 2 (4 nodes each)."""
    target, draft = identical()
    out = run_sd(target, draft, prompts((6,)), K=4, N=4, gamma=3, max_new_tokens=4, engine="dynamic")
    assert out["target_calls"] == 1 and out["target_tokens"] == 6 + 4 * 3
    assert out["draft_calls"] == 3 and out["draft_tokens"] == 6 + 4 + 4


@pytest.mark.parametrize("engine", ["static", "dynamic"])
def test_one_new_token_never_runs_the_draft(engine):
    target, draft = partial()
    out = assert_lossless(target, draft, prompts(), K=3, N=6, gamma=3, max_new_tokens=1, engine=engine)
    assert out["draft_calls"] == 0 and out["target_calls"] == 1


def test_each_round_gains_its_accepted_levels_plus_one_bonus_token():
    target, draft = partial()
    out = assert_lossless(target, draft, prompts(), K=4, N=8, gamma=3, max_new_tokens=16, engine="dynamic")
    accepted = out["per_round_accepted"]
    assert len(accepted) == out["n_run"] == out["target_calls"]
    assert sum(accepted) == out["total_accept_steps"]
    assert out["total_accept_tokens"] == 16 == sum(a + 1 for a in accepted)
    assert out["ave_accept_tokens"] == 16 / out["n_run"]
    assert out["ave_accept_steps"] == sum(accepted) / out["n_run"]


def test_a_round_never_drafts_past_max_new_tokens():
    """gamma=3 with 6 new tokens: 3 levels + bonus, then only 1 level + bonus (rate stays 1.0)."""
    target, draft = identical()
    out = assert_lossless(target, draft, prompts(), K=4, N=4, gamma=3, max_new_tokens=6)
    assert out["per_round_accepted"] == [3, 1] and out["ave_accept_rate"] == 1.0


# ------------------------------------------------------------------ adaptive draft length


def test_adaptive_schedule_with_useless_draft_matches_hf_and_runs_the_draft_less():
    target, draft = unrelated()
    inputs = prompts()
    fixed = assert_lossless(target, draft, inputs, K=4, N=8, gamma=3, max_new_tokens=12)
    adaptive = assert_lossless(target, draft, inputs, K=4, N=8, gamma=3, max_new_tokens=12,
                               schedule=DraftSchedule(3, adaptive=True))
    assert adaptive["draft_calls"] < fixed["draft_calls"]
    assert adaptive["draft_tokens"] < fixed["draft_tokens"]


def test_adaptive_schedule_with_partial_draft_matches_hf():
    target, draft = partial()
    inputs = prompts()
    assert_lossless(target, draft, inputs, K=4, N=8, gamma=3, max_new_tokens=20,
                    schedule=DraftSchedule(3, adaptive=True, probe_every=2), eos_token_id=eos_ids(target, inputs))


def test_adaptive_schedule_with_identical_draft_keeps_drafting():
    target, draft = identical()
    inputs = prompts()
    out = assert_lossless(target, draft, inputs, K=4, N=4, gamma=3, max_new_tokens=12,
                          schedule=DraftSchedule(3, adaptive=True))
    assert out["ave_accept_rate"] == 1.0 and out["target_calls"] == 3


def test_adaptive_schedule_keeps_what_it_learnt_across_calls():
    target, draft = unrelated()
    inputs = prompts()
    schedule = DraftSchedule(3, adaptive=True)
    first = assert_lossless(target, draft, inputs, K=3, N=6, gamma=3, max_new_tokens=8, schedule=schedule)
    assert schedule.gamma == 0
    second = assert_lossless(target, draft, inputs, K=3, N=6, gamma=3, max_new_tokens=8, schedule=schedule)
    assert second["draft_calls"] < first["draft_calls"]


def test_adaptive_schedule_starting_without_a_draft_matches_hf():
    """gamma 0: plain tree attention first; the draft reads the prompt and the tokens so far when it first probes."""
    target, draft = partial()
    out = assert_lossless(target, draft, prompts(), K=3, N=6, gamma=1, max_new_tokens=14,
                          schedule=DraftSchedule(0, adaptive=True, probe_every=2))
    assert out["draft_calls"] > 0


# ------------------------------------------------------------------ function API


def test_settings_come_from_both_generation_configs():
    target, draft = map(fresh, partial())
    inputs = prompts()
    target.generation_config.update(max_new_tokens=6, num_beams=3, num_return_sequences=3)
    draft.generation_config.update(max_new_tokens=2, num_beams=5, num_return_sequences=5)
    out = beam_search_by_SD(target, draft, inputs)
    explicit = run_sd(target, draft, inputs, K=3, N=5, gamma=2, max_new_tokens=6)
    assert torch.equal(out["beam_sequences"], explicit["beam_sequences"])
    assert torch.equal(out["beam_scores"], explicit["beam_scores"])
    assert out["per_round_accepted"] == explicit["per_round_accepted"]
    assert all(a <= 2 for a in out["per_round_accepted"])  # gamma = the draft's max_new_tokens
    assert_lossless(target, draft, inputs, K=3, N=5, gamma=2, max_new_tokens=6)


def test_explicit_arguments_override_generation_configs():
    target, draft = map(fresh, partial())
    inputs = prompts()
    target.generation_config.update(max_new_tokens=9, num_beams=5, num_return_sequences=5)
    draft.generation_config.update(max_new_tokens=3, num_beams=8)
    out = beam_search_by_SD(target, draft, inputs, max_new_tokens=5, gamma=1, beam_size=2, draft_beam_size=3,
                            num_return_sequences=2)
    assert out["beam_sequences"].shape == (2 * 2, inputs["input_ids"].shape[1] + 5)
    assert all(a <= 1 for a in out["per_round_accepted"])


@pytest.mark.parametrize("as_1d", [False, True])
def test_tensor_prompt_matches_hf(as_1d):
    target, draft = partial()
    ids = torch.tensor([[5, 17, 9, 33, 21]])
    out = run_sd(target, draft, ids[0] if as_1d else ids, K=3, N=6, gamma=2, max_new_tokens=6)
    expected = assert_lossless(target, draft, {"input_ids": ids}, K=3, N=6, gamma=2, max_new_tokens=6)
    assert torch.equal(out["beam_sequences"], expected["beam_sequences"])
    assert torch.equal(out["beam_scores"], expected["beam_scores"])


# ------------------------------------------------------------------ random settings


DRAFTS = {"identical": 0.0, "slightly off": 0.05, "partial": PARTIAL_NOISE, "mostly off": 0.3, "unrelated": None}


@st.composite
def requests(draw):
    K = draw(st.integers(1, 4))
    N = draw(st.sampled_from([K, K + 1, 2 * K, 3 * K]))
    draft_kind = draw(st.sampled_from(list(DRAFTS)))
    seed = draw(st.integers(0, 2))
    token = st.integers(FIRST_FREE_TOKEN, 63)
    texts = draw(st.lists(st.lists(token, min_size=1, max_size=7), min_size=1, max_size=3))
    kwargs = dict(
        K=K,
        N=N,
        gamma=draw(st.integers(1, 3)),
        max_new_tokens=draw(st.integers(1, 9)),
        num_return_sequences=draw(st.integers(1, K)),
    )
    if draw(st.booleans()):
        kwargs.update(
            eos_token_id=draw(st.lists(st.sampled_from(_frequent(seed)), min_size=1, max_size=2, unique=True)),
            length_penalty=draw(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0])),
            early_stopping=draw(st.sampled_from([True, False, "never"])),
        )
    if draw(st.booleans()):
        kwargs["schedule"] = DraftSchedule(draw(st.integers(0, 3)), adaptive=True, probe_every=draw(st.integers(1, 3)))
    return seed, draft_kind, texts, kwargs


@functools.lru_cache(maxsize=None)
def _frequent(seed: int) -> list[int]:
    target, _ = model_pair(seed=seed)
    return frequent_tokens(target, prompts((5,), seed=0), 4, 8)


@settings(max_examples=examples(60), deadline=None, derandomize=True)
@given(requests())
def test_random_requests_match_hf_and_tree_attention(request):
    seed, draft_kind, texts, kwargs = request
    noise = DRAFTS[draft_kind]
    target, draft = model_pair(seed=seed, noise=noise or 0.0)
    if noise is None:
        draft = unrelated_draft(seed=50 + seed)
    assert_lossless(target, draft, left_pad(texts), **kwargs)
