"""A model whose logits hold NaN or inf gets a clear error naming the step, on every decoding path
(HF generate() returns garbage sequences there without a word). The check reads one flag per decode."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import batch, fresh_copy, make_model

from atspeed.beamsd import beam_search_by_SD, beam_search_by_TreeAttn
from atspeed.decoding.tree_search import FiniteWatch, NonFiniteLogitsError, all_finite


@functools.lru_cache(maxsize=None)
def healthy():
    return make_model("llama", seed=0)


@functools.lru_cache(maxsize=None)
def broken():
    model = fresh_copy(healthy())
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    return model


@pytest.mark.parametrize("engine", ["static", "dynamic"])
def test_tree_attention_names_the_step_with_non_finite_logits(engine):
    with pytest.raises(NonFiniteLogitsError, match=r"non-finite logits \(NaN or inf\) at step 1 of the decode"):
        beam_search_by_TreeAttn(broken(), batch((5, 3)), max_new_tokens=4, beam_size=3, engine=engine)


@pytest.mark.parametrize("engine", ["static", "dynamic"])
def test_speculative_names_the_round_with_non_finite_target_logits(engine):
    with pytest.raises(NonFiniteLogitsError, match="at round 1 of the decode"):
        beam_search_by_SD(
            broken(), healthy(), batch((5, 3)), max_new_tokens=4, gamma=2, beam_size=3, draft_beam_size=4, engine=engine
        )


def test_non_finite_logits_error_is_a_value_error():
    """So that the CLI shows it as one `Error:` line."""
    assert issubclass(NonFiniteLogitsError, ValueError)


def test_healthy_model_decodes_without_error():
    out = beam_search_by_TreeAttn(healthy(), batch((5, 3)), max_new_tokens=4, beam_size=3)
    assert torch.isfinite(out["beam_scores"]).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("at", [0, 1, 777, 4095])
def test_one_non_finite_logit_anywhere_is_found(bad, at):
    logits = torch.randn(4096)
    logits[at] = bad
    assert not all_finite(logits)


def test_huge_finite_logits_are_finite():
    """Where a sum would overflow to inf, min and max stay finite."""
    assert all_finite(torch.full((8, 1300), 3e38))


def test_no_logits_are_all_finite():
    assert all_finite(torch.empty(0, 1300))


def test_the_watch_names_the_first_step_whose_logits_were_not_finite():
    watch = FiniteWatch("round")
    for bad in (False, False, True, False, True):
        watch.update(torch.randn(3, 5), torch.full((2,), float("nan") if bad else 0.0))
    with pytest.raises(NonFiniteLogitsError, match="at round 3 of the decode"):
        watch.check()


def test_a_watch_of_finite_steps_or_of_none_passes():
    watch = FiniteWatch()
    watch.check()
    watch.update(torch.randn(4, 5))
    watch.check()
