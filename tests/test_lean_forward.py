"""The engine's lean forward: HF's modules and kernels called directly, bit-identical to HF's forward.

It runs only where it has been checked to equal the HF forward (Llama-family models on SDPA); every
other model keeps the HF forward, and the decode's stats say which forward ran and why.
"""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHS, batch, make_model
from transformers import LogitsProcessorList, StoppingCriteriaList
from transformers.generation.stopping_criteria import MaxLengthCriteria

from atspeed.decoding.beam import BeamConfig
from atspeed.decoding.static import num_slots
from atspeed.decoding.tree import additive_mask, prompt_inputs
from atspeed.hf import lean
from atspeed.hf.generate import generate_with_tree_attention
from atspeed.hf.graphs import planned_beam_search
from atspeed.hf.lean import hf_forward, lean_unsupported, slot_lm, tree_lm
from atspeed.hf.model import TreeLM
from atspeed.hf.slot_cache import SlotCache

LLAMA_FAMILY = [a for a in ARCHS if a != "gpt2"]
GEN = dict(max_new_tokens=3, num_beams=4, num_return_sequences=4, return_dict_in_generate=True, always_beam=True)


def feed_tree(lm, inputs, K: int = 3):
    """Prefill a left-padded batch, then one level of K tree nodes: the logits of both writes."""
    ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
    B, P = ids.shape
    visible, positions = prompt_inputs(attention_mask)
    first = lm.write(ids, positions, additive_mask(visible, lm.dtype), start=0)
    rows = torch.zeros(B, K, P + K, dtype=torch.bool)
    rows[:, :, :P] = attention_mask.bool()[:, None]
    rows[:, :, P:] = torch.eye(K, dtype=torch.bool)
    level_positions = attention_mask.sum(-1, keepdim=True).expand(B, K)
    second = lm.write(ids[:, -K:], level_positions, additive_mask(rows, lm.dtype), start=P)
    return first, second


def assert_lean_equals_hf(m) -> None:
    """The lean forward runs on `m` and its logits equal the HF forward's on a prefill and a tree level."""
    inputs, slots = batch((9, 5, 7)), num_slots(9, 3, 2)
    with torch.inference_mode():
        lean_lm, hf_lm = slot_lm(m, slots), TreeLM(m, SlotCache(slots))
        assert lean_lm.forward_kind == "lean"
        for ours, theirs in zip(feed_tree(lean_lm, inputs), feed_tree(hf_lm, inputs)):
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize("arch", LLAMA_FAMILY)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lean_logits_equal_the_hf_forward_bit_for_bit(arch, dtype):
    assert_lean_equals_hf(make_model(arch).to(dtype))



@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_lean_logits_equal_the_hf_forward_with_any_mlp_activation(act):
    """SiLU runs in place; any other activation is called as HF calls it."""
    assert_lean_equals_hf(make_model(hidden_act=act))

@pytest.mark.parametrize("arch", LLAMA_FAMILY)
def test_llama_family_models_decode_on_the_lean_forward(arch):
    out = generate_with_tree_attention(make_model(arch), **batch((6, 4)), **GEN)
    assert out.stats["forward"] == "lean"


@pytest.mark.parametrize("engine", ["static", "dynamic"])
def test_lean_and_hf_forwards_give_the_same_beams(engine):
    m, inputs = make_model("qwen2", seed=3), batch((8, 5, 6))
    lean_out = generate_with_tree_attention(m, **inputs, **GEN, output_scores=True, engine=engine)
    with hf_forward():
        hf_out = generate_with_tree_attention(m, **inputs, **GEN, output_scores=True, engine=engine)
    assert lean_out.stats["forward"] == "lean"
    assert hf_out.stats["forward"] == "hf: the HF forward was asked for (hf_forward())"
    assert torch.equal(lean_out.sequences, hf_out.sequences)
    assert torch.equal(lean_out.sequences_scores, hf_out.sequences_scores)


def test_gpt2_keeps_the_hf_forward_and_says_why():
    out = generate_with_tree_attention(make_model("gpt2"), **batch((6, 4)), **GEN)
    assert out.stats["forward"] == "hf: model type 'gpt2' is not one of llama, mistral, qwen2, qwen3"


def test_eager_attention_keeps_the_hf_forward():
    assert "attn_implementation='eager'" in lean_unsupported(make_model(attn_implementation="eager"))


def test_a_model_in_training_mode_keeps_the_hf_forward():
    assert lean_unsupported(make_model().train()) == "the model is in training mode (dropout)"


def test_a_model_with_forward_hooks_keeps_the_hf_forward():
    m = make_model()
    m.register_forward_pre_hook(lambda module, args: None)
    assert lean_unsupported(m) == "the model has forward hooks or a replaced forward, which only its own forward runs"


def shift_layer_output(module, args, output):
    return (output[0] + 0.7, *output[1:]) if isinstance(output, tuple) else output + 0.7


@pytest.mark.parametrize("where", ["layer", "attention"])
def test_a_hook_added_inside_the_model_after_a_decode_is_honoured(where):
    """The lean forward calls a layer's and its attention's parts directly, so their hooks would not run:
    a hook added there after the verdict was cached must still send the model to its own forward."""
    m, inputs = make_model(seed=1, vocab_size=32), batch((5,), vocab_size=32)
    generate_with_tree_attention(m, **inputs, **GEN)  # the lean verdict is cached for this model
    layer = m.model.layers[0]
    (layer if where == "layer" else layer.self_attn).register_forward_hook(shift_layer_output)
    assert lean_unsupported(m).startswith(f"model.layers.0{'' if where == 'layer' else '.self_attn'} has forward hooks")
    ref = m.generate(**inputs, **{k: v for k, v in GEN.items() if k != "always_beam"})
    assert torch.equal(generate_with_tree_attention(m, **inputs, **GEN).sequences, ref.sequences)


@pytest.mark.parametrize("attribute", ["forward", "_hf_hook"])
def test_a_replaced_layer_forward_keeps_the_hf_forward(attribute):
    m = make_model()
    layer = m.model.layers[0]
    setattr(layer, attribute, layer.forward)  # instance attributes, as accelerate's hooks and patches set them
    assert lean_unsupported(m).startswith("model.layers.0 has forward hooks or a replaced forward")


def test_a_global_forward_hook_keeps_the_hf_forward():
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, output: None)
    try:
        assert lean_unsupported(make_model()).startswith("global forward hooks")
    finally:
        handle.remove()


def test_a_lean_forward_that_disagrees_with_hf_is_not_used(monkeypatch):
    honest = lean.lean_forward
    monkeypatch.setattr(lean, "lean_forward", lambda *args: honest(*args) * (1 + 1e-5))
    lm = tree_lm(make_model(seed=7))
    assert lm.forward_kind == "hf: its logits differ from the HF forward's on a check tree"
    assert lm.lean_forward is None


def test_the_check_runs_again_when_the_model_changes_dtype(monkeypatch):
    m, checked = make_model(seed=8), []
    honest = lean._differs_from_hf
    monkeypatch.setattr(lean, "_differs_from_hf", lambda model: checked.append(1) or honest(model))
    lean_unsupported(m), lean_unsupported(m)
    lean_unsupported(m.float())
    assert len(checked) == 2


def test_lean_forward_writes_the_slot_cache_in_place():
    m, inputs = make_model(), batch((6, 3))
    lm, addresses = slot_lm(m, num_slots(6, 3, 2)), []
    with torch.inference_mode():
        for _ in range(2):
            feed_tree(lm, inputs)
            addresses.append([(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in lm.cache.layers])
    assert addresses[0] == addresses[1]
    assert lm.cache.layers[0].keys.shape[2] == num_slots(6, 3, 2)


def test_a_decode_plan_is_kept_per_forward_kind():
    m, inputs = make_model(seed=9), batch((6, 4))
    n = inputs["input_ids"].shape[1]
    plan = dict(cfg=BeamConfig(num_beams=4, prompt_len=n, max_length=n + 3), processors=LogitsProcessorList(),
                stopping=StoppingCriteriaList([MaxLengthCriteria(n + 3)]), num_return_sequences=4, fill_value=-1,
                capture=False)
    lean_out = planned_beam_search(m, inputs["input_ids"], inputs["attention_mask"], **plan)
    with hf_forward():
        hf_out = planned_beam_search(m, inputs["input_ids"], inputs["attention_mask"], **plan)
    assert hf_out.stats["new_plan"] and hf_out.stats["forward"].startswith("hf:")
    assert lean_out.stats["forward"] == "lean" and torch.equal(lean_out.sequences, hf_out.sequences)


class PlainMLP(torch.nn.Module):
    """An MLP without HF's gate/up/down parts: the lean forward cannot call it by parts."""

    def __init__(self, hidden: int):
        super().__init__()
        self.fc = torch.nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.fc(x)


def test_a_model_whose_mlp_is_not_gated_keeps_the_hf_forward():
    m = make_model()
    m.model.layers[0].mlp = PlainMLP(m.config.hidden_size)
    assert lean_unsupported(m).startswith("PlainMLP is not a gated MLP")
    lm = tree_lm(m)
    assert lm.lean_forward is None and lm.forward_kind.startswith("hf: PlainMLP is not a gated MLP")
