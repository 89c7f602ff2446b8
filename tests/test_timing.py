"""The timing variant: the same speculative beam search as beam_search_by_SD, plus wall-clock times
of the whole call and of its draft / target / verify phases; and the Timer it is built on."""

from __future__ import annotations

import time

import pytest
import torch

from atspeed.beamsd import beam_search_by_SD
from atspeed.beamsd4timing import Timer, beam_search_by_SD_4timing
from helpers import left_pad, random_prompts
from spec_helpers import model_pair, unrelated_draft

TIME_FIELDS = ("time_cost", "draft_time_cost", "target_time_cost", "verify_time_cost")
SETTINGS = dict(max_new_tokens=10, gamma=3, beam_size=4, draft_beam_size=8)


def inputs():
    return left_pad(random_prompts((7, 3), seed=1))


@pytest.mark.parametrize("draft_kind", ["partial", "unrelated"])
def test_timing_variant_returns_what_beam_search_by_SD_returns(draft_kind):
    target, draft = model_pair(noise=0.1)
    if draft_kind == "unrelated":
        draft = unrelated_draft()
    plain = beam_search_by_SD(target, draft, inputs(), **SETTINGS)
    timed = beam_search_by_SD_4timing(target, draft, inputs(), **SETTINGS)
    assert set(timed) == set(plain) | set(TIME_FIELDS)
    assert torch.equal(timed["beam_sequences"], plain["beam_sequences"])
    assert torch.equal(timed["beam_scores"], plain["beam_scores"])
    for key in plain.keys() - {"beam_sequences", "beam_scores"}:
        assert timed[key] == plain[key], key


def test_timing_variant_forwards_generate_kwargs():
    target, draft = model_pair(noise=0.1)
    kwargs = dict(SETTINGS, eos_token_id=[21, 34], length_penalty=0.5, num_return_sequences=2)
    plain = beam_search_by_SD(target, draft, inputs(), **kwargs)
    timed = beam_search_by_SD_4timing(target, draft, inputs(), **kwargs)
    assert torch.equal(timed["beam_sequences"], plain["beam_sequences"])
    assert torch.equal(timed["beam_scores"], plain["beam_scores"])


def test_phase_times_are_non_negative_and_add_up_to_at_most_the_total():
    target, draft = model_pair(noise=0.1)
    out = beam_search_by_SD_4timing(target, draft, inputs(), **SETTINGS)
    times = {key: out[key] for key in TIME_FIELDS}
    assert all(isinstance(t, float) and t >= 0.0 for t in times.values()), times
    assert out["draft_time_cost"] > 0.0 and out["target_time_cost"] > 0.0 and out["verify_time_cost"] > 0.0, times
    assert out["draft_time_cost"] + out["target_time_cost"] + out["verify_time_cost"] <= out["time_cost"], times


def test_one_new_token_spends_no_time_drafting():
    target, draft = model_pair(noise=0.1)
    out = beam_search_by_SD_4timing(target, draft, inputs(), **dict(SETTINGS, max_new_tokens=1))
    assert out["draft_time_cost"] == 0.0 and out["draft_calls"] == 0
    assert out["target_time_cost"] > 0.0


def test_timing_variant_with_sampling_is_reproducible_like_beam_search_by_SD():
    target, draft = model_pair(noise=0.1)
    torch.manual_seed(3)
    plain = beam_search_by_SD(target, draft, inputs(), **SETTINGS, do_sample=True)
    torch.manual_seed(3)
    timed = beam_search_by_SD_4timing(target, draft, inputs(), **SETTINGS, do_sample=True)
    assert torch.equal(timed["beam_sequences"], plain["beam_sequences"])


def test_timer_as_context_manager_measures_the_block():
    with Timer() as timer:
        time.sleep(0.02)
    assert 0.02 <= timer.time_cost < 5.0


def test_timer_starts_at_zero():
    assert Timer().time_cost == 0.0


def test_timer_as_decorator_accumulates_over_calls():
    timer = Timer()

    @timer
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    assert nap(0.01) == 0.01
    once = timer.time_cost
    nap(0.01)
    assert once >= 0.01 and timer.time_cost >= once + 0.01


def test_timer_counts_a_block_that_raises_and_lets_the_error_through():
    timer = Timer()
    with pytest.raises(KeyError):
        with timer:
            time.sleep(0.01)
            raise KeyError("boom")
    assert timer.time_cost >= 0.01
