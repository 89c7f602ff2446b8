"""The function API (beam_search_by_TreeAttn, beam_search_by_SD) and the generate() patch refuse bad
inputs with a message that says what is wrong, instead of torch's IndexError, an AttributeError,
a TypeError, or a silently wrong answer."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import make_model

from atspeed import UnsupportedModelError, replace_beam_search_with_TreeAttn
from atspeed.beamsd import beam_search_by_SD, beam_search_by_TreeAttn

VOCAB = 64  # helpers.make_model's default vocabulary


@pytest.fixture(scope="module")
def pair():
    return make_model("llama", seed=0), make_model("llama", seed=1, num_layers=1)


def tree(models, inputs):
    return beam_search_by_TreeAttn(models[0], inputs, max_new_tokens=2, beam_size=2)


def speculative(models, inputs):
    return beam_search_by_SD(models[0], models[1], inputs, max_new_tokens=2, gamma=2, beam_size=2, draft_beam_size=4)


def patch(models, inputs):
    model = replace_beam_search_with_TreeAttn(make_model("llama", seed=0))
    return model.generate(**inputs, max_new_tokens=2, num_beams=2)


def ids(*rows):
    return torch.tensor(rows)


ENTRY_POINTS = pytest.mark.parametrize("run", [tree, speculative], ids=["tree", "speculative"])


@ENTRY_POINTS
@pytest.mark.parametrize(("inputs", "message"), [
    ({"input_ids": ids([5, 6, VOCAB, 7])}, rf"input_ids\[0, 2\] = {VOCAB} is not a token of the model's "
                                           rf"vocabulary \(ids 0 … {VOCAB - 1}\)"),
    ({"input_ids": ids([5, 6], [-1, 4])}, r"input_ids\[1, 0\] = -1 is not a token"),
    ({"input_ids": ids([5, 6, 7]), "attention_mask": torch.ones(1, 5, dtype=torch.long)},
     r"attention_mask has shape \(1, 5\) but input_ids have \(1, 3\)"),
    ({"input_ids": ids([5, 6, 7]), "attention_mask": torch.ones(1, 2, dtype=torch.long)},
     r"attention_mask has shape \(1, 2\) but input_ids have \(1, 3\)"),
    (None, r"inputs must be a tensor of token ids or a mapping with 'input_ids' .*got NoneType"),
    ([[5, 6, 7]], r"inputs must be a tensor of token ids .*got list"),
    ({"attention_mask": torch.ones(1, 3)}, r"got dict"),
    ({"input_ids": [[5, 6, 7]]}, r"input_ids must be a torch tensor, got list"),
    ({"input_ids": torch.tensor([[5.0, 6.0]])}, r"input_ids must hold integer token ids, got dtype torch.float32"),
    (torch.ones(1, 1, 8, dtype=torch.long),
     r"input_ids must be \[batch, length\] \(or \[length\]\), got shape \(1, 1, 8\)"),
])
def test_bad_inputs_are_refused_with_a_message(pair, run, inputs, message):
    with pytest.raises(ValueError, match=message):
        run(pair, inputs)


def test_the_generate_patch_refuses_token_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match=rf"input_ids\[0, 1\] = {VOCAB + 3} is not a token"):
        patch(None, {"input_ids": ids([5, VOCAB + 3])})


@pytest.mark.parametrize(("run", "position"), [(tree, 0), (speculative, 0), (speculative, 1)],
                         ids=["tree", "speculative-target", "speculative-draft"])
def test_a_model_that_is_not_a_hugging_face_lm_is_refused(pair, run, position):
    models = list(pair)
    models[position] = torch.nn.Linear(4, 4)
    with pytest.raises(UnsupportedModelError, match=r"must be a Hugging Face causal LM, got Linear"):
        run(models, {"input_ids": ids([5, 6, 7])})


@ENTRY_POINTS
def test_a_one_dimensional_tensor_is_one_prompt(pair, run):
    assert torch.equal(run(pair, torch.tensor([5, 6, 7]))["beam_sequences"],
                       run(pair, {"input_ids": ids([5, 6, 7])})["beam_sequences"])


@ENTRY_POINTS
def test_a_one_dimensional_mapping_is_one_prompt(pair, run):
    one = {"input_ids": torch.tensor([5, 6, 7]), "attention_mask": torch.ones(3, dtype=torch.long)}
    assert torch.equal(run(pair, one)["beam_sequences"], run(pair, {"input_ids": ids([5, 6, 7])})["beam_sequences"])


@ENTRY_POINTS
@pytest.mark.parametrize("name", ["token_type_ids", "inputs_embeds", "pixel_values"])
def test_model_inputs_it_cannot_forward_are_refused_not_dropped(pair, run, name):
    inputs = {"input_ids": ids([5, 6, 7]), name: torch.zeros(1, 3, dtype=torch.long)}
    with pytest.raises(NotImplementedError, match=rf"other than input_ids and attention_mask \(\['{name}'\]\)"):
        run(pair, inputs)


def test_zero_return_sequences_is_refused_by_tree_attention(pair):
    with pytest.raises(ValueError, match=r"num_return_sequences must be an integer >= 1, got 0"):
        beam_search_by_TreeAttn(pair[0], ids([5, 6, 7]), max_new_tokens=2, beam_size=2, num_return_sequences=0)


def test_zero_return_sequences_is_refused_by_speculative_decoding(pair):
    with pytest.raises(ValueError, match=r"num_return_sequences must be an integer >= 1, got 0"):
        beam_search_by_SD(*pair, ids([5, 6, 7]), max_new_tokens=2, gamma=2, beam_size=2, draft_beam_size=4,
                          num_return_sequences=0)


@pytest.mark.parametrize(("setting", "named"), [("num_return_sequences", r"num_return_sequences"),
                                               ("beam_size", r"num_beams \(beam_size\)")])
def test_a_bool_is_not_taken_for_a_count(pair, setting, named):
    """True is an int to Python; as a count of beams it is a mistake, refused like 2.0 or "2"."""
    settings = dict(max_new_tokens=2, beam_size=2, num_return_sequences=1) | {setting: True}
    with pytest.raises(ValueError, match=rf"^{named} must be an integer >= 1, got True"):
        beam_search_by_TreeAttn(pair[0], ids([5, 6, 7]), **settings)


def test_a_sampling_generation_config_is_followed_with_a_warning(pair):
    """As generate() does, the model's generation_config.do_sample applies when do_sample is not passed;
    the function API, documented as exact, says so instead of sampling silently."""
    target = make_model("llama", seed=0)
    target.generation_config.do_sample = True
    with pytest.warns(UserWarning, match=r"target_model.generation_config.do_sample is True, so this samples"):
        out = beam_search_by_SD(target, pair[1], ids([5, 6, 7]), max_new_tokens=2, gamma=2, beam_size=2,
                                draft_beam_size=4)
    assert "relaxed" in out["engine"]


def test_do_sample_false_overrides_a_sampling_generation_config_without_a_warning(pair):
    target = make_model("llama", seed=0)
    target.generation_config.do_sample = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = beam_search_by_TreeAttn(target, ids([5, 6, 7]), max_new_tokens=2, beam_size=2, do_sample=False)
    assert torch.equal(out["beam_sequences"], tree(pair, ids([5, 6, 7]))["beam_sequences"])


def test_patched_generate_refuses_a_mask_of_another_shape():
    from helpers import fresh_copy, make_model

    from atspeed import replace_beam_search_with_TreeAttn

    model = replace_beam_search_with_TreeAttn(fresh_copy(make_model("llama", seed=0)))
    ids = torch.randint(3, 64, (1, 40))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 50\) but input_ids have \(1, 40\)"):
        model.generate(input_ids=ids, attention_mask=torch.ones(1, 50, dtype=torch.long), max_new_tokens=2, num_beams=2)
