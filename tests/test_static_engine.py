"""The static engine: HF's beam search on a cache allocated once, with no host sync inside a decode.

Differential tests against HF generate() (the oracle) for what the engine adds: wide beams (K up
to 512, more beams than tokens), batches, the item trie; then the engine's own promises: the
cache is written in place, the decode unit never synchronises with the host, and what the engine
does not cover runs on the dynamic path with the reason in the stats.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from helpers import (
    ARCHS,
    FIRST_FREE_TOKEN,
    assert_same_beams,
    batch,
    examples,
    fresh_copy,
    hf_generate,
    left_pad,
    make_model,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LogitsProcessorList, StoppingCriteriaList
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from atspeed import beam_search_by_TreeAttn
from atspeed.decoding.beam import BeamConfig
from atspeed.decoding.static import decode, num_slots
from atspeed.hf import generate as generate_module
from atspeed.hf.generate import generate_with_tree_attention
from atspeed.hf.graphs import capture_unsupported, planned_beam_search
from atspeed.hf.lean import slot_lm
from atspeed.hf.model import TreeLM
from atspeed.hf.slot_cache import SlotCache
from atspeed.rec.trie import TrieLogitsProcessor, build_trie

DICT = dict(return_dict_in_generate=True, output_scores=True)


@functools.lru_cache(maxsize=None)
def model(arch: str = "llama", seed: int = 0, vocab_size: int = 64):
    return make_model(arch, seed=seed, vocab_size=vocab_size)


def static(m, **kwargs):
    return generate_with_tree_attention(m, always_beam=True, engine="static", **kwargs)


def trie_processor(vocab_size: int, prompt_len: int, num_items: int = 40, id_length: int = 3, seed: int = 0):
    """A random catalogue of `num_items` distinct 3-token items, as an item-trie logits processor."""
    g = torch.Generator().manual_seed(seed)
    items = set()
    while len(items) < num_items:
        items.add(tuple(torch.randint(FIRST_FREE_TOKEN, vocab_size, (id_length,), generator=g).tolist()))
    trie = build_trie(sorted(items), vocab_size)
    return LogitsProcessorList([TrieLogitsProcessor(trie, prompt_len)])


@pytest.mark.parametrize("num_beams", [32, 128, 512])
def test_wide_beams_equal_hf(num_beams):
    m, inputs = model(), batch((6, 3))
    kwargs = dict(**inputs, max_new_tokens=3, num_beams=num_beams, num_return_sequences=num_beams, **DICT)
    out = static(m, **kwargs)
    assert out.stats["engine"] == "static"
    assert_same_beams(hf_generate(m, **kwargs), out, num_beams)


def test_more_beams_than_tokens_equal_hf():
    m, inputs = model(vocab_size=16), batch((5, 3), vocab_size=16)
    kwargs = dict(**inputs, max_new_tokens=3, num_beams=40, num_return_sequences=40, **DICT)
    assert_same_beams(hf_generate(m, **kwargs), static(m, **kwargs), 40)


@pytest.mark.parametrize("num_beams", [5, 40])
def test_item_trie_constrained_beams_equal_hf(num_beams):
    m, inputs = model(), batch((7, 4, 2))
    processors = trie_processor(64, inputs["input_ids"].shape[1])
    kwargs = dict(**inputs, max_new_tokens=3, num_beams=num_beams, num_return_sequences=num_beams, **DICT)
    out = static(m, logits_processor=processors, **kwargs)
    assert_same_beams(hf_generate(m, logits_processor=processors, **kwargs), out, num_beams)


def test_one_beam_gives_hf_greedy_sequences():
    m, inputs = model(), batch((7, 3))
    out = beam_search_by_TreeAttn(m, inputs, max_new_tokens=6, beam_size=1)
    assert torch.equal(out["beam_sequences"], hf_generate(m, **inputs, max_new_tokens=6, num_beams=1))


@settings(max_examples=examples(25))
@given(data=st.data())
def test_static_engine_equals_hf_on_random_requests(data):
    """Random architecture, batch, prompt lengths (hence padding), K from 2 to 256, new tokens,
    EOS and the item trie: the same hypotheses and scores as HF."""
    m = model(data.draw(st.sampled_from(ARCHS), label="arch"), data.draw(st.integers(0, 2), label="seed"))
    lengths = data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=4), label="prompt lengths")
    inputs = batch(lengths, seed=data.draw(st.integers(0, 99), label="prompt seed"))
    K = data.draw(st.sampled_from([2, 3, 8, 24, 64, 256]), label="num_beams")
    kwargs = dict(**inputs, num_beams=K, num_return_sequences=data.draw(st.integers(1, K), label="R"), **DICT)
    kwargs["max_new_tokens"] = data.draw(st.integers(1, 6), label="max_new_tokens")
    if data.draw(st.booleans(), label="eos"):
        kwargs["eos_token_id"] = data.draw(st.integers(FIRST_FREE_TOKEN, 63), label="eos id")
    elif data.draw(st.booleans(), label="trie"):
        kwargs.update(max_new_tokens=3, logits_processor=trie_processor(64, inputs["input_ids"].shape[1]))
    out = static(m, **kwargs)
    assert_same_beams(hf_generate(m, **kwargs), out, kwargs["num_return_sequences"])


def test_batch_of_requests_equals_each_request_alone():
    m = model()
    texts = [[5, 9, 13, 7], [22], [40, 41, 42, 43, 44, 45]]
    kwargs = dict(max_new_tokens=4, num_beams=6, num_return_sequences=6, **DICT)
    together = static(m, **left_pad(texts), **kwargs)
    for b, text in enumerate(texts):
        alone = static(m, **left_pad([text]), **kwargs)
        rows = slice(6 * b, 6 * (b + 1))
        assert torch.equal(together.sequences[rows, -4:], alone.sequences[:, -4:])
        torch.testing.assert_close(together.sequences_scores[rows], alone.sequences_scores)


def test_cache_is_allocated_once_and_written_in_place():
    m, inputs = model(), batch((6, 3))
    n, K, T = inputs["input_ids"].shape[1], 4, 5
    cache = SlotCache(num_slots(n, K, T))
    lm = TreeLM(m, cache)
    addresses = []
    original_write = lm.write

    def write(*args, **kwargs):
        logits = original_write(*args, **kwargs)
        addresses.append([(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers])
        return logits

    lm.write = write
    cfg = BeamConfig(num_beams=K, prompt_len=n, max_length=n + T)
    decode(lm, inputs["input_ids"], inputs["attention_mask"], cfg, LogitsProcessorList(), MaxLengthCriteria(n + T))
    assert len(addresses) == T  # the prefill and T - 1 levels
    assert all(a == addresses[0] for a in addresses)
    assert cache.layers[0].keys.shape[2] == n + (T - 1) * K


def test_target_reads_the_prompt_once_and_k_tokens_per_level():
    m, inputs = model(), batch((6, 6))
    out = static(m, **inputs, max_new_tokens=4, num_beams=5, num_return_sequences=5, **DICT)
    assert out.stats["target_calls"] == 4
    assert out.stats["target_tokens"] == 2 * 6 + 3 * 2 * 5


# -- no host synchronisation inside a decode ------------------------------------------------------

# Ops that make the host wait for the device: reading a value (.item(), bool(), int()) or an
# output whose shape depends on the data.
HOST_SYNC_OPS = (
    torch.ops.aten._local_scalar_dense,
    torch.ops.aten.nonzero,
    torch.ops.aten.masked_select,
    torch.ops.aten._unique2,
    torch.ops.aten.unique_consecutive,
)


class HostSyncError(AssertionError):
    pass


class ForbidHostSync(TorchDispatchMode):
    """Fails on any op that would synchronise a GPU with the host (detectable on CPU tensors too)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in HOST_SYNC_OPS:
            raise HostSyncError(f"host sync inside the decode: {func}")
        return func(*args, **(kwargs or {}))


def test_host_sync_detector_catches_a_sync():
    with pytest.raises(HostSyncError), ForbidHostSync():
        bool(torch.ones(2).sum() > 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_unit_never_syncs_with_the_host(arch):
    """Prefill, T - 1 fed levels, HF's processors (item trie), stopping criteria (max length, EOS)
    and beam steps: all tensor ops, as a CUDA graph capture needs."""
    m, inputs = model(arch), batch((7, 3))
    n, K, T = inputs["input_ids"].shape[1], 8, 3
    cfg = BeamConfig(num_beams=K, prompt_len=n, max_length=n + T, num_eos=1)
    stopping = StoppingCriteriaList([MaxLengthCriteria(n + T), EosTokenCriteria(torch.tensor([2]))])
    lm = slot_lm(m, num_slots(n, K, T))  # the lean forward where the engine uses it, else HF's
    with torch.inference_mode(), ForbidHostSync():
        state, _ = decode(lm, inputs["input_ids"], inputs["attention_mask"], cfg, trie_processor(64, n), stopping)
    assert state.cur_len == n + T


# -- what runs where --------------------------------------------------------------------------------


def test_beam_sampling_runs_on_the_dynamic_path_with_the_reason():
    m, inputs = model(), batch((5,))
    out = generate_with_tree_attention(
        m, always_beam=True, **inputs, max_new_tokens=3, num_beams=3, do_sample=True, **DICT
    )
    assert out.stats["engine"] == "dynamic: beam sampling runs on the dynamic path"


def test_long_generation_runs_on_the_dynamic_path_with_the_reason():
    m, inputs = model(), batch((5,))
    out = generate_with_tree_attention(m, always_beam=True, **inputs, max_new_tokens=65, num_beams=2, **DICT)
    assert out.stats["engine"].startswith("dynamic: max_new_tokens=65 > 64")


def test_insisting_on_the_static_engine_where_it_cannot_run_is_an_error():
    m, inputs = model(), batch((5,))
    with pytest.raises(NotImplementedError, match="the static engine cannot run this request: beam sampling"):
        static(m, **inputs, max_new_tokens=3, num_beams=3, do_sample=True)


def test_unknown_engine_is_an_error():
    m, inputs = model(), batch((5,))
    with pytest.raises(ValueError, match="engine must be one of"):
        generate_with_tree_attention(m, always_beam=True, engine="turbo", **inputs, max_new_tokens=3, num_beams=3)


# -- plans: the static buffers of one request shape, reused (captured as a CUDA graph on a GPU) ----


def plan_kwargs(m, inputs, K=4, T=3, processors=None):
    n = inputs["input_ids"].shape[1]
    cfg = BeamConfig(num_beams=K, prompt_len=n, max_length=n + T)
    return dict(
        model=m,
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        cfg=cfg,
        processors=processors or LogitsProcessorList(),
        stopping=StoppingCriteriaList([MaxLengthCriteria(n + T)]),
        num_return_sequences=K,
        fill_value=-1,
        capture=False,
    )


def test_a_plan_gives_what_the_eager_static_engine_gives():
    m, trie = fresh_copy(model()), trie_processor(64, 6)
    for seed in range(3):  # one plan, three requests of the same shape
        inputs = batch((6, 4), seed=seed)
        out = planned_beam_search(**plan_kwargs(m, inputs, processors=trie))
        ref = static(m, **inputs, max_new_tokens=3, num_beams=4, num_return_sequences=4, **DICT, logits_processor=trie)
        assert torch.equal(out.sequences, ref.sequences) and torch.equal(out.sequences_scores, ref.sequences_scores)
        assert out.stats["new_plan"] == (seed == 0)


def test_a_plans_results_do_not_change_when_it_serves_the_next_request():
    m = fresh_copy(model())
    first = planned_beam_search(**plan_kwargs(m, batch((6, 4), seed=0)))
    kept = first.sequences.clone()
    planned_beam_search(**plan_kwargs(m, batch((6, 4), seed=1)))
    assert torch.equal(first.sequences, kept)


def test_another_item_catalogue_gets_another_plan():
    m = fresh_copy(model())
    planned_beam_search(**plan_kwargs(m, batch((6, 4)), processors=trie_processor(64, 6, seed=0)))
    assert planned_beam_search(**plan_kwargs(m, batch((6, 4)), processors=trie_processor(64, 6, seed=1))).stats[
        "new_plan"
    ]


def test_another_shape_gets_another_plan():
    m = fresh_copy(model())
    planned_beam_search(**plan_kwargs(m, batch((6, 4))))
    assert planned_beam_search(**plan_kwargs(m, batch((6, 4)), K=5)).stats["new_plan"]
    assert not planned_beam_search(**plan_kwargs(m, batch((6, 4)), K=5)).stats["new_plan"]


def test_processors_without_a_graph_key_are_not_captured():
    reason = capture_unsupported(LogitsProcessorList([lambda ids, scores: scores]), StoppingCriteriaList())
    assert "not known to be capturable" in reason
    assert capture_unsupported(trie_processor(64, 6), StoppingCriteriaList([MaxLengthCriteria(9)])) is None



@pytest.fixture
def failing_capture(monkeypatch):
    """A GPU whose capture fails, simulated on the CPU: the model counts as on CUDA, streams do
    nothing, and entering torch.cuda.graph raises as a host sync inside a capture would. Yields the
    list of capture attempts."""

    class Stream:
        def wait_stream(self, other):
            pass

    attempts = []

    @contextlib.contextmanager
    def graph(cuda_graph):
        attempts.append(cuda_graph)
        raise RuntimeError("operation not permitted when stream is capturing")
        yield

    monkeypatch.setattr(generate_module, "model_device", lambda m: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    return attempts


GRAPH_REQUEST = dict(max_new_tokens=3, num_beams=4, num_return_sequences=4, return_dict_in_generate=True)


def test_a_failed_capture_runs_the_decode_eagerly_and_says_why(failing_capture):
    m, inputs = fresh_copy(model()), batch((6, 4))
    with pytest.warns(UserWarning, match=r"an earlier capture of this model failed \(RuntimeError: operation not"):
        out = generate_with_tree_attention(m, always_beam=True, **inputs, **GRAPH_REQUEST)
    assert out.stats["engine"].startswith("static (no graph: an earlier capture of this model failed")
    assert torch.equal(out.sequences, hf_generate(m, **inputs, **GRAPH_REQUEST).sequences)


def test_a_model_whose_capture_failed_is_not_captured_again(failing_capture):
    m = fresh_copy(model())
    with pytest.warns(UserWarning):
        generate_with_tree_attention(m, always_beam=True, **batch((6, 4)), **GRAPH_REQUEST)
    out = generate_with_tree_attention(m, always_beam=True, **batch((6, 4), seed=1), **GRAPH_REQUEST)
    assert len(failing_capture) == 1
    assert "an earlier capture of this model failed" in out.stats["engine"]


def test_the_graph_engine_refuses_a_decode_whose_capture_fails(failing_capture):
    m, inputs = fresh_copy(model()), batch((6, 4))
    with pytest.raises(NotImplementedError, match="the decode cannot be captured: RuntimeError: operation not"):
        generate_with_tree_attention(m, always_beam=True, engine="graph", **inputs, **GRAPH_REQUEST)

def test_graph_engine_needs_a_cuda_device():
    m, inputs = model(), batch((5,))
    with pytest.raises(NotImplementedError, match="CUDA graphs need a CUDA device"):
        generate_with_tree_attention(m, always_beam=True, engine="graph", **inputs, max_new_tokens=3, num_beams=3)
