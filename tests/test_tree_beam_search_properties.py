"""Property-based differential tests: for random tiny models, prompts and beam-search settings,
tree-attention beam search gives exactly HF's result (hypotheses, scores, beam indices and the
per-step processed scores), a batch gives what each prompt gives alone, and the function API
agrees with generate().

Deterministic: the "ci" hypothesis profile (conftest.py) derandomizes the examples.
"""

from __future__ import annotations

import functools

import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList

from atspeed import beam_search_by_TreeAttn
from helpers import (
    ARCHS,
    FIRST_FREE_TOKEN,
    PAD,
    assert_same_beams,
    assert_same_step_tensors,
    examples,
    frequent_tokens,
    hf_fill_value,
    hf_generate,
    left_pad,
    make_model,
    pad_generated,
    per_request,
    tree_generate,
)


@functools.lru_cache(maxsize=None)
def cached_model(arch: str, seed: int, vocab_size: int, num_layers: int):
    return make_model(arch, seed=seed, vocab_size=vocab_size, num_layers=num_layers)


@st.composite
def models(draw):
    arch = draw(st.sampled_from(ARCHS))
    seed = draw(st.integers(0, 3))
    vocab_size = draw(st.sampled_from([64, 96]))
    num_layers = draw(st.sampled_from([1, 2]))
    return cached_model(arch, seed, vocab_size, num_layers)


def prompt_lists(vocab_size: int, max_batch: int = 3, max_len: int = 8):
    token = st.integers(FIRST_FREE_TOKEN, vocab_size - 1)
    return st.lists(st.lists(token, min_size=1, max_size=max_len), min_size=1, max_size=max_batch)


class ParityProcessor:
    """A custom processor that depends on the running sequences (as LogitsProcessorList item)."""

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, input_ids, scores):
        parity = torch.arange(scores.shape[-1], device=scores.device) % 2 == (input_ids[:, -1:] % 2)
        return scores - self.weight * parity


@st.composite
def search_settings(draw, model, inputs, max_beams: int = 8):
    """num_beams, num_return_sequences, lengths, EOS ids (tokens HF actually generates, so that
    hypotheses do end), length penalty, early stopping and optional logits processors."""
    vocab = model.config.vocab_size
    K = draw(st.sampled_from([k for k in (2, 3, 4, 5, 6, 8, 12, 16) if k <= max_beams] + [16]))
    R = draw(st.integers(1, K))
    max_new = draw(st.sampled_from([1, 2, 3, 5, 8, 12, 17, 24, 33]))  # 17 and 33: past cache compaction
    s = dict(max_new_tokens=max_new, num_beams=K, num_return_sequences=R)
    if draw(st.integers(0, 3)):  # EOS in 3 cases out of 4
        pool = frequent_tokens(model, inputs, 4, 6)
        s["eos_token_id"] = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
        if draw(st.booleans()):
            s["min_new_tokens"] = draw(st.integers(1, max_new))
    else:
        s["eos_token_id"] = None
    s["pad_token_id"] = draw(st.sampled_from([PAD, None, 5]))
    s["length_penalty"] = draw(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]))
    s["early_stopping"] = draw(st.sampled_from([False, True, "never"]))
    if draw(st.booleans()):
        s["no_repeat_ngram_size"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        s["repetition_penalty"] = draw(st.sampled_from([0.8, 1.3, 2.0]))
    if draw(st.booleans()):
        banned = draw(st.lists(st.integers(FIRST_FREE_TOKEN, vocab - 1), min_size=1, max_size=3, unique=True))
        s["bad_words_ids"] = [[t] for t in banned]
    if draw(st.booleans()):
        width = draw(st.integers(2, 12))

        def allowed(batch_id, ids, width=width):  # a window of tokens that moves with the last token
            start = int(ids[-1]) % (vocab - width)
            return list(range(start, start + width))

        s["prefix_allowed_tokens_fn"] = allowed
    if draw(st.booleans()):
        s["logits_processor"] = LogitsProcessorList([ParityProcessor(draw(st.sampled_from([0.5, 2.0])))])
    return s


@settings(max_examples=examples(150))
@given(data=st.data())
def test_tree_beam_search_equals_hf_beam_search(data):
    model = data.draw(models(), label="model")
    texts = data.draw(prompt_lists(model.config.vocab_size), label="prompts")
    inputs = left_pad(texts)
    s = data.draw(search_settings(model, inputs), label="settings")
    kwargs = dict(**inputs, **s, return_dict_in_generate=True, output_scores=True)
    engine = data.draw(st.sampled_from(["auto", "dynamic"]), label="engine")  # auto: static where it applies
    ref = hf_generate(model, **kwargs)
    out = tree_generate(model, engine=engine, **kwargs)
    assert_same_beams(ref, out, s["num_return_sequences"])
    assert_same_step_tensors(ref.scores, out.scores, "scores")
    # Invariants that HF's result has, so atspeed's must too.
    n = inputs["input_ids"].shape[1]
    B, R = len(texts), s["num_return_sequences"]
    assert out.sequences.shape[0] == B * R
    assert torch.equal(out.sequences[:, :n], inputs["input_ids"].repeat_interleave(R, dim=0))
    scores = out.sequences_scores.view(B, R)
    assert torch.all(scores[:, :-1] >= scores[:, 1:]), "hypotheses must be sorted by score"
    event(f"num_beams={s['num_beams']}")
    event(f"engine: {out.stats['engine'].split(':')[0]}")
    event(f"steps run: {'<= 5' if len(out.scores) <= 5 else '> 5'}")
    if s["eos_token_id"]:
        ended = torch.isin(out.sequences[:, n:], torch.tensor(s["eos_token_id"])).any()
        event(f"a returned hypothesis contains EOS: {bool(ended)}")


@settings(max_examples=examples(40))
@given(data=st.data())
def test_batch_result_equals_each_prompt_alone(data):
    model = data.draw(models(), label="model")
    texts = data.draw(prompt_lists(model.config.vocab_size, max_batch=3).filter(lambda t: len(t) >= 2), label="prompts")
    inputs = left_pad(texts)
    s = data.draw(search_settings(model, inputs, max_beams=5), label="settings")
    # Processors that read the whole input_ids see the batch's padding tokens (HF semantics), and
    # prefix_allowed_tokens_fn gets a batch_id: those legitimately differ between batch and alone.
    for key in ("prefix_allowed_tokens_fn", "no_repeat_ngram_size", "repetition_penalty"):
        s.pop(key, None)
    kwargs = dict(**s, return_dict_in_generate=True, output_scores=True)
    K, R = s["num_beams"], s["num_return_sequences"]
    out = tree_generate(model, **inputs, **kwargs)
    assert_same_beams(hf_generate(model, **inputs, **kwargs), out, R)
    n = inputs["input_ids"].shape[1]
    steps = out.sequences.shape[1] - n
    fill = hf_fill_value(s["pad_token_id"], s["eos_token_id"])
    for b, text in enumerate(texts):
        alone = tree_generate(model, **left_pad([text]), **kwargs)
        expected = pad_generated(per_request(alone, 0, R, len(text), K), steps, fill)
        assert_same_beams(expected, per_request(out, b, R, n, K), R)


@settings(max_examples=examples(30))
@given(data=st.data())
def test_function_api_equals_hf_generate(data):
    model = data.draw(models(), label="model")
    texts = data.draw(prompt_lists(model.config.vocab_size), label="prompts")
    inputs = left_pad(texts)
    K = data.draw(st.integers(1, 6), label="beam_size")
    max_new = data.draw(st.integers(1, 12), label="max_new_tokens")
    eos = data.draw(st.one_of(st.none(), st.sampled_from(frequent_tokens(model, inputs, 4, 4))), label="eos")
    lp = data.draw(st.sampled_from([0.0, 1.0, 2.0]), label="length_penalty")
    out = beam_search_by_TreeAttn(model, inputs, max_new_tokens=max_new, beam_size=K, eos_token_id=eos,
                                  length_penalty=lp)
    assert out["beam_sequences"].shape[0] == len(texts) * K
    if K == 1:
        if eos is None:  # one beam, no EOS: HF greedy (HF never runs beam search with one beam)
            ref = hf_generate(model, **inputs, max_new_tokens=max_new, num_beams=1, do_sample=False, eos_token_id=None)
            assert torch.equal(out["beam_sequences"], ref)
        return
    ref = hf_generate(model, **inputs, max_new_tokens=max_new, num_beams=K, num_return_sequences=K, eos_token_id=eos,
                      length_penalty=lp, return_dict_in_generate=True, output_scores=True)
    assert_same_beams(ref, out, K)
