"""Drop-in patch: `model.generate(num_beams=K)` runs beam search by tree attention.

    from atspeed.beamsd_replace import replace_beam_search_with_TreeAttn
    model = replace_beam_search_with_TreeAttn(model)
    outputs = model.generate(**inputs, max_new_tokens=32, num_beams=5)

The patch is per instance (other models are untouched) and reversible with
`restore_beam_search(model)`.
"""

from __future__ import annotations

import functools
import inspect

import torch

from atspeed.hf.generate import generate_with_tree_attention
from atspeed.hf.model import check_tree_support

_MARK = "_atspeed_tree_attention"


def replace_beam_search_with_TreeAttn(model: torch.nn.Module) -> torch.nn.Module:
    """Patch this model instance's generate() so that beam search uses tree attention. Returns the model."""
    check_tree_support(model)
    signature = inspect.signature(type(model).generate)

    @functools.wraps(type(model).generate)
    def generate(*args, **kwargs):
        if args:  # generate(inputs, generation_config, ...): named as the installed generate() names them
            kwargs = _named(signature, model, args, kwargs)
        return generate_with_tree_attention(model, **kwargs)

    setattr(generate, _MARK, True)
    model.generate = generate
    return model


def _named(signature: inspect.Signature, model: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """Every argument by name; too many positional ones, or one given twice, is Python's TypeError."""
    bound = signature.bind_partial(model, *args, **kwargs).arguments
    params = list(signature.parameters.values())
    bound.pop(params[0].name)  # self
    var_keyword = [p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    extra = bound.pop(var_keyword[0], {}) if var_keyword else {}
    return {**bound, **extra}


def is_tree_attention_patched(model: torch.nn.Module) -> bool:
    return getattr(model.__dict__.get("generate"), _MARK, False)


def restore_beam_search(model: torch.nn.Module) -> torch.nn.Module:
    """Undo replace_beam_search_with_TreeAttn: generate() is the class's own again."""
    if is_tree_attention_patched(model):
        del model.generate
    return model
