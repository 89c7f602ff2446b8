"""Draft-alignment losses against hand-computed values on tiny distributions (V = 3 or 4)."""

from __future__ import annotations

import math

import pytest
import torch

from atspeed.align import (
    ALIGN_LOSSES,
    atspeed_r_loss,
    atspeed_s_loss,
    atspeed_s_terms,
    combine,
    rec_loss,
    seqkd_loss,
    tvdkd_loss,
    wordkd_loss,
)

ln = math.log
Q4 = [0.4, 0.3, 0.2, 0.1]  # draft probabilities of the top-k hand cases
P4 = [0.1, 0.2, 0.3, 0.4]  # target probabilities of the top-k hand cases


def logits(*probs: float, grad: bool = False) -> torch.Tensor:
    """[1, 1, V] logits whose softmax is probs (log-probabilities are valid logits)."""
    return torch.tensor(probs, dtype=torch.float64).log().view(1, 1, -1).requires_grad_(grad)


def raw(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, 1, -1).requires_grad_(grad)


def ones_mask(n: int = 1, t: int = 1) -> torch.Tensor:
    return torch.ones(n, t, dtype=torch.bool)


def allow(*flags: int) -> torch.Tensor:
    return torch.tensor(flags, dtype=torch.bool).view(1, 1, -1)


# ---------------------------------------------------------------------------------------------
# values on hand-computed pairs
# ---------------------------------------------------------------------------------------------


def test_atspeed_r_loss_is_half_the_l1_distance_on_a_hand_computed_pair():
    # q = [.5, .25, .25], p = [.25, .25, .5]: 1/2 (.25 + 0 + .25) = .25
    loss = atspeed_r_loss(logits(0.5, 0.25, 0.25), logits(0.25, 0.25, 0.5), ones_mask())
    assert loss.item() == pytest.approx(0.25)


def test_tvdkd_loss_is_the_same_formula_as_atspeed_r_loss():
    torch.manual_seed(0)
    draft, target = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert tvdkd_loss(draft, target, mask).item() == atspeed_r_loss(draft, target, mask).item()


def test_wordkd_loss_is_forward_kl_from_target_to_draft_on_a_hand_computed_pair():
    # p = [.5, .25, .25], q = uniform 1/3:
    # KL(p || q) = .5 ln(.5 * 3) + 2 * .25 ln(.25 * 3) = .5 ln 1.5 + .5 ln .75 = .5 ln(9/8) ~ .0589
    # (the reverse KL(q || p) = 1/3 ln(32/27) ~ .0566 would be a different number)
    loss = wordkd_loss(raw(0.0, 0.0, 0.0), logits(0.5, 0.25, 0.25), ones_mask())
    assert loss.item() == pytest.approx(0.5 * ln(9 / 8))
    assert loss.item() != pytest.approx(ln(32 / 27) / 3)


def test_atspeed_s_loss_with_renormalization_on_a_hand_computed_top_2():
    # q = [.4, .3, .2, .1], p = [.1, .2, .3, .4], S = draft top-2 = {0, 1}.
    # q_S = [.4, .3] / .7 = [4/7, 3/7];  p_S = [.1, .2] / .3 = [1/3, 2/3].
    # RKLD = 4/7 ln((4/7) / (1/3)) + 3/7 ln((3/7) / (2/3)) = 4/7 ln(12/7) + 3/7 ln(9/14)
    # REG  = p_S(s_K = token 1) * H(q_S) = 2/3 * -(4/7 ln(4/7) + 3/7 ln(3/7))
    rkld = 4 / 7 * ln(12 / 7) + 3 / 7 * ln(9 / 14)
    reg = 2 / 3 * -(4 / 7 * ln(4 / 7) + 3 / 7 * ln(3 / 7))
    draft, target = logits(*Q4), logits(*P4)
    terms = atspeed_s_terms(draft, target, ones_mask(), top_k=2)
    assert [t.item() for t in terms] == pytest.approx([rkld, reg])
    assert atspeed_s_loss(draft, target, ones_mask(), top_k=2).item() == pytest.approx(rkld + reg)


def test_atspeed_s_loss_without_renormalization_reads_the_full_probabilities_on_the_top_k():
    # Same pair, S = {0, 1}, q_S = [.4, .3], p_S = [.1, .2] (not summing to 1).
    # RKLD = .4 ln(.4 / .1) + .3 ln(.3 / .2) = .4 ln 4 + .3 ln 1.5
    # REG  = p(token 1) * -(.4 ln .4 + .3 ln .3) = .2 * -(.4 ln .4 + .3 ln .3)
    rkld = 0.4 * ln(4) + 0.3 * ln(1.5)
    reg = 0.2 * -(0.4 * ln(0.4) + 0.3 * ln(0.3))
    terms = atspeed_s_terms(logits(*Q4), logits(*P4), ones_mask(), top_k=2, renormalize=False)
    assert [t.item() for t in terms] == pytest.approx([rkld, reg])


def test_losses_are_the_mean_over_masked_positions():
    # position 0: TVD .25 (the hand pair above); position 1: identical, 0; position 2: masked out.
    draft = torch.cat([logits(0.5, 0.25, 0.25), logits(0.2, 0.3, 0.5), logits(0.9, 0.05, 0.05)], dim=1)
    target = torch.cat([logits(0.25, 0.25, 0.5), logits(0.2, 0.3, 0.5), logits(0.05, 0.05, 0.9)], dim=1)
    mask = torch.tensor([[True, True, False]])
    assert atspeed_r_loss(draft, target, mask).item() == pytest.approx(0.125)


def test_an_empty_mask_gives_zero_not_nan():
    draft = raw(1.0, 2.0, 3.0, grad=True)
    loss = atspeed_s_loss(draft, raw(3.0, 2.0, 1.0), torch.zeros(1, 1, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(draft.grad, torch.zeros_like(draft))


# ---------------------------------------------------------------------------------------------
# identical and one-hot distributions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_fn", [atspeed_r_loss, tvdkd_loss, wordkd_loss])
def test_loss_is_zero_with_zero_gradient_when_draft_equals_target(loss_fn):
    draft = logits(*Q4, grad=True)
    loss = loss_fn(draft, logits(*Q4), ones_mask())
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert draft.grad.abs().max().item() == pytest.approx(0.0, abs=1e-12)


def test_atspeed_s_rkld_is_zero_and_only_the_entropy_term_remains_when_draft_equals_target():
    # q = p = [.4, .3, .2, .1], S = {0, 1}: q_S = p_S = [4/7, 3/7], RKLD = 0,
    # REG = p_S(token 1) * H(q_S) = 3/7 * -(4/7 ln(4/7) + 3/7 ln(3/7))
    rkld, reg = atspeed_s_terms(logits(*Q4), logits(*Q4), ones_mask(), top_k=2)
    assert rkld.item() == pytest.approx(0.0, abs=1e-12)
    assert reg.item() == pytest.approx(3 / 7 * -(4 / 7 * ln(4 / 7) + 3 / 7 * ln(3 / 7)))


def test_atspeed_s_loss_is_zero_for_identical_distributions_with_all_mass_on_one_token():
    # allowed = {1} only: q = p = one-hot(1), S = {1}, q_S = p_S = [1]: RKLD = 0, H(q_S) = 0.
    draft = raw(0.3, 1.0, 2.0, grad=True)
    loss = atspeed_s_loss(draft, raw(0.3, 1.0, 2.0), ones_mask(), allowed=allow(0, 1, 0))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(draft.grad).all()


@pytest.mark.parametrize("name", sorted(ALIGN_LOSSES))
def test_all_mass_on_one_token_gives_zero_loss_and_finite_gradient(name):
    draft = raw(5.0, -1.0, 2.0, grad=True)
    loss = ALIGN_LOSSES[name](draft, raw(0.0, 3.0, 1.0), ones_mask(), allowed=allow(1, 0, 0))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(draft.grad).all()


def test_near_one_hot_disjoint_distributions_give_finite_values():
    # q ~ one-hot(0), p ~ one-hot(1): TVD ~ 1; KL(p || q) ~ 100 (log-ratio of the logits), finite.
    draft, target = raw(100.0, 0.0, 0.0, grad=True), raw(0.0, 100.0, 0.0)
    assert atspeed_r_loss(draft, target, ones_mask()).item() == pytest.approx(1.0)
    for name, loss_fn in ALIGN_LOSSES.items():
        loss = loss_fn(draft, target, ones_mask())
        (grad,) = torch.autograd.grad(loss, draft)
        assert torch.isfinite(loss), name
        assert torch.isfinite(grad).all(), name


# ---------------------------------------------------------------------------------------------
# allowed masking (-inf logits)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALIGN_LOSSES))
def test_disallowed_tokens_give_a_finite_loss_and_finite_gradient(name):
    draft = raw(1.0, 2.0, 0.5, -1.0, grad=True)
    loss = ALIGN_LOSSES[name](draft, raw(0.0, -2.0, 1.0, 3.0), ones_mask(), allowed=allow(1, 1, 0, 1))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(draft.grad).all()
    assert draft.grad[0, 0, 2].item() == 0.0  # a disallowed token's logit does not matter


@pytest.mark.parametrize("name", sorted(ALIGN_LOSSES))
def test_logits_already_at_minus_inf_on_disallowed_tokens_are_safe(name):
    inf = float("inf")
    draft = raw(1.0, -inf, 0.5, -inf, grad=True)
    loss = ALIGN_LOSSES[name](draft, raw(0.0, -inf, 1.0, -inf), ones_mask(), allowed=allow(1, 0, 1, 0))
    loss.backward()
    assert torch.isfinite(loss)
    assert not torch.isnan(draft.grad).any()


def test_allowed_masking_renormalizes_both_distributions_over_the_allowed_tokens():
    # q = [.4, .3, .2, .1] and p = [.1, .2, .3, .4] restricted to {0, 1}:
    # q = [4/7, 3/7], p = [1/3, 2/3]; TVD = 1/2 (|4/7 - 1/3| + |3/7 - 2/3|) = 4/7 - 1/3 = 5/21
    loss = atspeed_r_loss(logits(*Q4), logits(*P4), ones_mask(), allowed=allow(1, 1, 0, 0))
    assert loss.item() == pytest.approx(5 / 21)


def test_a_masked_out_position_may_have_no_allowed_token():
    draft = torch.zeros(1, 2, 3, requires_grad=True)
    allowed = torch.tensor([[[True, True, False], [False, False, False]]])
    mask = torch.tensor([[True, False]])
    for loss_fn in ALIGN_LOSSES.values():
        loss = loss_fn(draft, torch.randn(1, 2, 3), mask, allowed=allowed)
        (grad,) = torch.autograd.grad(loss, draft)
        assert torch.isfinite(loss)
        assert torch.isfinite(grad).all()


def test_a_counted_position_with_no_allowed_token_is_an_error():
    with pytest.raises(ValueError, match="no token at a masked position"):
        atspeed_r_loss(raw(0.0, 1.0), raw(1.0, 0.0), ones_mask(), allowed=allow(0, 0))


# ---------------------------------------------------------------------------------------------
# masked-out positions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALIGN_LOSSES))
def test_masked_out_positions_do_not_change_the_loss_and_get_zero_gradient(name):
    torch.manual_seed(0)
    draft, target = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    loss_fn = ALIGN_LOSSES[name]

    draft_a = draft.clone().requires_grad_()
    loss_a = loss_fn(draft_a, target, mask)
    loss_a.backward()

    draft_b, target_b = draft.clone(), target.clone()
    draft_b[~mask] = 100 * torch.randn_like(draft_b[~mask])
    target_b[~mask] = float("-inf")  # even a broken row at an ignored position changes nothing
    loss_b = loss_fn(draft_b, target_b, mask)

    assert loss_b.item() == pytest.approx(loss_a.item())
    assert torch.equal(draft_a.grad[~mask], torch.zeros_like(draft_a.grad[~mask]))
    assert draft_a.grad[mask].abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# temperature and top_k
# ---------------------------------------------------------------------------------------------


def test_temperature_divides_the_logits_on_a_hand_computed_case():
    # draft logits [2 ln 3, 0, 0], target uniform (p = 1/3 each).
    # tau = 1: q = [9, 1, 1] / 11, TVD = 9/11 - 1/3 = 16/33
    # tau = 2: logits [ln 3, 0, 0], q = [3, 1, 1] / 5, TVD = 3/5 - 1/3 = 4/15
    draft, target = raw(2 * ln(3), 0.0, 0.0), raw(0.0, 0.0, 0.0)
    assert atspeed_r_loss(draft, target, ones_mask(), temperature=1.0).item() == pytest.approx(16 / 33)
    assert atspeed_r_loss(draft, target, ones_mask(), temperature=2.0).item() == pytest.approx(4 / 15)


@pytest.mark.parametrize("name", sorted(ALIGN_LOSSES))
def test_a_large_temperature_flattens_both_distributions_towards_zero_loss(name):
    draft, target = raw(3.0, 0.0, -2.0, 1.0), raw(-1.0, 2.0, 0.0, 0.5)
    cold = ALIGN_LOSSES[name](draft, target, ones_mask(), temperature=1.0)
    hot = ALIGN_LOSSES[name](draft, target, ones_mask(), temperature=1e4)
    if name == "atspeed-s":  # RKLD -> 0; REG -> p_S(s_K) * ln |S| = 1/4 * ln 4 for the full top-4
        assert hot.item() == pytest.approx(0.25 * ln(4), abs=1e-3)
    else:
        assert hot.item() == pytest.approx(0.0, abs=1e-3)
        assert cold.item() > 0.1


def test_top_k_larger_than_the_allowed_set_is_capped_to_it():
    # allowed = {0, 1}: S = {0, 1} whatever top_k >= 2, so top_k = 20 gives the top-2 hand values
    # (renormalised: q_S = [4/7, 3/7], p_S = [1/3, 2/3]; and restricting to {0, 1} already sums to 1).
    rkld = 4 / 7 * ln(12 / 7) + 3 / 7 * ln(9 / 14)
    reg = 2 / 3 * -(4 / 7 * ln(4 / 7) + 3 / 7 * ln(3 / 7))
    for renormalize in (True, False):
        loss = atspeed_s_loss(
            logits(*Q4), logits(*P4), ones_mask(), top_k=20, allowed=allow(1, 1, 0, 0), renormalize=renormalize
        )
        assert loss.item() == pytest.approx(rkld + reg)


def test_top_k_larger_than_the_vocabulary_is_capped_to_it():
    draft, target = logits(*Q4), logits(*P4)
    assert atspeed_s_loss(draft, target, ones_mask(), top_k=20).item() == pytest.approx(
        atspeed_s_loss(draft, target, ones_mask(), top_k=4).item()
    )


def test_one_sgd_step_under_atspeed_s_reduces_the_reverse_kl_on_the_top_k():
    draft = logits(*Q4, grad=True)
    target = logits(*P4)
    before, _ = atspeed_s_terms(draft, target, ones_mask(), top_k=2)
    atspeed_s_loss(draft, target, ones_mask(), top_k=2).backward()
    with torch.no_grad():
        stepped = draft - 0.5 * draft.grad
    after, _ = atspeed_s_terms(stepped, target, ones_mask(), top_k=2)
    assert after.item() < before.item()


# ---------------------------------------------------------------------------------------------
# cross-entropy losses, combine, registry, errors
# ---------------------------------------------------------------------------------------------


def test_rec_loss_is_the_cross_entropy_of_the_label_ignoring_minus_100():
    # position 0: q = [.5, .25, .25], label 1 -> -ln .25 = ln 4; position 1 ignored.
    draft = torch.cat([logits(0.5, 0.25, 0.25), logits(0.1, 0.1, 0.8)], dim=1)
    labels = torch.tensor([[1, -100]])
    assert rec_loss(draft, labels).item() == pytest.approx(ln(4))


def test_seqkd_loss_is_rec_loss_on_teacher_sequences():
    torch.manual_seed(0)
    draft, labels = torch.randn(2, 3, 4), torch.tensor([[0, 3, -100], [2, 1, 1]])
    assert seqkd_loss(draft, labels).item() == rec_loss(draft, labels).item()


def test_rec_loss_with_every_label_ignored_is_zero_not_nan():
    assert rec_loss(torch.randn(1, 2, 3), torch.full((1, 2), -100)).item() == 0.0


def test_combine_weights_rec_by_one_minus_alpha_and_align_by_alpha():
    rec, align = torch.tensor(2.0), torch.tensor(10.0)
    assert combine(rec, align, 0.0).item() == 2.0
    assert combine(rec, align, 1.0).item() == 10.0
    assert combine(rec, align, 0.7).item() == pytest.approx(0.3 * 2 + 0.7 * 10)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_combine_rejects_alpha_outside_zero_one(alpha):
    with pytest.raises(ValueError, match="alpha"):
        combine(torch.tensor(1.0), torch.tensor(1.0), alpha)


def test_the_registry_maps_every_method_name_to_its_loss():
    assert ALIGN_LOSSES == {
        "atspeed-s": atspeed_s_loss,
        "atspeed-r": atspeed_r_loss,
        "wordkd": wordkd_loss,
        "tvdkd": tvdkd_loss,
    }


@pytest.mark.parametrize("name", sorted(ALIGN_LOSSES))
def test_different_draft_and_target_vocab_sizes_are_an_error(name):
    with pytest.raises(ValueError, match="vocab sizes differ"):
        ALIGN_LOSSES[name](torch.zeros(1, 1, 4), torch.zeros(1, 1, 3), ones_mask())


@pytest.mark.parametrize(
    "mask",
    [torch.ones(1, 1), torch.ones(1, 2, dtype=torch.bool)],
    ids=["float-mask", "wrong-shape-mask"],
)
def test_a_mask_that_is_not_bool_n_by_t_is_an_error(mask):
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        atspeed_r_loss(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), mask)


def test_an_allowed_table_of_the_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match="allowed must be a bool tensor"):
        atspeed_s_loss(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), ones_mask(), allowed=allow(1, 1))


def test_a_non_positive_temperature_is_an_error():
    with pytest.raises(ValueError, match="temperature"):
        wordkd_loss(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), ones_mask(), temperature=0.0)
