"""Requests that atspeed cannot serve must fail early with a clear, specific error (ValueError,
UnsupportedModelError or NotImplementedError whose message says what is wrong), through every
entry point: the generate() patch, the function API and HF's custom_generate hook."""

from __future__ import annotations

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

from atspeed import (
    UnsupportedModelError,
    beam_search_by_TreeAttn,
    replace_beam_search_with_TreeAttn,
    tree_attention_generate,
)
from helpers import (
    batch,
    fresh_copy,
    hf_generate,
    left_pad,
    make_model,
)

VOCAB = 64


@pytest.fixture
def inputs():
    return batch((6, 3), seed=1)


def via_patch(model, inputs, num_beams, max_new_tokens=4, **kwargs):
    return replace_beam_search_with_TreeAttn(model).generate(
        **inputs, num_beams=num_beams, max_new_tokens=max_new_tokens, **kwargs
    )


def via_function(model, inputs, num_beams, max_new_tokens=4, **kwargs):
    return beam_search_by_TreeAttn(model, inputs, max_new_tokens=max_new_tokens, beam_size=num_beams, **kwargs)


def via_custom_generate(model, inputs, num_beams, max_new_tokens=4, **kwargs):
    return model.generate(
        **inputs, num_beams=num_beams, max_new_tokens=max_new_tokens, custom_generate=tree_attention_generate, **kwargs
    )


ENTRY_POINTS = pytest.mark.parametrize(
    "run", [via_patch, via_function, via_custom_generate], ids=["patch", "function", "custom_generate"]
)


def test_unsupported_model_error_is_a_value_error():
    assert issubclass(UnsupportedModelError, ValueError)


# ------------------------------------------------------------------ beam width


@pytest.mark.parametrize("run", [via_patch, via_function], ids=["patch", "function"])
def test_zero_beams_is_rejected(llama, inputs, run):
    with pytest.raises(ValueError, match=r"num_beams \(beam_size\) must be an integer >= 1, got 0"):
        run(llama, inputs, num_beams=0)


def test_negative_num_beams_is_rejected_by_the_patch(llama, inputs):
    with pytest.raises(ValueError, match=r"must be an integer >= 1, got -1"):
        via_patch(llama, inputs, num_beams=-1)


def test_negative_beam_size_is_rejected_by_the_function_api(llama, inputs):
    with pytest.raises(ValueError, match=r"must be an integer >= 1"):
        via_function(llama, inputs, num_beams=-1)


@pytest.mark.parametrize("beam_size", [2.0, True, "3"])
def test_non_integer_beam_size_is_rejected_by_the_function_api(llama, inputs, beam_size):
    with pytest.raises(ValueError, match=r"must be an integer >= 1, got"):
        via_function(llama, inputs, num_beams=beam_size)


def test_as_many_beams_as_vocabulary_is_accepted(llama, inputs):
    out = via_function(llama, inputs, num_beams=VOCAB, max_new_tokens=2)
    assert out["beam_sequences"].shape[0] == 2 * VOCAB


@ENTRY_POINTS
def test_more_return_sequences_than_beams_is_rejected(llama, inputs, run):
    with pytest.raises(ValueError, match=r"num_return_sequences.*\(3\).*num_beams.*\(2\)"):
        run(llama, inputs, num_beams=2, num_return_sequences=3)


class _Streamer:
    def put(self, value):
        pass

    def end(self):
        pass


@pytest.mark.parametrize("beam_size", [1, 2], ids=["beam_size=1", "beam_size=2"])
@pytest.mark.parametrize("option", ["streamer", "assistant_model"])
def test_function_api_refuses_streaming_and_assisted_generation(llama, option, beam_size):
    one_prompt = batch((6,), seed=1)  # HF's assisted generation takes one prompt at a time
    value = _Streamer() if option == "streamer" else make_model("llama", seed=9)
    with pytest.raises(NotImplementedError, match=rf"{option}.*not supported"):
        via_function(llama, one_prompt, num_beams=beam_size, **{option: value})


# ------------------------------------------------------------------ prompt and lengths


@ENTRY_POINTS
def test_empty_prompt_is_rejected(llama, run):
    nothing = torch.zeros((1, 0), dtype=torch.long)
    empty = {"input_ids": nothing, "attention_mask": nothing.clone()}
    with pytest.raises(ValueError, match="prompt is empty"):
        run(llama, empty, num_beams=2)


def test_empty_one_dimensional_prompt_is_rejected_by_the_function_api(llama):
    with pytest.raises(ValueError, match="prompt is empty"):
        beam_search_by_TreeAttn(llama, torch.zeros((0,), dtype=torch.long), max_new_tokens=3, beam_size=2)


@ENTRY_POINTS
def test_request_with_only_padding_is_rejected(llama, run):
    """An all-zero attention_mask row is an empty prompt inside a batch. HF would run it (and 5.x and
    4.57 even disagree on what it gives): atspeed must refuse it rather than return an arbitrary result."""
    inputs = left_pad([[], [5, 6, 7]])
    with pytest.raises(ValueError, match="prompt is empty: give at least one input token per request"):
        run(llama, inputs, num_beams=2)


@pytest.mark.parametrize("max_new_tokens", [0, -1])
@ENTRY_POINTS
def test_max_new_tokens_below_one_is_rejected(llama, inputs, run, max_new_tokens):
    with pytest.raises(ValueError, match=rf"max_new_tokens.*{max_new_tokens}"):
        run(llama, inputs, num_beams=2, max_new_tokens=max_new_tokens)


@ENTRY_POINTS
def test_prompt_plus_new_tokens_beyond_max_positions_is_rejected(run, inputs):
    model = make_model("llama", max_positions=32)
    with pytest.raises(ValueError,
                       match=r"prompt \(6 tokens\) \+ max_new_tokens \(27\) exceeds .*maximum positions \(32\)"):
        run(model, inputs, num_beams=2, max_new_tokens=27)


def test_gpt2_n_positions_is_the_limit(inputs):
    model = make_model("gpt2", max_positions=16)
    with pytest.raises(ValueError, match=r"maximum positions \(16\)"):
        via_patch(model, inputs, num_beams=2, max_new_tokens=11)


def test_prompt_plus_new_tokens_exactly_max_positions_is_accepted(inputs):
    model = make_model("llama", max_positions=32)
    ref = hf_generate(model, **inputs, num_beams=2, max_new_tokens=26)
    out = via_patch(fresh_copy(model), inputs, num_beams=2, max_new_tokens=26)
    assert torch.equal(out, ref)


def test_real_prompt_length_not_padded_length_counts_for_max_positions():
    """Left padding does not use positions: a short prompt padded to a long batch still fits."""
    model = make_model("llama", max_positions=32)
    inputs = left_pad([[5] * 20, [6] * 2])
    with pytest.raises(ValueError, match=r"prompt \(20 tokens\)"):
        via_patch(fresh_copy(model), inputs, num_beams=2, max_new_tokens=13)
    alone = left_pad([[6] * 2])
    out = via_patch(fresh_copy(model), alone, num_beams=2, max_new_tokens=30)
    assert out.shape[1] == 32


def test_prompt_plus_new_tokens_beyond_sliding_window_is_rejected(inputs):
    model = make_model("mistral", sliding_window=8)
    with pytest.raises(ValueError, match=r"exceeds the sliding window \(8\).*does not implement sliding windows"):
        via_patch(model, inputs, num_beams=2, max_new_tokens=3)


def test_missing_max_new_tokens_in_function_api_and_generation_config(llama, inputs):
    """beam_search_by_TreeAttn does not fall back on HF's max_length=20 default: it asks for max_new_tokens."""
    assert llama.generation_config.max_new_tokens is None
    with pytest.raises(ValueError, match=r"max_new_tokens is not set: pass max_new_tokens=\.\.\. or set "
                                         r"model.generation_config.max_new_tokens"):
        beam_search_by_TreeAttn(llama, inputs, beam_size=2)


def test_function_api_rejects_a_mapping_without_input_ids(llama):
    with pytest.raises(ValueError, match="input_ids"):
        beam_search_by_TreeAttn(llama, {"attention_mask": torch.ones(1, 3)}, max_new_tokens=2, beam_size=2)


# ------------------------------------------------------------------ devices


@ENTRY_POINTS
def test_inputs_on_another_device_than_the_model_are_rejected(llama, inputs, run):
    """Simulated without a GPU: the model lives on the meta device, the inputs on the CPU."""
    llama.to("meta")
    with pytest.raises(ValueError, match=r"input_ids are on cpu but the model is on meta; move the inputs"):
        run(llama, inputs, num_beams=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_inputs_for_a_cuda_model_are_rejected(llama, inputs):
    llama.to("cuda")
    with pytest.raises(ValueError, match=r"input_ids are on cpu but the model is on cuda"):
        via_patch(llama, inputs, num_beams=2)


# ------------------------------------------------------------------ unsupported models


def tiny_t5():
    return T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                               num_heads=2, decoder_start_token_id=0))


def tiny_bart():
    return BartForConditionalGeneration(BartConfig(vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64))


@pytest.mark.parametrize("factory", [tiny_t5, tiny_bart], ids=["t5", "bart"])
def test_encoder_decoder_model_cannot_be_patched(factory):
    model = factory()
    with pytest.raises(UnsupportedModelError, match=rf"{type(model).__name__} is an encoder-decoder model"):
        replace_beam_search_with_TreeAttn(model)
    assert "generate" not in vars(model), "a refused model must be left untouched"


@pytest.mark.parametrize("run", [via_function, via_custom_generate], ids=["function", "custom_generate"])
@pytest.mark.parametrize("factory", [tiny_t5, tiny_bart], ids=["t5", "bart"])
def test_encoder_decoder_model_is_rejected(factory, run, inputs):
    with pytest.raises(UnsupportedModelError, match="encoder-decoder"):
        run(factory(), inputs, num_beams=2)


@pytest.mark.parametrize("impl", ["flash_attention_2", "flex_attention"])
def test_attention_without_4d_mask_support_cannot_be_patched(llama, impl):
    llama.config._attn_implementation = impl  # flash-attn need not be installed: the check reads the config
    with pytest.raises(UnsupportedModelError, match=rf"attn_implementation='{impl}'.*cannot take a custom 4D attention "
                                                    r"mask.*'sdpa' or 'eager'"):
        replace_beam_search_with_TreeAttn(llama)


@pytest.mark.parametrize("run", [via_function, via_custom_generate], ids=["function", "custom_generate"])
def test_attention_without_4d_mask_support_is_rejected(llama, inputs, run):
    llama.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UnsupportedModelError, match="cannot take a custom 4D attention mask"):
        run(llama, inputs, num_beams=2)


def test_model_with_non_attention_layers_is_rejected():
    model = make_model("qwen2")
    model.config.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(UnsupportedModelError, match=r"non-attention layers \['linear_attention'\]"):
        replace_beam_search_with_TreeAttn(model)


def test_a_model_with_alibi_position_biases_is_rejected():
    from transformers import FalconConfig, FalconForCausalLM

    config = FalconConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, alibi=True)
    with pytest.raises(UnsupportedModelError, match=r"FalconForCausalLM uses ALiBi position biases"):
        replace_beam_search_with_TreeAttn(FalconForCausalLM(config))


def test_module_without_generate_is_rejected():
    with pytest.raises(UnsupportedModelError, match="not a Hugging Face generative model"):
        replace_beam_search_with_TreeAttn(torch.nn.Linear(2, 2))
