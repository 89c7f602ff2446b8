"""Speculative beam search refuses, with a message saying what to change, any draft or request it
cannot serve, instead of failing deep inside torch or silently doing something else."""

from __future__ import annotations

import pytest
import torch

from atspeed import UnsupportedModelError
from atspeed.beamsd import beam_search_by_SD
from atspeed.decoding.speculative import DraftSchedule
from helpers import left_pad, make_model, random_prompts
from spec_helpers import assert_lossless, fresh, model_pair, run_sd

SETTINGS = dict(K=2, N=4, gamma=2, max_new_tokens=4)


def prompt(length: int = 5):
    return left_pad(random_prompts([length], seed=0))


def test_draft_with_another_vocabulary_size_is_refused():
    target, _ = model_pair()
    draft = make_model("llama", seed=1, vocab_size=80, num_layers=1)
    with pytest.raises(ValueError, match=r"draft and target vocabularies differ \(draft 80 tokens, target 64\)"):
        run_sd(target, draft, prompt(), **SETTINGS)


def test_draft_with_other_special_token_ids_is_refused():
    target = make_model("llama", seed=0, eos_token_id=6)
    draft = make_model("llama", seed=1, num_layers=1, eos_token_id=5)
    with pytest.raises(ValueError, match="eos_token_id is 5 in the draft, 6 in the target"):
        run_sd(target, draft, prompt(), **SETTINGS)


def test_fewer_draft_beams_than_target_beams_are_refused():
    target, draft = model_pair()
    with pytest.raises(ValueError, match=r"draft beams N=2 must be >= target beams K=4"):
        run_sd(target, draft, prompt(), K=4, N=2, gamma=2, max_new_tokens=4)


@pytest.mark.parametrize("gamma", [0, -1, 1.5])
def test_draft_length_that_is_not_a_positive_integer_is_refused(gamma):
    target, draft = model_pair()
    with pytest.raises(ValueError, match=rf"gamma .*must be an integer >= 1, got {gamma}"):
        run_sd(target, draft, prompt(), K=2, N=4, gamma=gamma, max_new_tokens=4)


def test_gamma_that_disagrees_with_the_schedule_is_refused():
    target, draft = model_pair()
    with pytest.raises(ValueError, match=r"gamma=1 and the schedule \(at most 3 levels per round\) disagree"):
        beam_search_by_SD(target, draft, prompt(), max_new_tokens=4, gamma=1, beam_size=2, draft_beam_size=4,
                          schedule=DraftSchedule(3))


def test_a_schedule_alone_sets_gamma():
    target, draft = model_pair()
    settings = dict(max_new_tokens=4, beam_size=2, draft_beam_size=4)
    by_schedule = beam_search_by_SD(target, draft, prompt(), **settings, schedule=DraftSchedule(1))
    assert by_schedule["per_round_accepted"] == beam_search_by_SD(target, draft, prompt(), **settings,
                                                                  gamma=1)["per_round_accepted"]


@pytest.mark.parametrize(("settings", "message"), [
    (dict(gamma=-3, adaptive=True), r"gamma must be an integer >= 0, got -3"),
    (dict(gamma=2.0), r"gamma must be an integer >= 1, got 2\.0"),
    (dict(gamma=3, max_gamma=2), r"max_gamma must be an integer >= gamma \(3\), got 2"),
    (dict(gamma=True), r"gamma must be an integer >= 1, got True"),
])
def test_a_schedule_that_cannot_draft_is_refused_when_made(settings, message):
    with pytest.raises(ValueError, match=message):
        DraftSchedule(**settings)


def test_fixed_schedule_of_zero_levels_is_refused():
    target, draft = model_pair()
    with pytest.raises(ValueError, match=r"gamma .*must be an integer >= 1, got 0"):
        run_sd(target, draft, prompt(), **SETTINGS, schedule=DraftSchedule(0))


def test_draft_on_another_device_is_refused():
    target, draft = model_pair()
    with pytest.raises(ValueError, match="draft is on meta but the target is on cpu"):
        run_sd(target, fresh(draft).to("meta"), prompt(), **SETTINGS)


def test_prompt_and_new_tokens_beyond_the_target_positions_are_refused():
    target, _ = model_pair(max_positions=8)
    _, draft = model_pair()
    with pytest.raises(ValueError, match=r"prompt \(5 tokens\) \+ max_new_tokens \(4\) exceeds the model's maximum "
                                         r"positions \(8\)"):
        run_sd(target, draft, prompt(5), **SETTINGS)


def test_prompt_and_new_tokens_beyond_the_draft_positions_are_refused():
    target, _ = model_pair()
    _, draft = model_pair(max_positions=8)
    with pytest.raises(ValueError, match=r"exceeds the draft's maximum positions \(8\)"):
        run_sd(target, draft, prompt(5), **SETTINGS)


def test_prompt_and_new_tokens_filling_both_position_limits_exactly_are_accepted():
    target, draft = model_pair(max_positions=8)
    out = run_sd(target, draft, prompt(5), K=2, N=4, gamma=2, max_new_tokens=3)
    assert out["beam_sequences"].shape == (2, 8)


def test_the_static_engine_refuses_drafts_deeper_than_the_position_limits():
    """At the exact limit the last round drafts gamma levels past it: only the dynamic path, which
    drafts no deeper than the new tokens left, runs that request; asked for, the engine says why."""
    target, draft = model_pair(max_positions=8)
    with pytest.raises(NotImplementedError, match=r"drafted nodes past max_new_tokens would exceed the models' "
                                                  r"maximum positions"):
        run_sd(target, draft, prompt(5), K=2, N=4, gamma=2, max_new_tokens=3, engine="static")


def test_left_padding_does_not_count_against_the_position_limits():
    target, draft = model_pair(max_positions=8)
    inputs = left_pad(random_prompts([5, 2], seed=0))
    inputs = {k: torch.cat((v.new_zeros(2, 3), v), dim=1) for k, v in inputs.items()}  # 8 columns, 5 real tokens
    out = run_sd(target, draft, inputs, K=2, N=4, gamma=2, max_new_tokens=3)
    assert out["beam_sequences"].shape == (4, 11)


def test_fully_padded_prompt_in_a_batch_is_refused():
    target, draft = model_pair()
    inputs = left_pad(random_prompts([5, 2], seed=0))
    inputs["attention_mask"][1] = 0
    with pytest.raises(ValueError, match="The prompt is empty"):
        run_sd(target, draft, inputs, **SETTINGS)


def test_missing_max_new_tokens_names_the_parameter():
    target, draft = map(fresh, model_pair())
    target.generation_config.max_new_tokens = None
    with pytest.raises(ValueError, match=r"max_new_tokens is not set: pass max_new_tokens="):
        beam_search_by_SD(target, draft, prompt(), gamma=2, beam_size=2, draft_beam_size=4)


def test_missing_gamma_names_the_parameter_and_the_draft_setting():
    target, draft = map(fresh, model_pair())
    draft.generation_config.max_new_tokens = None
    unset = r"gamma is not set: pass gamma=\.\.\. or set draft_model\.generation_config\.max_new_tokens"
    with pytest.raises(ValueError, match=unset):
        beam_search_by_SD(target, draft, prompt(), max_new_tokens=4, beam_size=2, draft_beam_size=4)


def test_unknown_sampling_verification_is_refused():
    target, draft = model_pair()
    with pytest.raises(ValueError, match=r"sampling_verification must be one of \('accept_any', 'recursive'\), "
                                         r"got 'exact'"):
        run_sd(target, draft, prompt(), **SETTINGS, do_sample=True, sampling_verification="exact")


def test_recursive_verification_of_several_beams_is_refused():
    target, draft = model_pair()
    with pytest.raises(NotImplementedError, match=r"recursive.*supports K = 1 only"):
        run_sd(target, draft, prompt(), **SETTINGS, do_sample=True, sampling_verification="recursive")


def test_draft_that_is_not_a_hugging_face_model_is_refused():
    target, _ = model_pair()
    with pytest.raises(UnsupportedModelError, match="draft_model must be a Hugging Face causal LM"):
        run_sd(target, torch.nn.Linear(4, 4), prompt(), **SETTINGS)


def test_more_draft_beams_than_candidates_are_refused():
    target, draft = model_pair()
    with pytest.raises(ValueError, match="130"):
        run_sd(target, draft, prompt(), K=2, N=130, gamma=2, max_new_tokens=4)


def test_speculative_generate_without_its_draft_settings_says_what_to_bind():
    from atspeed.hf.speculative import speculative_generate
    from helpers import batch, make_model

    target = make_model("llama", seed=0)
    with pytest.raises(ValueError, match="speculative_generate needs draft_model, draft_beams, schedule"):
        target.generate(**batch((4,)), max_new_tokens=2, num_beams=2, custom_generate=speculative_generate)


def longrope_model(original_max_positions: int) -> torch.nn.Module:
    """A Llama whose rotary frequencies switch to long factors past `original_max_positions` tokens."""
    import transformers

    rope = dict(rope_type="longrope", short_factor=[1.0] * 4, long_factor=[4.0, 5.0, 6.0, 7.0])
    if int(transformers.__version__.split(".")[0]) >= 5:
        rope |= dict(rope_theta=1e4, original_max_position_embeddings=original_max_positions)
        return make_model(seed=3, max_positions=64, rope_parameters=rope)
    return make_model(seed=3, max_positions=64, rope_scaling=rope,
                      original_max_position_embeddings=original_max_positions)


def test_a_longrope_model_whose_drafted_nodes_would_cross_its_switch_is_refused():
    """Drafted nodes run gamma positions ahead: they would switch the frequencies before HF does."""
    model = longrope_model(original_max_positions=8)
    with pytest.raises(NotImplementedError, match=r"longrope\) changes its frequencies past 8 tokens"):
        run_sd(model, fresh(model), prompt(5), K=2, N=4, gamma=2, max_new_tokens=2)


def test_a_longrope_model_within_its_switch_is_lossless():
    model = longrope_model(original_max_positions=16)
    assert_lossless(model, fresh(model), prompt(5), K=2, N=4, gamma=2, max_new_tokens=6)


def test_tree_attention_on_a_longrope_model_switches_where_hf_does():
    """What the refusal recommends: a tree step's nodes share one position, so its forwards switch with HF's."""
    from atspeed.beamsd import beam_search_by_TreeAttn

    model, inputs = longrope_model(original_max_positions=8), prompt(5)
    ref = model.generate(**inputs, max_new_tokens=6, num_beams=3, num_return_sequences=3, pad_token_id=0)
    out = beam_search_by_TreeAttn(model, inputs, max_new_tokens=6, beam_size=3)
    assert torch.equal(out["beam_sequences"], ref)
