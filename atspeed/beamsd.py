"""The original package's function API (kept verbatim for existing users).

    from atspeed.beamsd import beam_search_by_TreeAttn
    out = beam_search_by_TreeAttn(model, inputs, max_new_tokens=32, beam_size=5)
    out["beam_sequences"]  # [beam_size, prompt_len + new] (for B prompts: [B * beam_size, ...])
    out["beam_scores"]     # [beam_size]
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import torch
from transformers import LogitsProcessorList

from atspeed.beamsd_replace import replace_beam_search_with_TreeAttn
from atspeed.decoding.checks import check_int
from atspeed.decoding.speculative import DraftSchedule, Hook, _null_hook
from atspeed.hf.checks import check_inputs
from atspeed.hf.generate import generate_with_tree_attention
from atspeed.hf.model import UnsupportedModelError
from atspeed.hf.speculative import generate_speculative


def _setting(name: str, value: Any, config_value: Any, arg_name: str, owner: str = "model") -> Any:
    """An explicit argument, else the generation_config value; positive integers only."""
    value = config_value if value is None else value
    if value is None:
        raise ValueError(f"{arg_name} is not set: pass {arg_name}=... or set {owner}.generation_config.{name}.")
    return check_int(arg_name, value)


def _warn_config_sampling(model: torch.nn.Module, generate_kwargs: dict, role: str, exact: str) -> None:
    """Like generate(), the function API takes do_sample from the model's generation_config when it is not
    passed; many chat checkpoints ship do_sample=True, which turns the exact search into sampling."""
    if "do_sample" not in generate_kwargs and getattr(model.generation_config, "do_sample", False):
        warnings.warn(
            f"{role}.generation_config.do_sample is True, so this samples (as generate() would) instead of running "
            f"{exact}; pass do_sample=False for that.",
            UserWarning,
            stacklevel=3,
        )


def beam_search_by_TreeAttn(
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor] | torch.Tensor,
    max_new_tokens: int | None = None,
    beam_size: int | None = None,
    logits_processor: LogitsProcessorList | None = None,
    prefix_allowed_tokens_fn: Callable[[int, torch.Tensor], list[int]] | None = None,
    engine: str = "auto",
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """Beam search by tree attention. Missing max_new_tokens / beam_size come from model.generation_config.

    Returns {"beam_sequences": [B * beam_size, prompt_len + new], "beam_scores": [B * beam_size],
    "target_calls": forward calls, "engine": which decode ran}. Extra keyword arguments go to generate()
    (eos_token_id, length_penalty...). `engine` ("auto", "static", "dynamic") picks the decode; the
    default runs the static engine wherever it applies.
    """
    _check_hf_model("model", model)
    gc = model.generation_config
    max_new_tokens = _setting("max_new_tokens", max_new_tokens, gc.max_new_tokens, "max_new_tokens")
    beam_size = _setting("num_beams", beam_size, gc.num_beams, "num_beams (beam_size)")
    _warn_config_sampling(model, generate_kwargs, "model", "beam search")
    generate_kwargs.setdefault("num_return_sequences", beam_size)
    out = generate_with_tree_attention(
        model,
        always_beam=True,
        engine=engine,
        step_scores=False,  # only the sequences' scores: no per-step [B * K, V] copies
        **check_inputs(inputs),
        max_new_tokens=max_new_tokens,
        num_beams=beam_size,
        logits_processor=logits_processor,
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
        return_dict_in_generate=True,
        output_scores=True,
        **generate_kwargs,
    )
    return {
        "beam_sequences": out.sequences,
        "beam_scores": out.sequences_scores,
        "target_calls": out.stats["target_calls"],
        "target_tokens": out.stats["target_tokens"],
        "engine": out.stats["engine"],
    }


def _check_hf_model(role: str, model: object) -> None:
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "generation_config"):
        raise UnsupportedModelError(f"{role} must be a Hugging Face causal LM, got {type(model).__name__}.")


def _sd_settings(target, draft, max_new_tokens, gamma, beam_size, draft_beam_size) -> tuple[int, int, int, int]:
    for role, model in (("target_model", target), ("draft_model", draft)):
        _check_hf_model(role, model)
    tgc, dgc = target.generation_config, draft.generation_config
    max_new_tokens = _setting("max_new_tokens", max_new_tokens, tgc.max_new_tokens, "max_new_tokens", "target_model")
    gamma = _setting("max_new_tokens", gamma, dgc.max_new_tokens, "gamma", "draft_model")
    beam_size = _setting("num_beams", beam_size, tgc.num_beams, "beam_size", "target_model")
    draft_beam_size = _setting("num_beams", draft_beam_size, dgc.num_beams, "draft_beam_size", "draft_model")
    return max_new_tokens, gamma, beam_size, draft_beam_size


def beam_search_by_SD(
    target_model: torch.nn.Module,
    draft_model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor] | torch.Tensor,
    max_new_tokens: int | None = None,
    gamma: int | None = None,
    beam_size: int | None = None,
    draft_beam_size: int | None = None,
    logits_processor: LogitsProcessorList | None = None,
    prefix_allowed_tokens_fn: Callable[[int, torch.Tensor], list[int]] | None = None,
    schedule: DraftSchedule | None = None,
    hook: Hook = _null_hook,
    sampling_verification: str = "accept_any",
    engine: str = "auto",
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """Speculative beam search. With do_sample=False (the default unless target_model.generation_config
    says otherwise, as in generate(); a warning says so): strict top-K verification, exactly the
    target's beam search output. With do_sample=True: beam sampling with relaxed verification,
    `sampling_verification` = "accept_any" (the paper's rule) or "recursive" (exact, K = 1).

    Settings default to target_model.generation_config (max_new_tokens, num_beams) and
    draft_model.generation_config (max_new_tokens = gamma, num_beams = N). Returns beam_sequences,
    beam_scores, n_run (rounds), total_accept_steps, ave_accept_steps, ave_accept_rate, and counters
    (target_calls, target_tokens, draft_calls). `schedule=DraftSchedule(gamma, adaptive=True)` adapts
    gamma (keep the object across calls to keep what it learnt); `hook` (phase name -> context
    manager) brackets the draft / target / verify phases: the timing variant uses it. `engine`
    ("auto", "static", "dynamic") picks the decode; the default runs strict verification on the
    static engine wherever it applies (stats: out["engine"]).
    """
    if schedule is not None:  # gamma, if given too, must be the most levels a round of it drafts
        most = max(1, schedule.max_gamma)  # an adaptive schedule at 0 levels probes with one
        if gamma is not None and gamma != most:
            raise ValueError(
                f"gamma={gamma!r} and the schedule (at most {most} levels per round) disagree: pass one, or the same."
            )
        gamma = max(1, schedule.gamma)
    max_new_tokens, gamma, beam_size, draft_beam_size = _sd_settings(
        target_model, draft_model, max_new_tokens, gamma, beam_size, draft_beam_size
    )
    if schedule is None:
        schedule = DraftSchedule(gamma)
    _warn_config_sampling(target_model, generate_kwargs, "target_model", "the exact (strict) speculative beam search")
    for key, use in (("num_beams", "beam_size"), ("max_length", "max_new_tokens")):
        if key in generate_kwargs:
            raise ValueError(f"pass {use}=... to beam_search_by_SD instead of {key}.")
    generate_kwargs.setdefault("num_return_sequences", beam_size)
    out = generate_speculative(
        target_model,
        draft_model,
        draft_beams=draft_beam_size,
        schedule=schedule,
        logits_processor=logits_processor,
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
        hook=hook,
        sampling_verification=sampling_verification,
        engine=engine,
        **check_inputs(inputs),
        max_new_tokens=max_new_tokens,
        num_beams=beam_size,
        **generate_kwargs,
    )
    stats = out.stats
    n_run = stats["n_run"]
    return {
        "beam_sequences": out.sequences,
        "beam_scores": out.sequences_scores,
        "n_run": n_run,
        "total_accept_steps": stats["total_accept_steps"],
        "ave_accept_steps": stats["total_accept_steps"] / n_run,
        "ave_accept_rate": stats["total_accept_steps"] / max(1, stats["drafted_levels"]),
        "total_accept_tokens": stats["steps"],
        "ave_accept_tokens": stats["steps"] / n_run,
        "target_calls": stats["target_calls"],
        "target_tokens": stats["target_tokens"],
        "draft_calls": stats["draft_calls"],
        "draft_tokens": stats["draft_tokens"],
        "per_round_accepted": stats["per_round_accepted"],
        "per_request_accepted": stats.get("per_request_accepted"),  # static engine: [B][rounds], -1 = sat out
        "engine": stats["engine"],
    }



__all__ = ["beam_search_by_TreeAttn", "beam_search_by_SD", "replace_beam_search_with_TreeAttn"]
