"""Draft-alignment losses: train the draft so the target accepts its beams more often.

Reference: Lin et al., "Efficient Inference for Large Language Model-based Generative
Recommendation" (AtSpeed), ICLR 2025, arXiv 2410.05165, section on draft alignment.

Conventions shared by every loss here:
- Inputs are logits, already aligned position by position: draft_logits[n, t] and
  target_logits[n, t] both predict the token at answer position t (no shift is done here).
  Shapes: draft_logits, target_logits [N, T, V]; mask [N, T] bool (the positions that count, e.g.
  the item-ID tokens of each sequence); allowed [N, T, V] bool or None (the tokens a valid item
  may have there; use .expand() to share one [T, V] table across the batch).
- Disallowed tokens are -inf in BOTH distributions: each is renormalised over its allowed tokens.
- Logits are divided by `temperature` before the softmax; the math runs in at least float32.
- Each loss is the mean over the masked positions of the batch (a token-level mean, as the
  paper's code), 0 when no position is masked. Masked-out positions get exactly zero gradient.
- The target is a teacher: its logits are detached.
- 0 log 0 = 0: a term whose weighting probability is 0 is dropped, so -inf logits never make NaN
  (in the loss or the gradient).

    AtSpeed-S  L = KL(q_S || p_S) + p_S(s_K) * H(q_S)   on S = the draft's top-K tokens
    AtSpeed-R  L = TVD(q, p) = 1/2 sum_v |q(v) - p(v)|
    WordKD     L = KL(p || q)
    TVD-KD     L = TVD(q, p)                             (on ground-truth sequences)
    SeqKD/rec  L = cross-entropy against labels          (teacher beams / ground truth)
    total      L = (1 - alpha) * L_rec + alpha * L_align
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # label value that rec_loss / seqkd_loss skip (the HF / PyTorch convention)


# ---------------------------------------------------------------------------------------------
# checks and shared helpers
# ---------------------------------------------------------------------------------------------


def _check_inputs(
    draft_logits: Tensor, target_logits: Tensor, mask: Tensor, allowed: Tensor | None, temperature: float
) -> None:
    if draft_logits.dim() != 3:
        raise ValueError(f"draft_logits must be [N, T, V], got shape {tuple(draft_logits.shape)}.")
    if target_logits.dim() != 3:
        raise ValueError(f"target_logits must be [N, T, V], got shape {tuple(target_logits.shape)}.")
    if draft_logits.shape[-1] != target_logits.shape[-1]:
        raise ValueError(
            f"draft and target vocab sizes differ: draft V={draft_logits.shape[-1]}, target "
            f"V={target_logits.shape[-1]}. Slice both logits to the same (item-token) vocabulary first."
        )
    if draft_logits.shape != target_logits.shape:
        raise ValueError(
            f"draft_logits {tuple(draft_logits.shape)} and target_logits {tuple(target_logits.shape)} "
            "must have the same [N, T, V] shape."
        )
    if not (draft_logits.is_floating_point() and target_logits.is_floating_point()):
        raise ValueError(
            f"logits must be floating point, got draft {draft_logits.dtype}, target {target_logits.dtype}."
        )
    if mask.dtype != torch.bool or mask.shape != draft_logits.shape[:2]:
        raise ValueError(
            f"mask must be a bool tensor of shape [N, T] = {tuple(draft_logits.shape[:2])}, "
            f"got {mask.dtype} {tuple(mask.shape)}."
        )
    if allowed is not None and (allowed.dtype != torch.bool or allowed.shape != draft_logits.shape):
        raise ValueError(
            f"allowed must be a bool tensor of shape [N, T, V] = {tuple(draft_logits.shape)}, "
            f"got {allowed.dtype} {tuple(allowed.shape)}."
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")


def _effective_allowed(allowed: Tensor | None, mask: Tensor) -> Tensor | None:
    """Rows with no allowed token become unrestricted, so log_softmax stays finite (no NaN gradient);
    that is only legal at masked-out positions, where the row does not count."""
    if allowed is None:
        return None
    empty = ~allowed.any(-1)  # [N, T]
    if bool((empty & mask).any()):
        raise ValueError("allowed has no token at a masked position: every counted position needs at least one.")
    return allowed | empty.unsqueeze(-1)  # [N, T, V]


def _upcast(logits: Tensor) -> Tensor:
    """At least float32: bf16 / fp16 logits lose too much in softmax and log."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _scaled(logits: Tensor, temperature: float, allowed: Tensor | None) -> Tensor:
    """logits / temperature in at least float32, disallowed tokens at -inf."""
    z = _upcast(logits) / temperature  # [N, T, V]
    return z if allowed is None else z.masked_fill(~allowed, float("-inf"))


def _kl(logp_a: Tensor, logp_b: Tensor) -> Tensor:
    """sum_v a(v) (log a(v) - log b(v)) over the last dim, with 0 log 0 = 0.

    torch.where drops the a(v) = 0 terms in both passes; multiplying 0 by -inf would give NaN."""
    keep = torch.isfinite(logp_a)
    return (logp_a.exp() * torch.where(keep, logp_a - logp_b, 0.0)).sum(-1)


def _entropy(logp: Tensor) -> Tensor:
    """-sum_v a(v) log a(v) over the last dim, with 0 log 0 = 0."""
    return -(logp.exp() * torch.where(torch.isfinite(logp), logp, 0.0)).sum(-1)


def _masked_mean(per_position: Tensor, mask: Tensor) -> Tensor:
    """Mean of per_position [N, T] over mask. where(), not mask * x: 0 * NaN would still be NaN."""
    total = torch.where(mask, per_position, 0.0).sum()
    return total / mask.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------
# alignment losses
# ---------------------------------------------------------------------------------------------


def atspeed_s_terms(
    draft_logits: Tensor,
    target_logits: Tensor,
    mask: Tensor,
    *,
    top_k: int = 20,
    temperature: float = 1.0,
    allowed: Tensor | None = None,
    renormalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """The two AtSpeed-S terms (RKLD, REG), each a masked mean; atspeed_s_loss is their sum.

    S = the draft's top-k tokens, k = min(top_k, allowed tokens at that position).
    RKLD = KL(q_S || p_S): reverse KL is mode-seeking, it pulls the draft's top-k onto the target's.
    REG = p_S(s_K) * H(q_S): the draft's entropy over S weighted (no gradient) by the target's
    probability of the draft's K-th ranked token (the paper's density regularisation).
    renormalize=True (atspeed's default): q_S, p_S = softmax(logits / temperature) over S only, the
    probabilities renormalised over S; the loss then ignores how much mass each model puts on S.
    renormalize=False: q_S, p_S = the full (allowed-renormalised) probabilities read on S, not
    summing to 1: the paper code's default (AtSpeedSModel.loss_strict without constrained_softmax).
    p_S(s_K) in REG is the same p_S as in RKLD (as the paper's code). The paper's other variant,
    constrained_softmax (a softmax of the top-k *probabilities* divided by a temperature; its train.sh
    uses T = 0.001), is not implemented: here temperature always divides the logits.
    """
    _check_inputs(draft_logits, target_logits, mask, allowed, temperature)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    allowed = _effective_allowed(allowed, mask)
    zq = _scaled(draft_logits, temperature, allowed)  # [N, T, V]
    zp = _scaled(target_logits.detach(), temperature, allowed)  # [N, T, V]

    k = min(top_k, zq.shape[-1])
    idx = zq.topk(k, dim=-1).indices  # [N, T, k], draft rank order; disallowed (-inf) rank last
    in_s = torch.isfinite(zq.gather(-1, idx))  # [N, T, k]: a prefix of True, min(top_k, allowed) long
    if renormalize:
        logq = F.log_softmax(zq.gather(-1, idx), dim=-1)  # [N, T, k]
        logp = F.log_softmax(zp.gather(-1, idx).masked_fill(~in_s, float("-inf")), dim=-1)  # [N, T, k]
    else:
        logq = F.log_softmax(zq, dim=-1).gather(-1, idx)  # [N, T, k]
        logp = F.log_softmax(zp, dim=-1).gather(-1, idx)  # [N, T, k]

    last = (in_s.sum(-1, keepdim=True) - 1).clamp(min=0)  # [N, T, 1]: position of s_K in S
    p_last = logp.gather(-1, last).squeeze(-1).exp().detach()  # [N, T]: p_S(s_K), a weight
    rkld = _kl(logq, logp)  # [N, T]
    reg = p_last * _entropy(logq)  # [N, T]
    return _masked_mean(rkld, mask), _masked_mean(reg, mask)


def atspeed_s_loss(
    draft_logits: Tensor,
    target_logits: Tensor,
    mask: Tensor,
    *,
    top_k: int = 20,
    temperature: float = 1.0,
    allowed: Tensor | None = None,
    renormalize: bool = True,
) -> Tensor:
    """AtSpeed-S (for strict top-K verification): KL(q_S || p_S) + p_S(s_K) * H(q_S); see atspeed_s_terms."""
    rkld, reg = atspeed_s_terms(
        draft_logits, target_logits, mask,
        top_k=top_k, temperature=temperature, allowed=allowed, renormalize=renormalize,
    )
    return rkld + reg


def atspeed_r_loss(
    draft_logits: Tensor,
    target_logits: Tensor,
    mask: Tensor,
    *,
    temperature: float = 1.0,
    allowed: Tensor | None = None,
) -> Tensor:
    """AtSpeed-R (for relaxed sampling verification): TVD(q, p) = 1/2 sum_v |q(v) - p(v)|.

    The acceptance rate of speculative sampling is sum_v min(q, p) = 1 - TVD, so this maximises it."""
    _check_inputs(draft_logits, target_logits, mask, allowed, temperature)
    allowed = _effective_allowed(allowed, mask)
    q = F.softmax(_scaled(draft_logits, temperature, allowed), dim=-1)  # [N, T, V]
    p = F.softmax(_scaled(target_logits.detach(), temperature, allowed), dim=-1)  # [N, T, V]
    tvd = 0.5 * (q - p).abs().sum(-1)  # [N, T]
    return _masked_mean(tvd, mask)


def tvdkd_loss(
    draft_logits: Tensor,
    target_logits: Tensor,
    mask: Tensor,
    *,
    temperature: float = 1.0,
    allowed: Tensor | None = None,
) -> Tensor:
    """TVD-KD baseline: the same token-level TVD as atspeed_r_loss.

    The two methods differ in the training sequences (ground-truth items here, the target's beams
    for AtSpeed-R), not in the formula, so this just calls atspeed_r_loss."""
    return atspeed_r_loss(draft_logits, target_logits, mask, temperature=temperature, allowed=allowed)


def wordkd_loss(
    draft_logits: Tensor,
    target_logits: Tensor,
    mask: Tensor,
    *,
    temperature: float = 1.0,
    allowed: Tensor | None = None,
) -> Tensor:
    """WordKD baseline: forward KL(p || q) per token (mean-seeking: the draft covers all of p)."""
    _check_inputs(draft_logits, target_logits, mask, allowed, temperature)
    allowed = _effective_allowed(allowed, mask)
    logq = F.log_softmax(_scaled(draft_logits, temperature, allowed), dim=-1)  # [N, T, V]
    logp = F.log_softmax(_scaled(target_logits.detach(), temperature, allowed), dim=-1)  # [N, T, V]
    return _masked_mean(_kl(logp, logq), mask)


# ---------------------------------------------------------------------------------------------
# cross-entropy losses and the combination
# ---------------------------------------------------------------------------------------------


def rec_loss(draft_logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy: mean over labels != -100, 0 if there are none.

    No shift is done: draft_logits[n, t] must already predict labels[n, t] (for a causal LM, pass
    logits[:, :-1] with labels[:, 1:])."""
    if draft_logits.dim() != 3 or labels.shape != draft_logits.shape[:2]:
        raise ValueError(
            f"draft_logits must be [N, T, V] and labels [N, T]; got {tuple(draft_logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if labels.dtype != torch.long:
        raise ValueError(f"labels must be int64 token ids (-100 = ignore), got {labels.dtype}.")
    total = F.cross_entropy(
        _upcast(draft_logits).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def seqkd_loss(draft_logits: Tensor, labels: Tensor) -> Tensor:
    """SeqKD baseline: rec_loss with the target's beam-search outputs as labels (same formula)."""
    return rec_loss(draft_logits, labels)


def combine(rec: Tensor, align: Tensor, alpha: float) -> Tensor:
    """Total loss (1 - alpha) * rec + alpha * align (the paper's code uses alpha = 0.7)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    return (1.0 - alpha) * rec + alpha * align


# Pick an alignment loss by --method. Each takes (draft_logits, target_logits, mask, *,
# temperature=..., allowed=...); atspeed-s also takes top_k and renormalize.
ALIGN_LOSSES: dict[str, Callable[..., Tensor]] = {
    "atspeed-s": atspeed_s_loss,
    "atspeed-r": atspeed_r_loss,
    "wordkd": wordkd_loss,
    "tvdkd": tvdkd_loss,
}
