"""The drop-in patch `replace_beam_search_with_TreeAttn(model)`: per instance, reversible, beam
search only (num_beams=1 is HF's own greedy/sampling), and clear errors for what it cannot do.

Which implementation ran is observed from the outside with `ForwardRecorder`: HF's beam search
runs the model on B * K rows, tree attention on B rows.
"""

from __future__ import annotations

import copy

import pytest
import torch

from atspeed import replace_beam_search_with_TreeAttn, restore_beam_search, tree_attention_generate
from helpers import (
    ForwardRecorder,
    assert_same_generate_output,
    batch,
    fresh_copy,
    hf_generate,
    make_model,
)

B, K = 2, 4


@pytest.fixture
def inputs():
    return batch((6, 3), seed=1)


def beam_search_rows(model, inputs, **kwargs) -> set[int]:
    """Batch sizes the model ran on during `model.generate(num_beams=K)`."""
    with ForwardRecorder(model) as calls:
        model.generate(**inputs, max_new_tokens=4, num_beams=K, **kwargs)
    return calls.batch_sizes


def test_patch_returns_the_same_model_object(llama):
    assert replace_beam_search_with_TreeAttn(llama) is llama


def test_patched_model_runs_tree_attention(llama, inputs):
    replace_beam_search_with_TreeAttn(llama)
    assert beam_search_rows(llama, inputs) == {B}


def test_unpatched_model_runs_hf_beam_search(llama, inputs):
    assert beam_search_rows(llama, inputs) == {B * K}


def test_patch_is_per_instance(llama, inputs):
    other = fresh_copy(llama)  # same class, same weights
    replace_beam_search_with_TreeAttn(llama)
    assert "generate" not in vars(other)
    assert type(other).generate is not llama.generate
    assert beam_search_rows(other, inputs) == {B * K}
    assert beam_search_rows(llama, inputs) == {B}


def test_patch_of_a_fresh_model_does_not_touch_the_class(inputs):
    cls = type(make_model("llama"))
    before = cls.generate
    replace_beam_search_with_TreeAttn(make_model("llama"))
    assert cls.generate is before
    assert beam_search_rows(make_model("llama"), inputs) == {B * K}


def test_restore_beam_search_reverts_to_hf(llama, inputs):
    replace_beam_search_with_TreeAttn(llama)
    assert restore_beam_search(llama) is llama
    assert "generate" not in vars(llama)
    assert beam_search_rows(llama, inputs) == {B * K}
    ref = hf_generate(fresh_copy(llama), **inputs, max_new_tokens=5, num_beams=K, return_dict_in_generate=True,
                      output_scores=True)
    out = llama.generate(**inputs, max_new_tokens=5, num_beams=K, return_dict_in_generate=True, output_scores=True)
    assert type(out) is type(ref)  # HF's own output class again
    assert torch.equal(out.sequences, ref.sequences) and torch.equal(out.sequences_scores, ref.sequences_scores)


def test_restore_on_an_unpatched_model_is_a_no_op(llama, inputs):
    assert restore_beam_search(llama) is llama
    assert beam_search_rows(llama, inputs) == {B * K}


def test_patch_twice_then_restore_once(llama, inputs):
    replace_beam_search_with_TreeAttn(replace_beam_search_with_TreeAttn(llama))
    assert beam_search_rows(llama, inputs) == {B}
    restore_beam_search(llama)
    assert beam_search_rows(llama, inputs) == {B * K}


def test_restoring_one_instance_keeps_the_other_patched(llama, inputs):
    other = fresh_copy(llama)
    replace_beam_search_with_TreeAttn(llama)
    replace_beam_search_with_TreeAttn(other)
    restore_beam_search(llama)
    assert beam_search_rows(llama, inputs) == {B * K}
    assert beam_search_rows(other, inputs) == {B}


def test_patched_generate_keeps_generates_name_and_doc(llama):
    replace_beam_search_with_TreeAttn(llama)
    assert llama.generate.__name__ == "generate"
    assert llama.generate.__doc__ == type(llama).generate.__doc__


def test_patched_generate_result_equals_hf(llama, inputs):
    settings = dict(max_new_tokens=8, num_beams=K, num_return_sequences=2, return_dict_in_generate=True,
                    output_scores=True, output_logits=True)
    ref = hf_generate(llama, **inputs, **settings)
    out = replace_beam_search_with_TreeAttn(fresh_copy(llama)).generate(**inputs, **settings)
    assert_same_generate_output(ref, out, 2)


def test_positional_arguments_mean_what_they_mean_to_hf(llama, inputs):
    """generate(inputs, generation_config, ...) by position, named as the installed generate() names them."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=5, num_beams=K, pad_token_id=0)
    ref = type(llama).generate(llama, inputs["input_ids"], config, attention_mask=inputs["attention_mask"])
    out = replace_beam_search_with_TreeAttn(fresh_copy(llama)).generate(inputs["input_ids"], config,
                                                                        attention_mask=inputs["attention_mask"])
    assert torch.equal(out, ref)


def test_a_sixth_positional_argument_is_not_dropped(llama, inputs):
    """generate()'s sixth parameter is synced_gpus, which the patch refuses rather than ignores."""
    patched = replace_beam_search_with_TreeAttn(llama)
    with pytest.raises(NotImplementedError, match="synced_gpus"):
        patched.generate(inputs["input_ids"], None, None, None, None, True, max_new_tokens=2, num_beams=K)


def test_an_argument_given_by_position_and_by_name_is_a_type_error(llama, inputs):
    patched = replace_beam_search_with_TreeAttn(llama)
    with pytest.raises(TypeError, match="multiple values"):
        patched.generate(inputs["input_ids"], inputs=inputs["input_ids"], num_beams=K)


def test_num_beams_from_the_models_generation_config(llama, inputs):
    llama.generation_config.num_beams = 3
    ref = hf_generate(fresh_copy(llama), **inputs, max_new_tokens=6)
    replace_beam_search_with_TreeAttn(llama)
    with ForwardRecorder(llama) as calls:
        out = llama.generate(**inputs, max_new_tokens=6)
    assert calls.batch_sizes == {B}
    assert torch.equal(out, ref)


# ------------------------------------------------------------------ num_beams=1 is HF's own loop


def test_num_beams_one_passes_through_to_hf_greedy(llama, inputs):
    settings = dict(max_new_tokens=8, num_beams=1, do_sample=False, return_dict_in_generate=True, output_scores=True)
    with ForwardRecorder(llama) as hf_calls:
        ref = hf_generate(llama, **inputs, **settings)
    replace_beam_search_with_TreeAttn(llama)
    with ForwardRecorder(llama) as calls:
        out = llama.generate(**inputs, **settings)
    assert calls.shapes == hf_calls.shapes  # the same forward calls: HF's greedy loop
    assert type(out) is type(ref)
    assert torch.equal(out.sequences, ref.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, ref.scores))


def test_num_beams_one_sampling_passes_through_to_hf_sampling(llama, inputs):
    settings = dict(max_new_tokens=8, num_beams=1, do_sample=True, top_k=0)
    torch.manual_seed(3)
    ref = hf_generate(llama, **inputs, **settings)
    replace_beam_search_with_TreeAttn(llama)
    torch.manual_seed(3)
    assert torch.equal(llama.generate(**inputs, **settings), ref)


def test_num_beams_one_streaming_passes_through_to_hf(llama, inputs):
    """Streaming is refused with beams, but greedy streaming is HF's own and must keep working."""
    class Collect:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value)

        def end(self):
            self.ended = True

    hf_streamer, streamer = Collect(), Collect()
    ids = inputs["input_ids"][:1]
    ref = hf_generate(llama, input_ids=ids, max_new_tokens=5, num_beams=1, streamer=hf_streamer)
    replace_beam_search_with_TreeAttn(llama)
    out = llama.generate(input_ids=ids, max_new_tokens=5, num_beams=1, streamer=streamer)
    assert torch.equal(out, ref)
    assert streamer.ended and len(streamer.chunks) == len(hf_streamer.chunks)


def test_num_beams_one_assisted_decoding_passes_through_to_hf(llama, inputs):
    """Assisted generation is refused with beams, but assisted greedy decoding is HF's own."""
    assistant = make_model("llama", seed=9)
    ids = inputs["input_ids"][:1]
    ref = hf_generate(llama, input_ids=ids, max_new_tokens=5, num_beams=1, assistant_model=assistant)
    replace_beam_search_with_TreeAttn(llama)
    assert torch.equal(llama.generate(input_ids=ids, max_new_tokens=5, num_beams=1, assistant_model=assistant), ref)


# ------------------------------------------------------------------ options the patch cannot honour


class _Streamer:
    def put(self, value):
        pass

    def end(self):
        pass


@pytest.mark.parametrize(
    "option, value",
    [
        ("assistant_model", lambda: make_model("llama", seed=9)),
        ("streamer", _Streamer),
        ("synced_gpus", lambda: True),
    ],
)
def test_unsupported_generate_option_raises_a_clear_error(llama, inputs, option, value):
    replace_beam_search_with_TreeAttn(llama)
    with pytest.raises(NotImplementedError, match=rf"{option}.*not supported"):
        llama.generate(**inputs, max_new_tokens=4, num_beams=K, **{option: value()})


@pytest.mark.parametrize("option", ["negative_prompt_ids", "negative_prompt_attention_mask"])
def test_negative_prompt_raises_a_clear_error(llama, inputs, option):
    replace_beam_search_with_TreeAttn(llama)
    value = inputs["input_ids"] if option == "negative_prompt_ids" else inputs["attention_mask"]
    with pytest.raises(NotImplementedError, match="negative prompt"):
        llama.generate(**inputs, max_new_tokens=4, num_beams=K, **{option: value})


@pytest.mark.parametrize("option", ["assistant_model", "streamer"])
def test_hf_only_option_with_num_beams_from_generation_config_raises(llama, inputs, option):
    """num_beams may come from the model's generation_config, not from the call."""
    llama.generation_config.num_beams = 3
    replace_beam_search_with_TreeAttn(llama)
    value = make_model("llama", seed=9) if option == "assistant_model" else _Streamer()
    with pytest.raises(NotImplementedError, match=rf"{option}.*not supported with beam search"):
        llama.generate(**inputs, max_new_tokens=4, **{option: value})


def test_custom_generate_on_a_patched_model_raises(llama, inputs):
    replace_beam_search_with_TreeAttn(llama)
    with pytest.raises(ValueError, match="custom_generate is already set by atspeed"):
        llama.generate(**inputs, max_new_tokens=4, num_beams=K, custom_generate=tree_attention_generate)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_beam_groups": 2, "diversity_penalty": 1.0}, "group"),
        ({"force_words_ids": [[7]]}, "Constrained"),
        ({"output_attentions": True, "return_dict_in_generate": True}, "output_attentions"),
        ({"output_hidden_states": True, "return_dict_in_generate": True}, "output_hidden_states"),
        ({"low_memory": True}, "low_memory"),
    ],
    ids=["group_beam_search", "constraints", "output_attentions", "output_hidden_states", "low_memory"],
)
def test_unsupported_beam_search_variant_raises_not_implemented(llama, inputs, options, message):
    replace_beam_search_with_TreeAttn(llama)
    with pytest.raises(NotImplementedError, match=message):
        llama.generate(**inputs, max_new_tokens=4, num_beams=K, **options)


def test_inputs_embeds_are_refused_not_ignored(llama, inputs):
    replace_beam_search_with_TreeAttn(llama)
    embeds = llama.get_input_embeddings()(inputs["input_ids"])
    with pytest.raises(NotImplementedError, match="inputs_embeds"):
        llama.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=4, num_beams=K)


# ------------------------------------------------------------------ stop strings


@pytest.fixture(scope="module")
def word_tokenizer():
    """One word per token id of make_model's 64-token vocabulary (w0 … w62, and the probe word HF's
    stop-string matching tokenizes)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(63)} | {"abcdef": 63}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=words, pad_token="w0")


@pytest.mark.parametrize(("num_beams", "stop"), [(1, ["w5"]), (1, ["w1"]), (1, ["w13 w48"]),
                                               (3, ["w5"]), (3, ["w1"]), (3, ["w6 w30"])])
def test_stop_strings_stop_where_hf_stops(llama, word_tokenizer, stop, num_beams):
    """Each stop string, one- or two-word, does stop HF's run early here; the patch stops where it does."""
    ids = torch.tensor([[33, 28, 34, 3, 60, 32]])
    settings = dict(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=num_beams, max_new_tokens=12,
                    pad_token_id=0, eos_token_id=None)
    ref = hf_generate(llama, **settings, stop_strings=stop, tokenizer=word_tokenizer)
    assert not torch.equal(ref, hf_generate(llama, **settings))  # the stop string fires
    patched = replace_beam_search_with_TreeAttn(fresh_copy(llama))
    assert torch.equal(patched.generate(**settings, stop_strings=stop, tokenizer=word_tokenizer), ref)


@pytest.mark.parametrize("where", ["generation_config", "model_config"])
def test_stop_strings_set_in_a_generation_config_stop_where_hf_stops(llama, word_tokenizer, where):
    from transformers import GenerationConfig

    ids = torch.tensor([[33, 28, 34, 3, 60, 32]])
    config = GenerationConfig(num_beams=3, max_new_tokens=12, stop_strings=["w1"], pad_token_id=0, eos_token_id=None)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), tokenizer=word_tokenizer)

    def run(model):
        if where == "model_config":
            model.generation_config = copy.deepcopy(config)
            return model.generate(**inputs)
        return model.generate(**inputs, generation_config=copy.deepcopy(config))

    ref = run(fresh_copy(llama))
    assert torch.equal(run(replace_beam_search_with_TreeAttn(fresh_copy(llama))), ref)


def test_stop_strings_without_a_tokenizer_are_refused(llama, inputs):
    with pytest.raises(ValueError, match="stop_strings needs the tokenizer"):
        replace_beam_search_with_TreeAttn(llama).generate(**inputs, num_beams=K, max_new_tokens=4, stop_strings=["x"])
