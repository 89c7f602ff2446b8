"""Target logits read from a cache instead of the target's forward: the same loss and draft gradients
for every method that aligns on fixed rows, exactly the values the target gave, one folder per
target and rows (any other refused), resumable by chunks; the other settings train as before."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from safetensors.torch import load_file

import atspeed.align.target_logits as target_logits_mod
from atspeed.align.rows import answer_allowed, answer_logits, encode_rows
from atspeed.align.target_logits import generate_target_logits, load_target_logits
from atspeed.align.trainer import AlignConfig, align, batch_loss, batch_rows, fixed_rows, training_examples
from atspeed.rec.data import first_users
from atspeed.rec.recommend import build_recommender

BEAMS, CHUNK = 3, 64  # the teacher fixture has K = 5; ~200 prompts -> 4 chunks
FIXED = ("atspeed-s", "atspeed-r", "wordkd", "tvdkd")  # the methods that read target logits on fixed rows
TIGHT = {"rtol": 1e-9, "atol": 1e-12}  # float64 models: only the summation order differs
FAST = AlignConfig(teacher_beams=BEAMS, top_k=5, batch_size=8, lr=1e-2, max_steps=3, eval_every=2, eval_users=8,
                   k=4, gamma=2)


class Crash(Exception):
    pass


def examples_of(method: str, dataset, teacher):
    return training_examples(dataset, teacher if method != "tvdkd" else None, BEAMS)


def make(rec, method: str, dataset, teacher, out_dir, **settings):
    """The cache a run of `method` reads, made in out_dir; returns it loaded."""
    name, prompts, items = fixed_rows(AlignConfig(method=method), dataset, teacher)
    return load_target_logits(generate_target_logits(rec, prompts, items, out_dir, rows=name, chunk_size=CHUNK,
                                                     progress=False, **settings))


def mixed_lengths(examples, n: int = 6):
    """n examples with n different history lengths: left-padded prompts of different lengths."""
    by_length = {len(e.history): e for e in examples}
    lengths = sorted(by_length)
    return [by_length[lengths[round(i * (len(lengths) - 1) / (n - 1))]] for i in range(n)]


def loss_and_grads(draft, target, rows, cfg, trie, cached=None):
    draft.zero_grad()
    loss, parts = batch_loss(draft.train(), target, rows, cfg, trie, cached=cached)
    loss.backward()
    return loss.detach(), parts, [p.grad.clone() for p in draft.parameters()]


class NoTarget(torch.nn.Module):
    def forward(self, *args, **kwargs):
        raise AssertionError("the target ran")


@pytest.fixture
def count_chunks(monkeypatch):
    """Counts the chunks computed; `crash_after=n` makes the (n+1)-th chunk fail like a killed job."""
    state = {"calls": 0, "crash_after": None}
    compute = target_logits_mod.compute_chunk

    def counting(*args, **kwargs):
        if state["calls"] == state["crash_after"]:
            raise Crash
        state["calls"] += 1
        return compute(*args, **kwargs)

    monkeypatch.setattr(target_logits_mod, "compute_chunk", counting)
    return state


@pytest.mark.parametrize("method", FIXED)
def test_cached_target_logits_give_the_computed_loss_and_draft_gradients(method, draft, target, rec, dataset,
                                                                         teacher, tmp_path):
    cached = make(rec, method, dataset, teacher, tmp_path)
    rows = batch_rows(rec.vocab, mixed_lengths(examples_of(method, dataset, teacher)))
    cfg = AlignConfig(method=method, top_k=5)
    loss, parts, grads = loss_and_grads(draft, target, rows, cfg, rec.trie, cached)
    want_loss, want_parts, want_grads = loss_and_grads(draft, target, rows, cfg, rec.trie)
    torch.testing.assert_close(loss, want_loss, **TIGHT)
    assert parts == pytest.approx(want_parts, rel=1e-9)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))


def test_a_step_with_cached_target_logits_does_not_run_the_target(draft, rec, dataset, teacher, tmp_path):
    cached = make(rec, "atspeed-s", dataset, teacher, tmp_path)
    rows = batch_rows(rec.vocab, examples_of("atspeed-s", dataset, teacher)[:8])
    loss, _ = batch_loss(draft, NoTarget(), rows, AlignConfig(top_k=5), rec.trie, cached=cached)
    assert torch.isfinite(loss)


def test_the_cache_holds_bit_for_bit_the_float32_logits_the_target_gave(target, tokenizer, dataset, tmp_path):
    rec = build_recommender(copy.deepcopy(target).float(), tokenizer, dataset.index)
    _, prompts, items = fixed_rows(AlignConfig(method="tvdkd"), dataset, None)
    single = [p for p in range(len(prompts)) if len(items[p]) == 1][:8]  # one row per prompt: nothing shared
    prompts, items = [prompts[p] for p in single], [items[p] for p in single]
    cached = load_target_logits(generate_target_logits(rec, prompts, items, tmp_path, rows="ground-truth",
                                                       batch_size=8, progress=False))
    rows = encode_rows(rec.vocab, prompts, range(8), [i[0] for i in items])  # the forward that made the cache
    L = rec.trie.id_length
    want = answer_logits(rec.target, rows)[:, :L]  # [8, L, V]
    allowed = answer_allowed(rec.trie, rows.answers[:, :L], want.shape[-1])
    got = cached.read(rec.trie, torch.arange(8), rows.answers[:, :L], allowed)
    assert got.dtype == torch.float32 and torch.equal(got[allowed], want[allowed])
    assert bool((got[~allowed] == float("-inf")).all())


def test_rows_that_share_a_prefix_share_its_entry(rec, dataset, teacher, tmp_path):
    cached = make(rec, "atspeed-s", dataset, teacher, tmp_path)
    distinct = sum(len({tuple(rec.vocab.tokens[i, :t].tolist()) for i in row for t in range(rec.trie.id_length)})
                   for row in teacher.items.tolist())
    assert len(cached.keys) == distinct < teacher.items.numel() * rec.trie.id_length


def test_only_safetensors_and_json_are_written(rec, dataset, teacher, tmp_path):
    make(rec, "atspeed-s", dataset, teacher, tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["logits.safetensors", "meta.json"]
    load_file(tmp_path / "logits.safetensors")  # no pickle


def test_a_crash_leaves_only_complete_chunk_files(rec, dataset, teacher, tmp_path, count_chunks):
    count_chunks["crash_after"] = 2
    with pytest.raises(Crash):
        make(rec, "atspeed-s", dataset, teacher, tmp_path)
    files = sorted((tmp_path / "chunks").iterdir())
    assert [f.name for f in files] == ["chunk-00000.safetensors", "chunk-00001.safetensors"]
    assert [sorted(load_file(f)) for f in files] == [["counts", "keys", "values"]] * 2
    assert not (tmp_path / "logits.safetensors").exists()


def test_a_rerun_computes_only_the_missing_chunks_and_gives_the_same_logits(rec, dataset, teacher, tmp_path,
                                                                          count_chunks):
    whole = make(rec, "atspeed-s", dataset, teacher, tmp_path / "whole")
    count_chunks.update(calls=0, crash_after=2)
    with pytest.raises(Crash):
        make(rec, "atspeed-s", dataset, teacher, tmp_path / "resumed")
    count_chunks.update(calls=0, crash_after=None)
    resumed = make(rec, "atspeed-s", dataset, teacher, tmp_path / "resumed")
    assert count_chunks["calls"] == -(-len(teacher) // CHUNK) - 2
    for name in ("keys", "offsets", "values"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name))


def test_a_finished_folder_is_read_without_computing(rec, dataset, teacher, tmp_path, count_chunks):
    make(rec, "atspeed-s", dataset, teacher, tmp_path)
    count_chunks["calls"] = 0
    make(rec, "atspeed-s", dataset, teacher, tmp_path)
    assert count_chunks["calls"] == 0


def test_target_logits_made_by_another_target_are_refused(rec, draft, tokenizer, dataset, teacher, tmp_path):
    make(rec, "atspeed-s", dataset, teacher, tmp_path)
    other = build_recommender(draft, tokenizer, dataset.index)
    with pytest.raises(ValueError, match="made by another target"):
        make(other, "atspeed-s", dataset, teacher, tmp_path)


def test_target_logits_made_from_other_teacher_data_are_refused(rec, dataset, teacher, tmp_path):
    make(rec, "atspeed-s", dataset, teacher, tmp_path)
    other = dataclasses.replace(teacher, items=teacher.items.flip(1))  # the same items, in another order
    with pytest.raises(ValueError, match="other teacher data"):
        make(rec, "atspeed-s", dataset, other, tmp_path)


def test_target_logits_made_for_another_dataset_are_refused(rec, dataset, tmp_path):
    make(rec, "tvdkd", dataset, None, tmp_path)
    with pytest.raises(ValueError, match="other training prompts"):
        make(rec, "tvdkd", first_users(dataset, 12), None, tmp_path)


def test_rows_missing_from_the_cache_are_refused(draft, target, rec, dataset, teacher, tmp_path):
    cached = make(rec, "atspeed-s", dataset, teacher, tmp_path)  # teacher rows, not ground truth
    rows = batch_rows(rec.vocab, examples_of("tvdkd", dataset, teacher)[:8])
    with pytest.raises(ValueError, match="not all in the target logits"):
        batch_loss(draft, target, rows, AlignConfig(method="tvdkd"), rec.trie, cached=cached)


@pytest.mark.parametrize("method", FIXED)
def test_align_with_target_logits_trains_like_without(method, target, draft, tokenizer, dataset, teacher, tmp_path):
    start = {k: v.clone() for k, v in draft.state_dict().items()}
    cfg = dataclasses.replace(FAST, method=method)
    cached = align(target, draft, tokenizer, dataset, teacher, tmp_path / "cached", cfg, tmp_path / "logits")
    draft.load_state_dict(start)
    plain = align(target, draft, tokenizer, dataset, teacher, tmp_path / "plain", cfg)
    assert cached.losses == pytest.approx(plain.losses, rel=1e-9)
    rows = "ground-truth" if method == "tvdkd" else "teacher"
    assert [p.name for p in (tmp_path / "logits").iterdir()] == [rows]


@pytest.mark.parametrize("changes", [{"method": "none"}, {"method": "seqkd"}, {"on_policy": True},
                                     {"mask_to_valid": False}])
def test_settings_without_fixed_target_logits_train_unchanged_and_write_none(changes, target, draft, tokenizer,
                                                                             dataset, teacher, tmp_path):
    start = {k: v.clone() for k, v in draft.state_dict().items()}
    cfg = dataclasses.replace(FAST, max_steps=2, **changes)
    given = align(target, draft, tokenizer, dataset, teacher, tmp_path / "given", cfg, tmp_path / "logits")
    draft.load_state_dict(start)
    plain = align(target, draft, tokenizer, dataset, teacher, tmp_path / "plain", cfg)
    assert given.losses == plain.losses
    assert not (tmp_path / "logits").exists()


def test_the_teacher_rows_are_all_k_teacher_items_whatever_teacher_beams(dataset, teacher):
    name, prompts, items = fixed_rows(AlignConfig(teacher_beams=BEAMS), dataset, teacher)
    assert (name, prompts, items) == ("teacher", teacher.histories, teacher.items.tolist())
    assert teacher.k > BEAMS
