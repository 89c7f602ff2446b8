"""Strict speculative beam search on the static engine: every request of a batch accepts and
advances on its own, and each gets exactly the target's beam search of that request alone.

The oracle is tree-attention beam search of each request alone (itself equal to HF generate(),
see test_tree_beam_search_*) and, for the whole batch, HF generate().
"""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import FIRST_FREE_TOKEN, assert_same_beams, examples, fresh_copy, hf_generate, left_pad, make_model
from hypothesis import given, settings
from hypothesis import strategies as st
from test_static_engine import ForbidHostSync, trie_processor
from transformers import LogitsProcessorList

from atspeed.beamsd import beam_search_by_SD, beam_search_by_TreeAttn
from atspeed.decoding.beam import BeamConfig
from atspeed.decoding.static_speculative import Layout, layout, speculative_rounds
from atspeed.hf.model import TreeLM
from atspeed.hf.slot_cache import SlotCache


@functools.lru_cache(maxsize=None)
def target():
    return make_model("llama", seed=0)


@functools.lru_cache(maxsize=None)
def draft(kind: str):
    """identical: always right; noisy: the target's weights plus noise (agrees often, not always);
    unrelated: another random model (agrees almost never)."""
    if kind == "identical":
        return fresh_copy(target())
    if kind == "unrelated":
        return make_model("llama", seed=7)
    noisy = fresh_copy(target())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return noisy


def static_sd(texts, K, kind="noisy", N=None, gamma=3, new=6, **kwargs):
    return beam_search_by_SD(
        target(),
        draft(kind),
        left_pad(texts),
        max_new_tokens=new,
        gamma=gamma,
        beam_size=K,
        draft_beam_size=N or max(K, 5),
        engine="static",
        **kwargs,
    )


def assert_each_request_as_alone(texts, out, K, new=6, **kwargs):
    """Request b of the batch gets exactly the tree-attention beam search of request b alone."""
    n = max(len(t) for t in texts)
    for b, text in enumerate(texts):
        alone = beam_search_by_TreeAttn(target(), left_pad([text]), max_new_tokens=new, beam_size=K, **kwargs)
        rows = slice(b * K, (b + 1) * K)
        generated = out["beam_sequences"][rows, n:]
        expected = alone["beam_sequences"][:, len(text) :]
        assert torch.equal(generated[:, : expected.shape[1]], expected), f"request {b}"
        assert torch.equal(out["beam_scores"][rows], alone["beam_scores"]), f"request {b}"


@pytest.mark.parametrize("kind", ["identical", "noisy", "unrelated"])
def test_every_request_gets_its_own_beam_search_whatever_the_draft(kind):
    texts = [[5, 9, 13, 7], [22], [40, 41, 42, 43, 44, 45], [8, 8]]
    out = static_sd(texts, K=4, kind=kind)
    assert out["engine"] == "static"
    assert_each_request_as_alone(texts, out, K=4)


def test_batch_equals_hf_generate():
    texts = [[5, 9, 13, 7], [22, 23, 24], [40, 41]]
    out = static_sd(texts, K=5)
    ref = hf_generate(
        target(),
        **left_pad(texts),
        max_new_tokens=6,
        num_beams=5,
        num_return_sequences=5,
        return_dict_in_generate=True,
        output_scores=True,
    )
    assert_same_beams(ref, out, 5)


@settings(max_examples=examples(20))
@given(data=st.data())
def test_static_speculative_equals_each_request_alone_on_random_requests(data):
    """Random batch, prompt lengths, K, N, gamma, new tokens, draft, EOS and the item trie."""
    texts = data.draw(
        st.lists(st.lists(st.integers(FIRST_FREE_TOKEN, 63), min_size=1, max_size=7), min_size=1, max_size=4),
        label="prompts",
    )
    K = data.draw(st.sampled_from([1, 2, 3, 5, 8]), label="K")
    N = data.draw(st.sampled_from([K, K + 3, 2 * K + 4]), label="N")
    gamma = data.draw(st.integers(1, 4), label="gamma")
    new = data.draw(st.integers(1, 8), label="new tokens")
    kwargs = {}
    if data.draw(st.booleans(), label="eos"):
        kwargs["eos_token_id"] = data.draw(st.integers(FIRST_FREE_TOKEN, 63), label="eos id")
    elif data.draw(st.booleans(), label="trie"):
        new = 3
        kwargs["logits_processor"] = trie_processor(64, max(len(t) for t in texts))
    kind = data.draw(st.sampled_from(["identical", "noisy", "unrelated"]), label="draft")
    out = static_sd(texts, K=K, kind=kind, N=N, gamma=gamma, new=new, **kwargs)
    assert out["engine"] == "static"
    if "logits_processor" in kwargs:  # the trie's prompt length is the batch's: compare with HF batched
        ref = beam_search_by_TreeAttn(target(), left_pad(texts), max_new_tokens=new, beam_size=K, **kwargs)
        assert torch.equal(out["beam_sequences"], ref["beam_sequences"])
        assert torch.equal(out["beam_scores"], ref["beam_scores"])
    else:
        assert_each_request_as_alone(texts, out, K, new=new, **kwargs)


def test_requests_accept_different_numbers_of_levels_in_one_round():
    texts = [[4, 5, 6], [30, 31], [50], [9, 9, 9, 9], [17, 3], [60, 61, 62]]
    out = static_sd(texts, K=1, new=8)
    per_request = torch.tensor(out["per_request_accepted"])  # [B, rounds], -1 where not taking part
    assert len(set(per_request[:, 0].tolist())) > 1, "the test needs requests that accept differently"
    assert_each_request_as_alone(texts, out, K=1, new=8)


def test_independent_rows_need_no_more_rounds_than_lockstep():
    texts = [[4, 5, 6], [30, 31], [50], [9, 9, 9, 9], [17, 3], [60, 61, 62]]
    static = static_sd(texts, K=1, new=8)
    lockstep = beam_search_by_SD(
        target(),
        draft("noisy"),
        left_pad(texts),
        max_new_tokens=8,
        gamma=3,
        beam_size=1,
        draft_beam_size=5,
        engine="dynamic",
    )
    assert static["n_run"] <= lockstep["n_run"]
    assert torch.equal(static["beam_sequences"], lockstep["beam_sequences"])


def test_always_right_draft_decodes_in_one_target_call_per_round():
    out = static_sd([[5, 9, 13, 7], [22, 23]], K=4, kind="identical", N=4, gamma=3, new=4)
    assert out["n_run"] == 1 and out["target_calls"] == 1
    assert out["per_round_accepted"] == [3.0] and out["ave_accept_rate"] == 1.0
    assert out["draft_calls"] == 3  # the prompt, then levels 1 and 2 (level 3 is never read back)


def test_first_round_reads_prompt_and_tree_in_one_target_forward():
    out = static_sd([[5, 9, 13, 7, 8, 2]], K=4, kind="identical", N=4, gamma=3, new=4)
    assert out["target_tokens"] == 6 + 4 * 3


def test_unrelated_draft_moves_one_token_a_round():
    out = static_sd([[5, 9, 13, 7]], K=3, kind="unrelated", new=5)
    assert out["n_run"] == 5 and out["total_accept_steps"] == 0


def test_layout_drafts_no_deeper_than_a_round_can_accept():
    lay = Layout(prompt_slots=10, num_beams=4, draft_beams=6, gamma=3, rounds=4)
    assert [lay.gamma_at(r) for r in (1, 2, 3, 4)] == [3, 2, 1, 0]
    assert lay.round_start(2) == 10 + 18 and lay.level_start(2, 1) == 10 + 18 + 4
    assert lay.num_slots == 10 + 18 + (4 + 12) + (4 + 6) + 4


def test_cpu_default_is_the_lockstep_path_with_its_reason():
    out = beam_search_by_SD(
        target(), draft("noisy"), left_pad([[5, 6]]), max_new_tokens=3, gamma=2, beam_size=2, draft_beam_size=4
    )
    assert out["engine"].startswith("dynamic: on CPU")


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        (dict(do_sample=True), "relaxed"),
        (dict(logits_processor=LogitsProcessorList([lambda ids, scores: scores])), "no per-row form"),
        (dict(max_new_tokens=17), "max_new_tokens=17"),
    ],
)
def test_what_the_static_engine_does_not_cover_is_refused_when_insisted_on(kwargs, reason):
    settings = dict(max_new_tokens=3, gamma=2, beam_size=2, draft_beam_size=4, engine="static") | kwargs
    with pytest.raises(NotImplementedError, match=reason):
        beam_search_by_SD(target(), draft("noisy"), left_pad([[5, 6]]), **settings)


def test_the_rounds_never_sync_with_the_host():
    inputs = left_pad([[5, 9, 13, 7], [22]])
    n, K, N, gamma, T = inputs["input_ids"].shape[1], 3, 6, 2, 4
    cfg = BeamConfig(num_beams=K, prompt_len=n, max_length=n + T, eos_token_ids=(2,), num_eos=1)
    slots = layout(cfg, N, gamma).num_slots
    t, d = TreeLM(target(), SlotCache(slots)), TreeLM(draft("noisy"), SlotCache(slots))
    with torch.inference_mode(), ForbidHostSync():
        state, counters = speculative_rounds(
            t, d, inputs["input_ids"], inputs["attention_mask"], cfg, N, gamma, trie_processor(64, n)[0].per_row
        )
    assert len(counters.per_round) == T
