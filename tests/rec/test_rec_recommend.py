"""recommend(): every decoding method returns K valid, distinct items per user; the exact methods
return HF's list, the samplers seeded draws best first; bad inputs (unknown items, mismatched
vocabularies, missing draft) are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LogitsProcessorList

from atspeed.rec.recipes import new_model
from atspeed.rec.recommend import build_recommender, load_recommender, recommend
from atspeed.rec.tokenizer import build_tokenizer, decode_items, encode_prompts
from atspeed.rec.train import save_final
from atspeed.rec.trie import TrieLogitsProcessor

HISTORIES = [(0, 5, 7, 9), (3,), (100, 200, 300, 400, 500, 1, 2), (42,)]


@pytest.fixture(scope="module")
def target(tokenizer):
    torch.manual_seed(3)
    model = new_model("tiny", tokenizer)
    with torch.no_grad():  # a random tiny model is nearly uniform: spread its scores to avoid ties
        model.lm_head.weight.mul_(20.0)
    return model.double().eval()


@pytest.fixture(scope="module")
def rec(target, tokenizer, synthetic):
    draft = copy.deepcopy(target)
    torch.manual_seed(4)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return build_recommender(target, tokenizer, synthetic.index, draft)


@pytest.mark.parametrize("method", ["hf", "tree", "speculative", "hf-sample", "speculative-relaxed"])
def test_every_method_returns_k_distinct_catalogue_items_per_user(rec, method):
    out = recommend(rec, HISTORIES, 10, method=method, batch_size=3)
    assert len(out.items) == len(HISTORIES)
    for items in out.items:
        assert len(set(items)) == 10 and all(0 <= i < rec.num_items for i in items)
    assert out.scores.shape == (len(HISTORIES), 10)


@pytest.mark.parametrize("method", ["tree", "speculative"])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_exact_methods_return_hfs_lists_and_scores(rec, method, k):
    ref = recommend(rec, HISTORIES, k, method="hf", batch_size=2)
    out = recommend(rec, HISTORIES, k, method=method, batch_size=2)
    assert out.items == ref.items
    torch.testing.assert_close(out.scores, ref.scores)


def test_batch_size_does_not_change_the_lists(rec):
    one = recommend(rec, HISTORIES, 5, method="tree", batch_size=1)
    many = recommend(rec, HISTORIES, 5, method="tree", batch_size=len(HISTORIES))
    assert one.items == many.items


def test_scores_are_sorted_best_first(rec):
    out = recommend(rec, HISTORIES, 8, method="tree")
    assert torch.all(out.scores[:, :-1] >= out.scores[:, 1:])


def test_only_the_last_max_history_items_are_read(rec):
    long = tuple(range(30))
    assert recommend(rec, [long], 5, max_history=20).items == recommend(rec, [long[-20:]], 5).items


def test_target_calls_are_counted_per_user(rec):
    hf = recommend(rec, HISTORIES, 5, method="hf", batch_size=2)
    sd = recommend(rec, HISTORIES, 5, method="speculative", batch_size=2)
    assert hf.target_calls == rec.vocab.id_length  # one forward per generated token
    assert 1 <= sd.target_calls <= rec.vocab.id_length
    assert sd.rounds >= 2  # one or more per batch


@pytest.mark.parametrize("k", [1, 5, 20])
def test_strict_acceptance_on_the_engine_is_counted_per_user_whatever_the_batch_size(rec, k):
    """Each user's own rounds and accepted levels: a batch on the static engine, where users advance
    on their own, counts what batch size 1 counts."""
    histories = HISTORIES * 3
    alone = recommend(rec, histories, k, method="speculative", batch_size=1, engine="static")
    together = recommend(rec, histories, k, method="speculative", batch_size=len(histories), engine="static")
    assert alone.rounds >= len(histories)
    assert (together.rounds, together.accepted_levels) == (alone.rounds, alone.accepted_levels)


def test_a_lockstep_batch_counts_its_shared_rounds_for_every_user(rec):
    out = recommend(rec, HISTORIES, 5, method="speculative", batch_size=len(HISTORIES), engine="dynamic")
    (batch,) = out.per_batch
    assert (out.rounds, out.accepted_levels) == (batch["n_run"] * len(HISTORIES),
                                                  batch["total_accept_steps"] * len(HISTORIES))


@pytest.mark.parametrize("method", ["hf-sample", "speculative-relaxed"])
def test_sampling_is_reproducible_with_a_seed(rec, method):
    a = recommend(rec, HISTORIES, 5, method=method, seed=7)
    b = recommend(rec, HISTORIES, 5, method=method, seed=7)
    assert a.items == b.items


@pytest.mark.parametrize("method", ["hf-sample", "speculative-relaxed"])
@pytest.mark.parametrize("k", [1, 6])
def test_sampled_items_are_returned_best_score_first(rec, method, k):
    out = recommend(rec, HISTORIES, k, method=method, seed=1)
    assert torch.all(out.scores[:, :-1] >= out.scores[:, 1:]) and torch.isfinite(out.scores).all()


def test_hf_sample_is_the_targets_own_trie_constrained_beam_sampling(rec):
    """The same draws as calling HF's generate(do_sample=True, num_beams=K) with the trie and seed."""
    out = recommend(rec, HISTORIES[:2], 4, method="hf-sample", seed=11, batch_size=2)
    input_ids, attention_mask = encode_prompts(rec.vocab, HISTORIES[:2])
    processor = TrieLogitsProcessor(rec.trie, input_ids.shape[1], eos_token_id=rec.vocab.eos_token_id)
    torch.manual_seed(11)
    ref = rec.target.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True, num_beams=4,
                              num_return_sequences=4, max_new_tokens=rec.vocab.id_length,
                              logits_processor=LogitsProcessorList([processor]), pad_token_id=rec.vocab.pad_token_id,
                              eos_token_id=rec.vocab.eos_token_id, return_dict_in_generate=True, output_scores=True)
    drawn = decode_items(rec.vocab, ref.sequences[:, input_ids.shape[1]:])
    for user in range(2):
        scores = ref.sequences_scores[user * 4 : (user + 1) * 4].float()
        order = scores.sort(descending=True, stable=True).indices.tolist()
        assert out.items[user] == [drawn[user * 4 + j] for j in order]
        torch.testing.assert_close(out.scores[user], scores[order])


def test_an_unknown_history_item_is_refused_with_its_row(rec):
    with pytest.raises(ValueError, match=r"History 1: item 99999 is not in the catalogue"):
        recommend(rec, [(1, 2), (99999,)], 5)


def test_an_unknown_method_is_refused(rec):
    with pytest.raises(ValueError, match="Unknown method 'beam'"):
        recommend(rec, HISTORIES, 5, method="beam")


def test_k_larger_than_the_catalogue_is_refused(rec):
    with pytest.raises(ValueError, match="k must be between 1 and the number of items"):
        recommend(rec, HISTORIES, rec.num_items + 1)


def test_speculative_without_a_draft_is_refused(target, tokenizer, synthetic):
    rec = build_recommender(target, tokenizer, synthetic.index)
    with pytest.raises(ValueError, match="needs a draft model"):
        recommend(rec, HISTORIES, 5, method="speculative")


def test_a_model_with_another_vocabulary_is_refused(target, synthetic):
    other = build_tokenizer({i: sid for i, sid in synthetic.index.items() if i < 10})  # fewer codes
    with pytest.raises(ValueError, match="not trained together"):
        build_recommender(target, other, synthetic.index)


def test_a_model_with_other_special_tokens_is_refused(tokenizer, synthetic):
    model = new_model("tiny", tokenizer)
    model.config.eos_token_id = 3
    with pytest.raises(ValueError, match="eos_token_id=3 but the tokenizer's is 2"):
        build_recommender(model, tokenizer, synthetic.index)


def test_load_recommender_reads_a_saved_model_folder(target, tokenizer, synthetic, synthetic_dir, tmp_path):
    final = save_final(target, tokenizer, tmp_path)
    rec = load_recommender(tmp_path, synthetic_dir, dtype=torch.float64)  # the training folder finds final/
    assert final == tmp_path / "final"
    assert recommend(rec, HISTORIES, 5).items == recommend(
        build_recommender(target, tokenizer, synthetic.index), HISTORIES, 5).items


def test_load_recommender_explains_a_missing_model(synthetic_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a folder with config.json"):
        load_recommender(tmp_path, synthetic_dir)


def test_merging_slices_gives_the_result_of_one_call(rec):
    from atspeed.rec.recommend import merge

    whole = recommend(rec, HISTORIES, 5, method="speculative", batch_size=2)
    parts = merge([recommend(rec, HISTORIES[:2], 5, method="speculative", batch_size=2),
                   recommend(rec, HISTORIES[2:], 5, method="speculative", batch_size=2)])
    assert parts.items == whole.items and torch.equal(parts.scores, whole.scores)
    assert (parts.target_calls, parts.rounds, parts.accepted_levels) == (
        whole.target_calls, whole.rounds, whole.accepted_levels)


def test_k_beyond_the_distinct_semantic_ids_is_refused_not_padded():
    """Items that share a semantic ID are one beam: 6 items with 4 IDs hold at most 4 distinct items
    per list (a 5th or 6th would be a repeat with a score of about -5e8)."""
    index = {0: ("<a_0>", "<b_0>"), 1: ("<a_0>", "<b_1>"), 2: ("<a_1>", "<b_0>"), 3: ("<a_1>", "<b_1>"),
             4: ("<a_0>", "<b_0>"), 5: ("<a_0>", "<b_1>")}
    tokenizer = build_tokenizer(index)
    rec = build_recommender(new_model("tiny", tokenizer), tokenizer, index)
    assert len(recommend(rec, [[0, 1]], 4, method="tree").items[0]) == 4
    with pytest.raises(ValueError, match=r"k must be between 1 and the number of distinct semantic IDs \(4; 2 of "
                                         r"the 6 items share an ID with another\), got 5"):
        recommend(rec, [[0, 1]], 5, method="tree")
