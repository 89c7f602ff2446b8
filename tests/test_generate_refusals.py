"""Generation settings atspeed does not honour are refused, never silently ignored (a review compared
every entry point with HF generate() setting by setting): diverse and constrained search, processors
with state under speculative decoding, model inputs passed as keywords, custom positions, right
padding, and HF's other single-sequence modes."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import make_model
from spec_helpers import model_pair
from transformers.generation import SynthIDTextWatermarkingConfig

from atspeed import replace_beam_search_with_TreeAttn
from atspeed.beamsd import beam_search_by_SD, beam_search_by_TreeAttn
from atspeed.hf.generate import tree_attention_generate

PROMPT = torch.tensor([[33, 28, 34, 3, 60, 32]])
INPUTS = {"input_ids": PROMPT, "attention_mask": torch.ones_like(PROMPT)}


@pytest.fixture(scope="module")
def pair():
    return model_pair(0, noise=0.3)


@pytest.fixture(scope="module")
def gpt2():
    return make_model("gpt2", seed=0, eos_token_id=2)


def sd(pair, **settings):
    return beam_search_by_SD(*pair, INPUTS, max_new_tokens=5, gamma=2, beam_size=4, draft_beam_size=4, **settings)


@pytest.mark.parametrize(("settings", "message"), [
    (dict(num_beam_groups=2, diversity_penalty=5.0), r"Diverse \(group\) beam search"),
    (dict(force_words_ids=[[7]]), r"Constrained beam search"),
    (dict(low_memory=True), r"low_memory=True"),
    (dict(output_attentions=True, return_dict_in_generate=True), r"output_attentions"),
], ids=["diverse", "constrained", "low_memory", "output_attentions"])
def test_speculative_decoding_refuses_what_tree_attention_refuses(pair, settings, message):
    with pytest.raises(NotImplementedError, match=message):
        sd(pair, **settings)


WATERMARK = SynthIDTextWatermarkingConfig(keys=[1, 2, 3], ngram_len=2)


@pytest.mark.parametrize("settings", [dict(guidance_scale=3.0), dict(watermarking_config=WATERMARK)],
                         ids=["guidance", "watermark"])
def test_speculative_decoding_refuses_processors_that_keep_state(pair, settings):
    with pytest.raises(NotImplementedError, match=r"keeps state across calls"):
        sd(pair, **settings)


def run_tree(model, inputs=INPUTS, **settings):
    return beam_search_by_TreeAttn(model, inputs, max_new_tokens=5, beam_size=3, **settings)["beam_sequences"]


def run_sd(model, inputs=INPUTS, **settings):
    draft = make_model("gpt2", seed=0, eos_token_id=2, num_layers=1)
    return beam_search_by_SD(model, draft, inputs, max_new_tokens=5, gamma=2, beam_size=3, draft_beam_size=3,
                             **settings)["beam_sequences"]


def run_patch(model, inputs=INPUTS, **settings):
    patched = replace_beam_search_with_TreeAttn(copy.deepcopy(model))
    return patched.generate(**inputs, num_beams=3, max_new_tokens=5, **settings)


def run_custom(model, inputs=INPUTS, **settings):
    return model.generate(**inputs, num_beams=3, max_new_tokens=5, custom_generate=tree_attention_generate,
                          **settings)


ENTRY_POINTS = pytest.mark.parametrize("run", [run_tree, run_sd, run_patch, run_custom],
                                       ids=["tree", "speculative", "patch", "custom_generate"])


def test_speculative_decoding_refuses_model_inputs_passed_as_keywords(gpt2):
    """GPT-2 reads token_type_ids (HF itself refuses them for Llama); the tree does not forward them."""
    with pytest.raises(NotImplementedError, match=r"extra model inputs \['token_type_ids'\]"):
        run_sd(gpt2, token_type_ids=torch.full_like(PROMPT, 5))


@ENTRY_POINTS
def test_custom_position_ids_are_refused(gpt2, run):
    """GPT-2's positions are absolute: shifted ones change its answer, which the tree cannot honour."""
    with pytest.raises(NotImplementedError, match=r"position_ids other than the attention mask's"):
        run(gpt2, position_ids=torch.arange(6)[None] + 10)


@ENTRY_POINTS
def test_the_masks_own_position_ids_are_accepted(gpt2, run):
    assert torch.equal(run(gpt2, position_ids=torch.arange(6)[None]), run(gpt2))


@ENTRY_POINTS
def test_a_right_padded_prompt_is_refused(gpt2, run):
    right_padded = {**INPUTS, "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]])}
    with pytest.raises(ValueError, match=r"padding after a real token"):
        run(gpt2, right_padded)


@pytest.mark.parametrize("settings", [dict(penalty_alpha=0.6, top_k=4), dict(dola_layers="high")],
                         ids=["contrastive", "dola"])
def test_the_patch_hands_hfs_single_sequence_modes_to_hf(gpt2, settings):
    """Unpatched, generate() answers these itself (today: it asks for trust_remote_code); the patched
    one must do the same, not run greedy search."""
    with pytest.raises(Exception) as by_hf:
        gpt2.generate(**INPUTS, max_new_tokens=5, **settings)
    with pytest.raises(type(by_hf.value)) as patched:
        replace_beam_search_with_TreeAttn(copy.deepcopy(gpt2)).generate(**INPUTS, max_new_tokens=5, **settings)
    assert str(patched.value) == str(by_hf.value)  # HF's own answer, not a refusal of atspeed's


@pytest.mark.parametrize("settings", [dict(penalty_alpha=0.6, top_k=4), dict(dola_layers="high")],
                         ids=["contrastive", "dola"])
def test_the_patch_hands_them_to_hf_when_a_generation_config_sets_them(gpt2, settings):
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=5, **settings)
    with pytest.raises(Exception) as by_hf:
        gpt2.generate(**INPUTS, generation_config=copy.deepcopy(config))
    with pytest.raises(type(by_hf.value)) as patched:
        replace_beam_search_with_TreeAttn(copy.deepcopy(gpt2)).generate(**INPUTS, generation_config=config)
    assert str(patched.value) == str(by_hf.value)


@pytest.mark.parametrize("settings", [dict(penalty_alpha=0.6, top_k=4), dict(dola_layers="high")],
                         ids=["contrastive", "dola"])
def test_custom_generate_refuses_hfs_single_sequence_modes(gpt2, settings):
    with pytest.raises(NotImplementedError, match=r"contrastive search \(penalty_alpha\) and DoLa"):
        gpt2.generate(**INPUTS, max_new_tokens=5, custom_generate=tree_attention_generate, **settings)


def test_custom_generate_runs_what_hf_runs_when_penalty_alpha_does_not_make_contrastive_search(gpt2):
    """With top_k = 1, HF's own generate() decodes greedily despite penalty_alpha: so does atspeed's."""
    settings = dict(**INPUTS, max_new_tokens=5, penalty_alpha=0.6, top_k=1, do_sample=False)
    assert torch.equal(gpt2.generate(**settings, custom_generate=tree_attention_generate), gpt2.generate(**settings))


@ENTRY_POINTS
def test_a_prefilled_cache_is_refused_not_ignored(gpt2, run):
    from transformers import DynamicCache

    from atspeed.hf.compat import cache_kwarg

    cache = {cache_kwarg(gpt2): DynamicCache(config=gpt2.config)}  # `cache` from transformers 5.24 on
    with torch.no_grad():
        gpt2(INPUTS["input_ids"][:, :4], **cache)  # the first 4 prompt tokens, already processed
    with pytest.raises(NotImplementedError, match=r"a pre-filled (cache|past_key_values) \(4 tokens\)"):
        run(gpt2, **cache)
