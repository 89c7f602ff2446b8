"""transformers `generate()` glue: atspeed's tree-attention beam search as a decoding method.

`tree_attention_generate` has the calling convention of `generate(custom_generate=callable)`
(transformers >= 4.57): generate() prepares the config, logits processors and stopping criteria,
then hands them to it. The drop-in patch and the function API both go through it.
"""

from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteriaList, StopStringCriteria
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput

from atspeed.decoding.beam import BeamConfig
from atspeed.decoding.static import num_slots, static_beam_search
from atspeed.decoding.tree_search import BeamSearchResult, tree_beam_search
from atspeed.hf import compat
from atspeed.hf.checks import check_generation_request, check_inputs, check_left_padded
from atspeed.hf.engine import ENGINES, new_tokens, static_unsupported
from atspeed.hf.graphs import CaptureError, capture_failed, capture_unsupported, planned_beam_search
from atspeed.hf.lean import slot_lm, tree_lm
from atspeed.hf.model import check_tree_support, model_device

# generate() options that tree-attention beam search does not implement: refuse, never ignore.
UNSUPPORTED_GENERATE_KWARGS = {
    "synced_gpus": "synced_gpus (multi-GPU sharded generation)",
    "negative_prompt_ids": "classifier-free guidance with a negative prompt",
    "negative_prompt_attention_mask": "classifier-free guidance with a negative prompt",
}
# generate() modes that are not beam search: HF runs them itself (and refuses them with beams).
HF_ONLY_KWARGS = ("assistant_model", "streamer", "penalty_alpha", "dola_layers")


@dataclass
class Request:
    """One generate() call as the decoding core sees it: one row per request (generate() repeats
    each prompt max(K, R) times; tree attention needs it once)."""

    prompt: torch.Tensor  # [B, n] left-padded
    attention_mask: torch.Tensor  # [B, n]
    cfg: BeamConfig
    num_return_sequences: int
    fill_value: int  # what HF pads finished sequences with


def prepare_request(
    model: torch.nn.Module, input_ids: torch.Tensor, model_kwargs: dict, gc: GenerationConfig
) -> Request:
    """Validate a generate() call and turn HF's prepared arguments into a Request."""
    K = gc.num_beams
    R = 1 if gc.num_return_sequences is None else gc.num_return_sequences
    expand = max(K, R)
    prompt = input_ids[::expand]
    mask = model_kwargs.get("attention_mask")
    mask = torch.ones_like(prompt) if mask is None else mask[::expand]
    check_left_padded(mask)
    n = prompt.shape[1]
    check_generation_request(model, prompt, K, R, gc.max_length - n, mask.sum(-1))
    eos = compat.eos_token_tensor(gc)
    cfg = BeamConfig(
        num_beams=K,
        prompt_len=n,
        max_length=gc.max_length,
        length_penalty=gc.length_penalty,
        early_stopping=gc.early_stopping,
        do_sample=gc.do_sample,
        num_eos=eos.shape[0] if eos is not None else 0,
        eos_token_ids=tuple(eos.tolist()) if eos is not None else (),
        sort_sampled=compat.SORTS_SAMPLED_BEAMS,
    )
    fill = compat.pad_token_tensor(gc) or eos[0] if eos is not None else -1  # HF's own (precedence included)
    return Request(prompt, mask, cfg, R, int(fill))


def tree_attention_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    always_beam: bool = False,
    engine: str = "auto",
    step_scores: bool = True,
    **model_kwargs: Any,
) -> GenerateBeamDecoderOnlyOutput | torch.Tensor:
    """A `custom_generate` decoding method. Beam search (and beam sampling) runs by tree attention;
    num_beams == 1 is left to HF's own greedy/sampling loop unless `always_beam`. `engine` chooses
    the decode (see atspeed.hf.engine); the default picks the static engine wherever it applies."""
    gc = generation_config
    if gc.num_beams == 1 and not always_beam:
        # contrastive search and DoLa: HF's own sampling loop here would run greedy search instead
        if gc.get_generation_mode() in ("contrastive_search", "dola_generation"):
            raise NotImplementedError(
                "contrastive search (penalty_alpha) and DoLa (dola_layers) are not atspeed's: call generate() "
                "without custom_generate=tree_attention_generate (atspeed's patch hands them to HF)."
            )
        return compat.hf_sample(
            model,
            input_ids,
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
            generation_config=gc,
            synced_gpus=synced_gpus,
            **model_kwargs,
        )
    refuse_unsupported(model, gc, model_kwargs)
    req = prepare_request(model, input_ids, model_kwargs, gc)
    result = run_beam_search(
        model,
        req,
        logits_processor,
        stopping_criteria,
        output_scores=bool(gc.return_dict_in_generate and gc.output_scores and step_scores),
        output_logits=bool(gc.return_dict_in_generate and gc.output_logits),
        engine=engine,
    )
    if not gc.return_dict_in_generate:
        return result.sequences
    return to_generate_output(result, gc)


def refuse_unsupported(model: torch.nn.Module, gc: GenerationConfig, model_kwargs: dict) -> None:
    """What neither the tree path nor speculative decoding does, refused instead of ignored."""
    if getattr(gc, "num_beam_groups", 1) not in (None, 1):
        raise NotImplementedError("Diverse (group) beam search is not supported by atspeed tree attention.")
    if getattr(gc, "constraints", None) or getattr(gc, "force_words_ids", None):
        raise NotImplementedError("Constrained beam search (constraints / force_words_ids) is not supported.")
    if gc.output_attentions or gc.output_hidden_states:
        raise NotImplementedError(
            "output_attentions / output_hidden_states are not available with tree attention (beams share one "
            "sequence, so per-beam attentions do not exist)."
        )
    if gc.low_memory:
        raise NotImplementedError("low_memory=True is not supported (the tree cache already stores the prompt once).")
    check_tree_support(model)
    extra = sorted(k for k, v in model_kwargs.items() if v is not None and k not in _KNOWN_MODEL_KWARGS)
    if extra:
        raise NotImplementedError(f"tree-attention beam search does not forward extra model inputs {extra}.")
    for name in ("cache", "past_key_values"):  # generate() hands over the empty cache it made
        cache = model_kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
            raise NotImplementedError(
                f"a pre-filled {name} ({cache.get_seq_length()} tokens) is not used by tree attention, which "
                "builds its own cache from the whole prompt: pass the full prompt without a cache."
            )
    positions = model_kwargs.get("position_ids")
    if positions is not None and not _mask_positions(positions, model_kwargs.get("attention_mask")):
        raise NotImplementedError(
            "position_ids other than the attention mask's (0, 1, ... from each prompt's first real token) are not "
            "supported: tree attention places every node by the mask."
        )


def _mask_positions(positions: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
    """Whether `positions` are the ones the tree derives from the mask (HF's default), at real tokens."""
    mask = torch.ones_like(positions) if attention_mask is None else attention_mask
    if positions.shape != mask.shape:
        return False
    real = mask.bool()
    return torch.equal(positions[real], (mask.long().cumsum(-1) - 1)[real].to(positions.dtype))


def run_beam_search(
    model: torch.nn.Module,
    req: Request,
    logits_processor: Any,
    stopping_criteria: Any,
    *,
    output_scores: bool = False,
    output_logits: bool = False,
    engine: str = "auto",
) -> BeamSearchResult:
    """Tree-attention beam search of one prepared request on the engine that fits it: on a GPU the
    static engine's captured graph (one per request shape, reused), else the static engine run
    eagerly, else the dynamic (compacting) tree path; stats["engine"] says which, and why not a
    faster one. engine="graph" / "static" / "dynamic" insists on one."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
    reason = static_unsupported(req.cfg) if engine != "dynamic" else "engine='dynamic' was asked for"
    if engine in ("static", "graph") and reason is not None:
        raise NotImplementedError(f"the static engine cannot run this request: {reason}.")
    no_graph = graph_unsupported(model, engine, output_scores or output_logits, logits_processor, stopping_criteria)
    if engine == "graph" and no_graph is not None:
        raise NotImplementedError(f"the decode cannot be captured: {no_graph}.")
    common = dict(num_return_sequences=req.num_return_sequences, fill_value=req.fill_value)
    args = (req.prompt, req.attention_mask, req.cfg, logits_processor, stopping_criteria)
    if reason is None and no_graph is None:
        try:
            result = planned_beam_search(model, *args, **common, capture=True)
        except CaptureError as e:
            if engine == "graph":
                raise NotImplementedError(f"the decode cannot be captured: {e}.") from e
            no_graph = capture_failed(model)
            warnings.warn(f"atspeed: {no_graph}; stats['engine'] says so for every request of this model.")
        else:
            result.stats.update(engine="static (CUDA graph)")
            return result
    record = dict(output_scores=output_scores, output_logits=output_logits)
    if reason is None:
        lm = slot_lm(model, num_slots(req.cfg.prompt_len, req.cfg.num_beams, new_tokens(req.cfg)))
        result = static_beam_search(lm, *args, **common, **record)
        result.stats.update(
            engine="static" + (f" (no graph: {no_graph})" if model_device(model).type == "cuda" else ""),
            peak_cache_bytes=lm.cache_bytes,
        )
    else:
        lm = tree_lm(model)
        result = tree_beam_search(lm, *args, **common, **record)
        result.stats.update(engine=f"dynamic: {reason}")
    result.stats.update(target_calls=lm.forward_calls, target_tokens=lm.tokens_processed, forward=lm.forward_kind)
    return result


def graph_unsupported(
    model: torch.nn.Module, engine: str, step_outputs: bool, processors: Any, stopping: Any
) -> str | None:
    """Why this request's static decode will not be a captured graph, or None."""
    if engine == "static":
        return "engine='static' was asked for"
    if model_device(model).type != "cuda":
        return "CUDA graphs need a CUDA device"
    if step_outputs:
        return "per-step scores / logits are recorded eagerly"
    return capture_failed(model) or capture_unsupported(processors, stopping)


_KNOWN_MODEL_KWARGS = {  # position_ids: checked apart (refuse_unsupported)
    "attention_mask",
    "position_ids",
    "cache",
    "past_key_values",
    "use_cache",
    "logits_to_keep",
    "cache_position",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
}


@dataclass
class TreeBeamOutput(GenerateBeamDecoderOnlyOutput):
    """HF's beam output plus atspeed's counters (forward calls, tokens processed, peak cache bytes)."""

    stats: dict | None = None


def to_generate_output(result: BeamSearchResult, gc: GenerationConfig) -> TreeBeamOutput:
    return TreeBeamOutput(
        sequences=result.sequences,
        sequences_scores=result.sequences_scores if gc.output_scores else None,
        scores=result.scores,
        logits=result.logits,
        beam_indices=result.beam_indices,
        stats=result.stats,
    )


def _stop_strings_as_criterion(model: torch.nn.Module, kwargs: dict) -> dict:
    """generate() builds stop_strings' criterion from its `tokenizer` argument, which it does not keep
    for a callable custom_generate (atspeed's): the criterion is built here instead, as HF builds it, and
    stop_strings is cleared wherever it was set (argument, generation_config or the model's config)."""
    kwargs = dict(kwargs)
    tokenizer = kwargs.pop("tokenizer", None)
    if tokenizer is None:
        raise ValueError("stop_strings needs the tokenizer: pass tokenizer=... to generate(), as HF asks.")
    stop_strings = _requested(model, kwargs, "stop_strings")
    config = kwargs.get("generation_config")
    if config is None and model.generation_config.stop_strings is not None:
        config = model.generation_config
    if config is not None and not isinstance(config, dict):
        kwargs["generation_config"] = copy.deepcopy(config)
        kwargs["generation_config"].stop_strings = None
    kwargs["stop_strings"] = None
    criteria = StoppingCriteriaList(kwargs.get("stopping_criteria") or [])
    criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings))
    kwargs["stopping_criteria"] = criteria
    return kwargs


def _requested(model: torch.nn.Module, kwargs: dict, name: str) -> Any:
    """A generation setting as generate() will resolve it: argument, then generation_config, then the
    model's (None if none sets it)."""
    for source in (kwargs, kwargs.get("generation_config"), model.generation_config):
        value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
        if value is not None:
            return value
    return None


def generate_with_tree_attention(
    model: torch.nn.Module, always_beam: bool = False, engine: str = "auto", step_scores: bool = True, **kwargs: Any
) -> Any:  # HF's own return: a tensor of sequences, or a GenerateOutput (TreeBeamOutput for beam search)
    """HF generate() (the class's own, patched or not) with tree-attention beam search.
    step_scores=False: with output_scores, return only the sequences' scores (no per-step tuple)."""
    hf_only = [key for key in HF_ONLY_KWARGS if _requested(model, kwargs, key) is not None]
    if hf_only:  # HF's own greedy/sampling modes: HF runs them; with beams they are refused
        if always_beam or (_requested(model, kwargs, "num_beams") or 1) > 1:
            raise NotImplementedError(
                f"{hf_only[0]} is not supported with beam search under atspeed's patch (HF's beam search ignores "
                "it, with a warning); for speculative beam search use atspeed.beamsd.beam_search_by_SD."
            )
        return type(model).generate(model, **kwargs)
    for key in UNSUPPORTED_GENERATE_KWARGS:
        if kwargs.get(key) is not None and kwargs.get(key) is not False:
            raise NotImplementedError(
                f"{key}: {UNSUPPORTED_GENERATE_KWARGS[key]} is not supported with atspeed tree-attention beam search."
            )
    if kwargs.get("custom_generate") is not None:
        raise ValueError("custom_generate is already set by atspeed; call the original generate() to use another.")
    if _requested(model, kwargs, "stop_strings") is not None:
        kwargs = _stop_strings_as_criterion(model, kwargs)
    ids, mask = kwargs.get("input_ids", kwargs.get("inputs")), kwargs.get("attention_mask")
    if isinstance(ids, torch.Tensor) and isinstance(mask, torch.Tensor):  # generate() would expand both silently
        check_inputs({"input_ids": ids, "attention_mask": mask})
    method = tree_attention_generate
    if always_beam or engine != "auto" or not step_scores:
        method = functools.partial(
            tree_attention_generate, always_beam=always_beam, engine=engine, step_scores=step_scores
        )
    return type(model).generate(model, custom_generate=method, **kwargs)
