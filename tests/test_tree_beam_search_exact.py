"""Hand-picked differential tests: tree-attention beam search must give exactly HF's beam search.

The oracle is the class's own `generate()` (HF). Every test builds a tiny float64 model, runs the
same request through HF and through atspeed, and compares with `assert_same_beams` (identical up
to the order of exactly tied hypotheses) or, for dict outputs, `assert_same_generate_output`
(also the per-step `scores` / `logits` tuples, bit for bit). One behaviour per test.
"""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from atspeed import beam_search_by_TreeAttn, replace_beam_search_with_TreeAttn, tree_attention_generate
from helpers import (
    ARCHS,
    PAD,
    IMPOSSIBLE,
    ForwardRecorder,
    assert_same_beams,
    assert_same_generate_output,
    batch,
    ending_tokens,
    fresh_copy,
    hf_fill_value,
    hf_generate,
    make_model,
    pad_generated,
    per_request,
    random_prompts,
    left_pad,
    tree_generate,
)

DICT = dict(return_dict_in_generate=True, output_scores=True)


@functools.lru_cache(maxsize=None)
def _model(arch: str = "llama", seed: int = 0, **kw):
    return make_model(arch, seed=seed, **kw)


def model(arch: str = "llama", seed: int = 0, **kw):
    """Cached tiny model. Tests never mutate it: HF runs it as is, atspeed patches a copy."""
    return _model(arch, seed, **kw)


def prompts(lengths=(7, 3), seed: int = 1, vocab_size: int = 64):
    return batch(lengths, vocab_size=vocab_size, seed=seed)


def compare(m, rows_per_request: int, engine: str = "auto", **kwargs):
    """Run HF and atspeed on the same request and assert they agree. Returns (hf, atspeed)."""
    ref = hf_generate(m, **kwargs)
    out = tree_generate(m, engine=engine, **kwargs)
    if kwargs.get("return_dict_in_generate"):
        assert_same_generate_output(ref, out, rows_per_request)
    else:
        assert_same_beams(ref, out, rows_per_request)
    return ref, out


def generated(out, prompt_len: int) -> torch.Tensor:
    seq = out if isinstance(out, torch.Tensor) else out.sequences
    return seq[:, prompt_len:]


def eos_ids(m, inputs, count=1, k=4):
    """`count` EOS ids that end some of HF's returned hypotheses for this model and prompt."""
    return ending_tokens(m, inputs, k, count)


# ------------------------------------------------------------------ beam width and lengths


@pytest.mark.parametrize("num_beams", [2, 3, 5, 8, 16, 32])
def test_num_beams_from_2_to_32_match_hf(num_beams):
    m, inputs = model(), prompts()
    compare(m, num_beams, **inputs, max_new_tokens=8, num_beams=num_beams, num_return_sequences=num_beams, **DICT)


def test_num_beams_equal_to_vocab_size_matches_hf():
    m, inputs = model(), prompts((4,))
    compare(m, 64, **inputs, max_new_tokens=3, num_beams=64, num_return_sequences=64, **DICT)


@pytest.mark.parametrize("lengths", [(5,), (7, 3)], ids=["one_prompt", "padded_batch"])
def test_beam_size_one_function_api_without_eos_equals_hf_greedy(lengths):
    """generate(num_beams=1) is greedy search; the function API's beam_size=1 is a 1-beam beam search
    (HF's beam-search semantics), which equals greedy where no EOS ends a hypothesis early."""
    m, inputs = model(), prompts(lengths)
    assert m.generation_config.eos_token_id is None
    greedy = hf_generate(m, **inputs, max_new_tokens=12, num_beams=1, do_sample=False, return_dict_in_generate=True,
                         output_logits=True)
    out = beam_search_by_TreeAttn(m, inputs, max_new_tokens=12, beam_size=1)
    assert torch.equal(out["beam_sequences"], greedy.sequences)
    # A one-beam hypothesis' score is its summed float32 log-probs over its length (length_penalty 1).
    total = torch.zeros(len(lengths))
    for step, logits in enumerate(greedy.logits):
        token = greedy.sequences[:, inputs["input_ids"].shape[1] + step]
        total = total + torch.log_softmax(logits, dim=-1).gather(1, token[:, None])[:, 0]
    assert torch.equal(out["beam_scores"], total / len(greedy.logits))


@pytest.mark.parametrize("num_return_sequences", [1, 2, 4, 5])
def test_num_return_sequences_up_to_num_beams(num_return_sequences):
    m, inputs = model(), prompts()
    eos = eos_ids(m, inputs)
    ref, out = compare(m, num_return_sequences, **inputs, max_new_tokens=10, num_beams=5,
                       num_return_sequences=num_return_sequences, eos_token_id=eos, **DICT)
    assert out.sequences.shape[0] == 2 * num_return_sequences


@pytest.mark.parametrize("max_new_tokens", [1, 2, 15, 16, 17, 33, 48])
@pytest.mark.parametrize("engine", ["static", "dynamic"])
def test_max_new_tokens_including_steps_past_cache_compaction(max_new_tokens, engine):
    m, inputs = model(), prompts()
    ref, out = compare(m, 3, **inputs, max_new_tokens=max_new_tokens, num_beams=3, num_return_sequences=3,
                       engine=engine, **DICT)
    assert out.sequences.shape[1] == inputs["input_ids"].shape[1] + max_new_tokens  # no EOS: full length
    assert out.stats["engine"].startswith(engine)


def test_max_length_instead_of_max_new_tokens():
    m, inputs = model(), prompts()
    compare(m, 2, **inputs, max_length=inputs["input_ids"].shape[1] + 9, num_beams=4, num_return_sequences=2, **DICT)


def test_one_token_prompt():
    m = model()
    compare(m, 3, **prompts((1,)), max_new_tokens=10, num_beams=3, num_return_sequences=3, **DICT)


def test_plain_tensor_output_matches_hf():
    m, inputs = model(), prompts()
    ref, out = compare(m, 4, **inputs, max_new_tokens=10, num_beams=4, num_return_sequences=4,
                       eos_token_id=eos_ids(m, inputs))
    assert isinstance(out, torch.Tensor)


# ------------------------------------------------------------------ EOS handling


def test_eos_finished_hypotheses_match_hf():
    m, inputs = model(), prompts()
    eos = eos_ids(m, inputs)
    ref, out = compare(m, 5, **inputs, max_new_tokens=16, num_beams=5, num_return_sequences=5, eos_token_id=eos, **DICT)
    gen = generated(out, inputs["input_ids"].shape[1])
    assert (gen == eos[0]).any(dim=1).any(), "the test needs some hypotheses that end with EOS"


def test_eos_chosen_at_the_first_step():
    """With length_penalty=0 (plain summed log-probs), if EOS is the most likely first token then the
    one-token hypothesis [EOS] beats every longer one: it must come first."""
    m, inputs = model(), prompts((5,))
    first = hf_generate(m, **inputs, max_new_tokens=1, num_beams=1, do_sample=False)[0, -1].item()
    ref, out = compare(m, 3, **inputs, max_new_tokens=8, num_beams=3, num_return_sequences=3, eos_token_id=first,
                       pad_token_id=7, length_penalty=0.0, **DICT)
    gen = generated(out, 5)
    assert gen[0].tolist() == [first] + [7] * (gen.shape[1] - 1)


def test_min_new_tokens_delays_eos():
    m, inputs = model(), prompts()
    eos = eos_ids(m, inputs)
    ref, out = compare(m, 4, **inputs, max_new_tokens=12, min_new_tokens=5, num_beams=4, num_return_sequences=4,
                       eos_token_id=eos, **DICT)
    assert not (generated(out, inputs["input_ids"].shape[1])[:, :4] == eos[0]).any()


def test_min_length_matches_hf():
    m, inputs = model(), prompts()
    compare(m, 4, **inputs, max_new_tokens=12, min_length=inputs["input_ids"].shape[1] + 4, num_beams=4,
            num_return_sequences=4, eos_token_id=eos_ids(m, inputs), **DICT)


@pytest.mark.parametrize("length_penalty", [-1.0, 0.0, 0.5, 1.0, 2.0])
def test_length_penalty_matches_hf(length_penalty):
    m, inputs = model(), prompts()
    compare(m, 4, **inputs, max_new_tokens=14, num_beams=4, num_return_sequences=4, eos_token_id=eos_ids(m, inputs, 2),
            length_penalty=length_penalty, **DICT)


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [-0.5, 1.0, 2.0])
def test_early_stopping_matches_hf(early_stopping, length_penalty):
    m, inputs = model(), prompts()
    compare(m, 3, **inputs, max_new_tokens=14, num_beams=3, num_return_sequences=3, eos_token_id=eos_ids(m, inputs, 2),
            early_stopping=early_stopping, length_penalty=length_penalty, **DICT)


def test_early_stopping_true_stops_generation_when_beams_are_full():
    """early_stopping=True ends the search once K hypotheses are finished: fewer steps than max_new_tokens."""
    m, inputs = model(), prompts((6,))
    eos = eos_ids(m, inputs, 3)
    ref, out = compare(m, 2, **inputs, max_new_tokens=40, num_beams=2, num_return_sequences=2, eos_token_id=eos,
                       early_stopping=True, **DICT)
    assert len(out.scores) < 40


def test_several_eos_token_ids_match_hf():
    m, inputs = model(), prompts()
    eos = eos_ids(m, inputs, 3)
    ref, out = compare(m, 6, **inputs, max_new_tokens=14, num_beams=6, num_return_sequences=6, eos_token_id=eos, **DICT)
    gen = generated(out, inputs["input_ids"].shape[1])
    assert len({t for t in eos if (gen == t).any()}) >= 2, "the test needs hypotheses ended by different EOS ids"


def test_eos_token_id_from_generation_config():
    m, inputs = fresh_copy(model()), prompts()
    m.generation_config.eos_token_id = eos_ids(m, inputs, 2)
    compare(m, 4, **inputs, max_new_tokens=12, num_beams=4, num_return_sequences=4, **DICT)


@pytest.mark.parametrize("pad_token_id", [None, PAD, 5])
def test_pad_token_id_fills_finished_hypotheses_like_hf(pad_token_id):
    """HF fills after EOS with `pad or eos[0]`: pad_token_id=0 is falsy, so EOS fills then."""
    m, inputs = model(), prompts()
    eos = eos_ids(m, inputs)
    ref, out = compare(m, 5, **inputs, max_new_tokens=16, num_beams=5, num_return_sequences=5, eos_token_id=eos,
                       pad_token_id=pad_token_id, **DICT)
    fill = hf_fill_value(pad_token_id, eos)
    gen = generated(out, inputs["input_ids"].shape[1])
    ended = [row for row in gen.tolist() if eos[0] in row and row.index(eos[0]) < len(row) - 1]
    assert ended, "the test needs a hypothesis that ends before the longest one"
    for row in ended:
        assert set(row[row.index(eos[0]) + 1 :]) == {fill}


# ------------------------------------------------------------------ dict outputs


def test_dict_output_sequences_scores_scores_and_beam_indices_equal_hf():
    m, inputs = model(), prompts()
    ref, out = compare(m, 3, **inputs, max_new_tokens=12, num_beams=4, num_return_sequences=3,
                       eos_token_id=eos_ids(m, inputs), return_dict_in_generate=True, output_scores=True)
    assert out.sequences_scores is not None and out.beam_indices is not None
    assert len(out.scores) == len(ref.scores) and out.scores[0].shape == (2 * 4, 64)
    assert torch.equal(out.beam_indices, ref.beam_indices)
    assert out.logits is None


def test_dict_output_logits_equal_hf():
    m, inputs = model(), prompts()
    ref, out = compare(m, 3, **inputs, max_new_tokens=12, num_beams=4, num_return_sequences=3,
                       eos_token_id=eos_ids(m, inputs), return_dict_in_generate=True, output_logits=True)
    assert out.logits is not None and len(out.logits) == len(ref.logits)
    assert out.scores is None and out.sequences_scores is None


def test_dict_output_scores_and_logits_together_equal_hf():
    m, inputs = model(), prompts()
    compare(m, 4, **inputs, max_new_tokens=12, num_beams=4, num_return_sequences=4, eos_token_id=eos_ids(m, inputs),
            return_dict_in_generate=True, output_scores=True, output_logits=True)


def test_dict_output_without_scores_has_beam_indices_only():
    m, inputs = model(), prompts()
    ref, out = compare(m, 2, **inputs, max_new_tokens=8, num_beams=3, num_return_sequences=2,
                       return_dict_in_generate=True)
    assert out.sequences_scores is None and out.scores is None and out.logits is None
    assert torch.equal(out.beam_indices, ref.beam_indices)


def test_compute_transition_scores_from_atspeed_output_equals_hf():
    m, inputs = model(), prompts()
    ref, out = compare(m, 3, **inputs, max_new_tokens=10, num_beams=3, num_return_sequences=3,
                       eos_token_id=eos_ids(m, inputs), **DICT)
    expected = m.compute_transition_scores(ref.sequences, ref.scores, ref.beam_indices)
    actual = m.compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    assert torch.equal(actual, expected)


# ------------------------------------------------------------------ logits processors


def test_prefix_allowed_tokens_fn_matches_hf():
    m, inputs = model(), prompts()

    def allowed(batch_id, ids):  # alternate a wide and a 3-token vocabulary, per request
        return [5, 6, 7 + batch_id] if ids.shape[-1] % 2 else list(range(3, 40))

    ref, out = compare(m, 4, **inputs, max_new_tokens=10, num_beams=4, num_return_sequences=4,
                       prefix_allowed_tokens_fn=allowed, **DICT)
    n = inputs["input_ids"].shape[1]
    for col in range(n, out.sequences.shape[1]):
        allowed_here = {5, 6, 7, 8} if col % 2 else set(range(3, 40))
        assert set(out.sequences[:, col].tolist()) <= allowed_here


def test_prefix_allowed_tokens_fn_with_fewer_tokens_than_beams_matches_hf():
    """2 tokens allowed for 2 steps is 4 sequences for 6 beams: 2 hypotheses per request are impossible
    (HF's -1e9 bookkeeping scores; compared by score only)."""
    m, inputs = model(), prompts()
    ref, out = compare(m, 6, **inputs, max_new_tokens=2, num_beams=6, num_return_sequences=6,
                       prefix_allowed_tokens_fn=lambda batch_id, ids: [5, 9], **DICT)
    assert (out.sequences_scores <= IMPOSSIBLE).sum() == 2 * 2


def test_bad_words_ids_match_hf():
    m, inputs = model(), prompts()
    frequent = eos_ids(m, inputs, 3)
    ref, out = compare(m, 4, **inputs, max_new_tokens=10, num_beams=4, num_return_sequences=4,
                       bad_words_ids=[[frequent[0]], [frequent[1], frequent[2]]], **DICT)
    assert not (generated(out, inputs["input_ids"].shape[1]) == frequent[0]).any()


def test_no_repeat_ngram_size_matches_hf():
    m, inputs = model(), prompts()
    ref, out = compare(m, 4, **inputs, max_new_tokens=14, num_beams=4, num_return_sequences=4, no_repeat_ngram_size=2,
                       **DICT)
    n = inputs["input_ids"].shape[1]
    for row in out.sequences.tolist():
        for t in range(n, len(row)):  # no generated token repeats a bigram seen before it
            assert (row[t - 1], row[t]) not in set(zip(row[: t - 1], row[1:t]))


@pytest.mark.parametrize("penalty", [0.5, 1.5])
def test_repetition_penalty_matches_hf(penalty):
    m, inputs = model(), prompts()
    compare(m, 4, **inputs, max_new_tokens=12, num_beams=4, num_return_sequences=4, repetition_penalty=penalty,
            eos_token_id=eos_ids(m, inputs), **DICT)


class _ParityPenalty(LogitsProcessor):
    """Depends on the running sequences: penalises tokens of the last token's parity, boosts one id per step."""

    def __call__(self, input_ids, scores):
        parity = torch.arange(scores.shape[-1]) % 2 == (input_ids[:, -1:] % 2)
        boost = torch.arange(scores.shape[-1]) == (3 * input_ids.shape[1]) % scores.shape[-1]
        return scores - 0.7 * parity + 1.5 * boost


def test_custom_logits_processor_list_matches_hf():
    m, inputs = model(), prompts()
    compare(m, 4, **inputs, max_new_tokens=12, num_beams=4, num_return_sequences=4,
            logits_processor=LogitsProcessorList([_ParityPenalty()]), eos_token_id=eos_ids(m, inputs), **DICT)


@pytest.mark.parametrize(
    "options",
    [
        {"sequence_bias": {(20,): -3.0, (37, 48): 2.0}},
        {"suppress_tokens": [20, 37], "begin_suppress_tokens": [45]},
        {"exponential_decay_length_penalty": (4, 1.5)},
        {"renormalize_logits": True, "repetition_penalty": 1.3},
        {"forced_eos_token_id": "eos"},
    ],
    ids=["sequence_bias", "suppress_tokens", "exponential_decay", "renormalize", "forced_eos"],
)
def test_other_hf_processors_match_hf(options):
    m, inputs = model(), prompts()
    eos = eos_ids(m, inputs)
    options = {k: (eos[0] if v == "eos" else v) for k, v in options.items()}
    compare(m, 3, **inputs, max_new_tokens=10, num_beams=3, num_return_sequences=3, eos_token_id=eos, **options, **DICT)


class _StopAfterToken(StoppingCriteria):
    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


def test_custom_stopping_criteria_match_hf():
    m, inputs = model(), prompts()
    stop = eos_ids(m, inputs)[0]
    compare(m, 4, **inputs, max_new_tokens=12, num_beams=4, num_return_sequences=4,
            stopping_criteria=StoppingCriteriaList([_StopAfterToken(stop)]), **DICT)


# ------------------------------------------------------------------ batches with left padding


def test_left_padded_batch_matches_hf_batch():
    m = model()
    inputs = prompts((9, 2, 5, 1), seed=3)
    compare(m, 3, **inputs, max_new_tokens=14, num_beams=4, num_return_sequences=3, eos_token_id=eos_ids(m, inputs, 2),
            **DICT)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_left_padded_batch_rows_equal_each_prompt_alone(arch):
    m = model(arch)
    K, R = 4, 3
    texts = random_prompts((8, 2, 5), seed=5)
    inputs = left_pad(texts)
    eos = eos_ids(m, inputs, 2)
    settings = dict(max_new_tokens=14, num_beams=K, num_return_sequences=R, eos_token_id=eos, **DICT)
    ref, out = compare(m, R, **inputs, **settings)  # batch == HF's batch
    n = inputs["input_ids"].shape[1]
    steps = out.sequences.shape[1] - n
    fill = hf_fill_value(PAD, eos)
    for b, text in enumerate(texts):
        alone = tree_generate(m, **left_pad([text]), **settings)
        expected = pad_generated(per_request(alone, 0, R, len(text), K), steps, fill)
        assert_same_beams(expected, per_request(out, b, R, n, K), R)


# ------------------------------------------------------------------ architectures and attention


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_matches_hf(arch):
    m = model(arch, seed=2)
    inputs = prompts((6, 2), seed=4)
    compare(m, 3, **inputs, max_new_tokens=20, num_beams=4, num_return_sequences=3, eos_token_id=eos_ids(m, inputs, 2),
            return_dict_in_generate=True, output_scores=True, output_logits=True)


def test_eager_attention_matches_hf():
    """GPT-2's eager attention computes its softmax in the model dtype: exact in float64."""
    m = model("gpt2", seed=1, attn_implementation="eager")
    inputs = prompts((6, 2), seed=4)
    compare(m, 3, **inputs, max_new_tokens=10, num_beams=3, num_return_sequences=3, eos_token_id=eos_ids(m, inputs),
            **DICT)


def test_llama_eager_attention_gives_hf_hypotheses():
    """Llama's eager attention computes its softmax in float32 even for float64 models, so the
    tree (more, masked keys) and HF (one beam's keys) round differently in the last float32 bits:
    scores may differ by an ulp. The hypotheses themselves must still be HF's.
    (No padding: HF's own eager float64 path gives NaN on left-padded rows.)"""
    m = model("llama", seed=1, attn_implementation="eager")
    inputs = prompts((6,), seed=4)
    settings = dict(max_new_tokens=10, num_beams=3, num_return_sequences=3, return_dict_in_generate=True)
    ref, out = hf_generate(m, **inputs, **settings), tree_generate(m, **inputs, **settings)
    assert torch.equal(out.sequences, ref.sequences)
    assert torch.equal(out.beam_indices, ref.beam_indices)


def test_one_layer_wider_model_matches_hf():
    m = model("qwen2", seed=3, hidden_size=64, num_layers=1, vocab_size=128)
    inputs = prompts((5, 3), seed=2, vocab_size=128)
    compare(m, 5, **inputs, max_new_tokens=12, num_beams=5, num_return_sequences=5, eos_token_id=eos_ids(m, inputs),
            **DICT)


def test_mistral_within_its_sliding_window_matches_hf():
    m = model("mistral", seed=1, sliding_window=32)
    inputs = prompts((6, 3), seed=2)
    compare(m, 3, **inputs, max_new_tokens=20, num_beams=3, num_return_sequences=3, **DICT)


def test_tree_attention_runs_one_row_per_request():
    """The point of the package: the model never sees B * K rows, and prefill runs once."""
    m, inputs = fresh_copy(model()), prompts()
    replace_beam_search_with_TreeAttn(m)
    with ForwardRecorder(m) as calls:
        m.generate(**inputs, max_new_tokens=6, num_beams=4)
    assert calls.batch_sizes == {2}
    assert calls.shapes[0] == tuple(inputs["input_ids"].shape)  # the prompt, once
    assert all(shape == (2, 4) for shape in calls.shapes[1:])  # then one token per beam


# ------------------------------------------------------------------ entry points


def test_custom_generate_hook_matches_hf():
    m, inputs = model(), prompts()
    settings = dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, eos_token_id=eos_ids(m, inputs), **DICT)
    ref = hf_generate(m, **inputs, **settings)
    with ForwardRecorder(m) as calls:
        out = m.generate(**inputs, **settings, custom_generate=tree_attention_generate)
    assert_same_generate_output(ref, out, 2)
    assert calls.batch_sizes == {2}, "custom_generate=tree_attention_generate must run tree attention"


def test_generation_config_object_matches_hf():
    m, inputs = model(), prompts()
    gc = GenerationConfig(max_new_tokens=9, num_beams=3, num_return_sequences=2, eos_token_id=eos_ids(m, inputs),
                          length_penalty=0.5, pad_token_id=PAD)
    compare(m, 2, **inputs, generation_config=gc)


def test_positional_input_ids_match_hf():
    m, inputs = model(), prompts((6,))
    ref = type(m).generate(m, inputs["input_ids"], max_new_tokens=8, num_beams=3)
    out = replace_beam_search_with_TreeAttn(fresh_copy(m)).generate(inputs["input_ids"], max_new_tokens=8, num_beams=3)
    assert torch.equal(out, ref)


def test_use_cache_false_gives_hf_result():
    m, inputs = model(), prompts()
    compare(m, 3, **inputs, max_new_tokens=8, num_beams=3, num_return_sequences=3, use_cache=False, **DICT)


def test_beamsd_alias_module_exports_the_same_api():
    import beamsd

    import atspeed

    assert beamsd.replace_beam_search_with_TreeAttn is atspeed.replace_beam_search_with_TreeAttn
    assert beamsd.beam_search_by_TreeAttn is atspeed.beam_search_by_TreeAttn
    m, inputs = model(), prompts()
    ref = hf_generate(m, **inputs, max_new_tokens=8, num_beams=3, **DICT)
    out = beamsd.replace_beam_search_with_TreeAttn(fresh_copy(m)).generate(**inputs, max_new_tokens=8, num_beams=3,
                                                                           **DICT)
    assert_same_generate_output(ref, out, 1)


def test_function_api_returns_every_beam_like_hf():
    m, inputs = model(), prompts()
    eos = eos_ids(m, inputs)
    ref = hf_generate(m, **inputs, max_new_tokens=10, num_beams=4, num_return_sequences=4, eos_token_id=eos, **DICT)
    out = beam_search_by_TreeAttn(m, inputs, max_new_tokens=10, beam_size=4, eos_token_id=eos)
    assert out["beam_sequences"].shape == ref.sequences.shape  # [B * K, prompt + new]
    assert out["beam_scores"].shape == (2 * 4,)
    assert_same_beams(ref, out, 4)


def test_function_api_forwards_generate_kwargs():
    m, inputs = model(), prompts()
    eos = eos_ids(m, inputs, 2)
    settings = dict(eos_token_id=eos, length_penalty=2.0, early_stopping="never", num_return_sequences=2,
                    no_repeat_ngram_size=2)
    ref = hf_generate(m, **inputs, max_new_tokens=10, num_beams=4, **settings, **DICT)
    out = beam_search_by_TreeAttn(m, inputs, max_new_tokens=10, beam_size=4, **settings)
    assert_same_beams(ref, out, 2)


def test_function_api_logits_processor_and_prefix_fn_arguments():
    m, inputs = model(), prompts()
    processors = LogitsProcessorList([_ParityPenalty()])
    prefix = lambda batch_id, ids: list(range(3, 30))  # noqa: E731
    ref = hf_generate(m, **inputs, max_new_tokens=8, num_beams=3, num_return_sequences=3, logits_processor=processors,
                      prefix_allowed_tokens_fn=prefix, **DICT)
    out = beam_search_by_TreeAttn(m, inputs, max_new_tokens=8, beam_size=3, logits_processor=processors,
                                  prefix_allowed_tokens_fn=prefix)
    assert_same_beams(ref, out, 3)


@pytest.mark.parametrize("as_1d", [False, True])
def test_function_api_accepts_a_tensor_prompt(as_1d):
    m = model()
    ids = torch.tensor([[5, 17, 9, 33, 21]])
    ref = hf_generate(m, input_ids=ids, max_new_tokens=6, num_beams=3, num_return_sequences=3, **DICT)
    out = beam_search_by_TreeAttn(m, ids[0] if as_1d else ids, max_new_tokens=6, beam_size=3)
    assert_same_beams(ref, out, 3)


def test_function_api_defaults_come_from_generation_config():
    m, inputs = fresh_copy(model()), prompts()
    m.generation_config.num_beams = 3
    m.generation_config.max_new_tokens = 7
    m.generation_config.length_penalty = 0.5
    m.generation_config.eos_token_id = eos_ids(m, inputs)
    ref = hf_generate(m, **inputs, num_return_sequences=3, **DICT)
    out = beam_search_by_TreeAttn(m, inputs)
    assert out["beam_sequences"].shape[0] == 2 * 3
    assert_same_beams(ref, out, 3)


def test_function_api_explicit_arguments_override_generation_config():
    m, inputs = fresh_copy(model()), prompts()
    m.generation_config.num_beams = 3
    m.generation_config.max_new_tokens = 7
    ref = hf_generate(m, **inputs, max_new_tokens=4, num_beams=2, num_return_sequences=2, **DICT)
    out = beam_search_by_TreeAttn(m, inputs, max_new_tokens=4, beam_size=2)
    assert_same_beams(ref, out, 2)
