"""transformers glue for speculative beam search: the target's generate() prepares the config,
processors and stopping criteria; the draft gets the same processors built for its N beams."""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable

import torch
from transformers import GenerationConfig, LogitsProcessorList

from atspeed.decoding.checks import check_int, is_int
from atspeed.decoding.relaxed import VARIANTS
from atspeed.decoding.speculative import DraftSchedule, Hook, _null_hook, speculative_beam_search
from atspeed.decoding.static_speculative import layout, static_speculative_beam_search
from atspeed.hf import compat
from atspeed.hf.engine import CPU_SPECULATIVE_REASON, ENGINES, row_processor, static_speculative_unsupported
from atspeed.hf.generate import TreeBeamOutput, prepare_request, refuse_unsupported
from atspeed.hf.lean import slot_lm, tree_lm
from atspeed.hf.model import UnsupportedModelError, check_tree_support, model_device, positions_exceeded


def check_draft(target: torch.nn.Module, draft: torch.nn.Module, num_beams: int, draft_beams: int, gamma: int) -> None:
    """Clear errors for a draft that cannot serve this target and request."""
    check_tree_support(draft)
    t_vocab = target.get_output_embeddings().weight.shape[0]
    d_vocab = draft.get_output_embeddings().weight.shape[0]
    if t_vocab != d_vocab or target.config.get_text_config().vocab_size != draft.config.get_text_config().vocab_size:
        raise ValueError(
            f"draft and target vocabularies differ (draft {d_vocab} tokens, target {t_vocab}): speculative decoding "
            "needs the same token ids in both."
        )
    for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
        t, d = getattr(target.config, name, None), getattr(draft.config, name, None)
        if t is not None and d is not None and t != d:
            raise ValueError(f"draft and target token maps differ: {name} is {d} in the draft, {t} in the target.")
    if not is_int(draft_beams) or draft_beams < num_beams:
        raise ValueError(f"draft beams N={draft_beams} must be >= target beams K={num_beams} (N-to-K verification).")
    check_int("gamma (draft length)", gamma)
    if draft_beams > num_beams * d_vocab:
        raise ValueError(
            f"draft beams N={draft_beams} exceed the {num_beams} x {d_vocab} continuations a level can have."
        )
    if model_device(draft) != model_device(target):
        raise ValueError(f"draft is on {model_device(draft)} but the target is on {model_device(target)}.")


def speculative_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    draft_model: torch.nn.Module | None = None,
    draft_beams: int | None = None,
    schedule: DraftSchedule | None = None,
    user_processors: LogitsProcessorList | None = None,
    prefix_allowed_tokens_fn: Callable | None = None,
    hook: Hook = _null_hook,
    sampling_verification: str = "accept_any",
    engine: str = "auto",
    **model_kwargs: Any,
) -> TreeBeamOutput:
    """A `custom_generate` decoding method for the target: speculative beam search, strict (lossless)
    when do_sample=False, relaxed verification of beam sampling when do_sample=True. Strict
    verification runs on the static engine wherever it applies (see atspeed.hf.engine); the reason
    it did not is in stats["engine"]. Logits processors must be functions of (input_ids, scores):
    they also run on drafted nodes, so one that counts its calls or keeps other state (HF's
    classifier-free guidance and watermarking are refused) would see a different sequence of calls."""
    gc = generation_config
    missing = [
        name
        for name, value in (("draft_model", draft_model), ("draft_beams", draft_beams), ("schedule", schedule))
        if value is None
    ]
    if missing:
        raise ValueError(
            f"speculative_generate needs {', '.join(missing)}: bind them with functools.partial(speculative_generate, "
            "draft_model=..., draft_beams=N, schedule=DraftSchedule(gamma)), or call atspeed.beamsd.beam_search_by_SD."
        )
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
    if engine == "graph":
        raise NotImplementedError("speculative rounds are not captured as CUDA graphs yet: use engine='static'.")
    refuse_unsupported(model, gc, model_kwargs)
    stateful = [name for name, on in (("guidance_scale", getattr(gc, "guidance_scale", None) not in (None, 1)),
                                      ("watermarking_config", getattr(gc, "watermarking_config", None) is not None))
                if on]
    if stateful:
        raise NotImplementedError(
            f"{stateful[0]}: its logits processor keeps state across calls, and speculative decoding also calls "
            "the target's processors on drafted nodes; use tree attention (beam_search_by_TreeAttn) for it."
        )
    if sampling_verification not in VARIANTS:
        raise ValueError(f"sampling_verification must be one of {VARIANTS}, got {sampling_verification!r}.")
    if gc.do_sample and sampling_verification == "recursive" and gc.num_beams != 1:
        raise NotImplementedError("sampling_verification='recursive' (exact multi-draft) supports K = 1 only.")
    req = prepare_request(model, input_ids, model_kwargs, gc)
    K, n = req.cfg.num_beams, req.cfg.prompt_len
    check_draft(model, draft_model, K, draft_beams, schedule.gamma if not schedule.adaptive else max(1, schedule.gamma))
    longest = int(req.attention_mask.sum(-1).max()) + req.cfg.max_length - n  # real prompt + new tokens
    limit = positions_exceeded(draft_model, longest)
    if limit is not None:
        raise ValueError(f"prompt + max_new_tokens exceeds the draft's maximum positions ({limit}).")
    for role, m in (("target", model), ("draft", draft_model)):
        switch = compat.rope_switch_length(m)
        if switch is not None and longest + schedule.max_gamma > switch:
            raise NotImplementedError(
                f"the {role}'s rotary embedding (longrope) changes its frequencies past {switch} tokens, and "
                f"speculative decoding runs drafted nodes up to {schedule.max_gamma} positions ahead, so it would "
                f"switch before beam search does: keep prompt + max_new_tokens + gamma within {switch} tokens, "
                "or use tree attention (beam_search_by_TreeAttn), which switches where HF does."
            )

    draft_gc = copy.deepcopy(gc)
    draft_gc.num_beams = draft_beams
    user = copy.copy(user_processors) if user_processors is not None else LogitsProcessorList()
    draft_processor = compat.build_logits_processor(model, draft_gc, req.prompt, prefix_allowed_tokens_fn, user)
    reason = (
        "engine='dynamic' was asked for"
        if engine == "dynamic"
        else static_speculative_unsupported(req.cfg, schedule.adaptive, logits_processor, stopping_criteria)
    )
    if engine == "auto" and reason is None and model_device(model).type == "cpu":
        reason = CPU_SPECULATIVE_REASON
    drafted = longest + schedule.gamma  # the deepest drafted node of the last round
    if reason is None and any(positions_exceeded(m, drafted) is not None for m in (model, draft_model)):
        reason = "drafted nodes past max_new_tokens would exceed the models' maximum positions"
    if engine == "static" and reason is not None:
        raise NotImplementedError(f"the static engine cannot run this request: {reason}.")
    if reason is None:
        slots = layout(req.cfg, draft_beams, schedule.gamma).num_slots
        target, draft = slot_lm(model, slots), slot_lm(draft_model, slots)
        result = static_speculative_beam_search(
            target,
            draft,
            req.prompt,
            req.attention_mask,
            req.cfg,
            draft_beams,
            schedule.gamma,
            row_processor(logits_processor),
            num_return_sequences=req.num_return_sequences,
            fill_value=req.fill_value,
            hook=hook,
        )
        result.stats["engine"] = "static"
    else:
        target, draft = tree_lm(model), tree_lm(draft_model)
        result = speculative_beam_search(
            target,
            draft,
            req.prompt,
            req.attention_mask,
            req.cfg,
            schedule,
            draft_beams,
            logits_processor,
            draft_processor,
            stopping_criteria,
            num_return_sequences=req.num_return_sequences,
            fill_value=req.fill_value,
            hook=hook,
            relaxed=sampling_verification if gc.do_sample else None,
        )
        result.stats["engine"] = f"dynamic: {reason}"
    result.stats.update(
        target_calls=target.forward_calls,
        target_tokens=target.tokens_processed,
        draft_calls=draft.forward_calls,
        draft_tokens=draft.tokens_processed,
        forward=target.forward_kind,
        draft_forward=draft.forward_kind,
    )
    return TreeBeamOutput(
        sequences=result.sequences,
        sequences_scores=result.sequences_scores,
        beam_indices=result.beam_indices,
        stats=result.stats,
    )


def generate_speculative(
    target: torch.nn.Module,
    draft: torch.nn.Module,
    *,
    draft_beams: int,
    schedule: DraftSchedule,
    logits_processor: LogitsProcessorList | None = None,
    prefix_allowed_tokens_fn: Callable | None = None,
    hook: Hook = _null_hook,
    sampling_verification: str = "accept_any",
    engine: str = "auto",
    **kwargs: Any,
) -> TreeBeamOutput:
    """The target's generate() (class method, patched or not) running speculative beam search."""
    if not isinstance(draft, torch.nn.Module) or not hasattr(draft, "config"):
        raise UnsupportedModelError("draft must be a Hugging Face causal LM.")
    method = functools.partial(
        speculative_generate,
        draft_model=draft,
        draft_beams=draft_beams,
        schedule=schedule,
        user_processors=logits_processor,
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
        hook=hook,
        sampling_verification=sampling_verification,
        engine=engine,
    )
    kwargs.update(return_dict_in_generate=True, output_scores=True)
    return type(target).generate(
        target,
        custom_generate=method,
        logits_processor=logits_processor,
        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
        **kwargs,
    )
