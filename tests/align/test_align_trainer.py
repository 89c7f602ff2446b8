"""Draft alignment training: every method trains and saves a loadable draft, the acceptance check
keeps the best draft, alpha weighs L_rec against L_align, and bad settings are refused."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from atspeed.align import trainer
from atspeed.align.losses import atspeed_s_loss, rec_loss
from atspeed.align.rows import answer_allowed, answer_logits
from atspeed.align.trainer import (
    METHODS,
    AlignConfig,
    acceptance,
    align,
    batch_loss,
    batch_rows,
    training_examples,
)
from atspeed.rec.data import eval_cases
from atspeed.rec.recipes import new_model
from atspeed.rec.recommend import build_recommender
from atspeed.rec.tokenizer import build_tokenizer

FAST = AlignConfig(teacher_beams=3, top_k=5, batch_size=8, lr=1e-2, max_steps=3, eval_every=2, eval_users=8,
                   k=4, gamma=2)


def config(**changes) -> AlignConfig:
    return dataclasses.replace(FAST, **changes)


def a_batch(dataset, teacher, n: int = 8):
    return training_examples(dataset, teacher, FAST.teacher_beams)[:n]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_saves_a_loadable_draft(method, target, draft, tokenizer, dataset, teacher, tmp_path):
    result = align(target, draft, tokenizer, dataset, teacher, tmp_path, config(method=method))
    assert result.final == tmp_path / "final"
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    loaded = AutoModelForCausalLM.from_pretrained(result.final)
    assert loaded.config.vocab_size == len(AutoTokenizer.from_pretrained(result.final)) == len(tokenizer)
    assert (tmp_path / "history.json").exists()


@pytest.mark.parametrize("method", ["none", "tvdkd"])
def test_ground_truth_methods_need_no_teacher_data(method, target, draft, tokenizer, dataset, tmp_path):
    result = align(target, draft, tokenizer, dataset, None, tmp_path, config(method=method, max_steps=1))
    assert len(result.losses) == 1


def test_on_policy_training_runs(target, draft, tokenizer, dataset, teacher, tmp_path):
    result = align(target, draft, tokenizer, dataset, teacher, tmp_path, config(on_policy=True, max_steps=2))
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))


def test_atspeed_s_loss_decreases_on_a_repeated_batch(target, draft, rec, dataset, teacher):
    rows = batch_rows(rec.vocab, a_batch(dataset, teacher))
    optimizer = torch.optim.AdamW(draft.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss, _ = batch_loss(draft.train(), target, rows, config(), rec.trie)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("renormalize", [True, False])
def test_atspeed_s_trains_on_the_chosen_renormalization(renormalize, target, draft, rec, dataset, teacher):
    """renormalize=False is the paper code's default AtSpeed-S (the full probabilities read on S)."""
    rows = batch_rows(rec.vocab, a_batch(dataset, teacher))
    cfg = config(alpha=1.0, renormalize=renormalize)
    _, parts = batch_loss(draft, target, rows, cfg, rec.trie)
    on = slice(rows.n_gt, None)
    L = rec.trie.id_length
    items = rows.answers[on, :L]
    with torch.no_grad():
        draft_logits, target_logits = (answer_logits(m, rows)[on, :L] for m in (draft, target))
    expected = atspeed_s_loss(draft_logits, target_logits, torch.ones(items.shape, dtype=torch.bool),
                              top_k=cfg.top_k, allowed=answer_allowed(rec.trie, items, draft_logits.shape[-1]),
                              renormalize=renormalize)
    assert parts["align"] == pytest.approx(expected.item(), rel=1e-5)


def test_alpha_zero_is_the_plain_rec_loss(target, draft, rec, dataset, teacher):
    rows = batch_rows(rec.vocab, a_batch(dataset, teacher))
    loss, _ = batch_loss(draft, target, rows, config(alpha=0.0), rec.trie)
    n = rows.answers.shape[1]  # L + 1 answer tokens
    logits = []
    for b in range(rows.n_gt):  # each ground-truth sequence alone, unpadded: logits[t] predicts token t + 1
        ids = rows.input_ids[b][rows.attention_mask[b].bool()]
        logits.append(draft(input_ids=ids[None]).logits[0, -n - 1 : -1])  # [L + 1, V]
    torch.testing.assert_close(loss, rec_loss(torch.stack(logits), rows.answers[: rows.n_gt]))


def test_alpha_zero_trains_exactly_like_the_unaligned_draft(target, draft, tokenizer, dataset, teacher, tmp_path):
    plain = align(target, copy.deepcopy(draft), tokenizer, dataset, teacher, tmp_path / "none", config(method="none"))
    zero = align(target, draft, tokenizer, dataset, teacher, tmp_path / "zero", config(alpha=0.0))
    assert zero.losses == pytest.approx(plain.losses, rel=1e-9)


def test_rows_hold_the_ground_truth_then_the_teacher_items(rec, dataset, teacher):
    batch = a_batch(dataset, teacher, n=2)
    rows = batch_rows(rec.vocab, batch)
    assert rows.n_gt == 2 and rows.input_ids.shape[0] == 2 + 2 * FAST.teacher_beams
    items = [batch[0].target, batch[1].target, *batch[0].beams, *batch[1].beams]
    assert torch.equal(rows.answers[:, :-1], rec.vocab.tokens[items])
    assert torch.equal(rows.input_ids[:, -rows.answers.shape[1] :], rows.answers)


def test_acceptance_is_checked_before_every_eval_every_steps_and_after(target, draft, tokenizer, dataset, teacher,
                                                                       tmp_path):
    result = align(target, draft, tokenizer, dataset, teacher, tmp_path, config(max_steps=5, eval_every=2))
    assert [h["step"] for h in result.history] == [0, 2, 4, 5]
    assert all(0 <= h["acceptance"] <= FAST.gamma for h in result.history)


def test_the_saved_draft_is_the_best_checked_one(target, draft, tokenizer, dataset, teacher, tmp_path):
    result = align(target, draft, tokenizer, dataset, teacher, tmp_path, config(max_steps=6, eval_every=1))
    rec = build_recommender(target, tokenizer, dataset.index)
    best = max(result.history, key=lambda h: h["acceptance"])
    assert (result.best_step, result.best_acceptance) == (best["step"], best["acceptance"])
    saved = AutoModelForCausalLM.from_pretrained(result.final, dtype=torch.float64).to(target.device).eval()
    valid = [c.history for c in eval_cases(dataset, "valid")[: FAST.eval_users]]
    assert acceptance(dataclasses.replace(rec, draft=saved), valid, FAST)["acceptance"] == best["acceptance"]


def test_atspeed_s_raises_acceptance_above_the_starting_draft(target, draft, tokenizer, dataset, teacher, tmp_path):
    result = align(target, draft, tokenizer, dataset, teacher, tmp_path, config(max_steps=6, eval_every=3))
    assert result.best_acceptance > result.history[0]["acceptance"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "kd"}, "Unknown alignment method"),
        ({"alpha": 1.5}, "alpha must be in"),
        ({"teacher_beams": 6}, "teacher_beams=6"),
        ({"method": "seqkd", "on_policy": True}, "on_policy"),
        ({"schedule": "cosine"}, "Unknown schedule"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_settings_are_refused(changes, message, target, draft, tokenizer, dataset, teacher, tmp_path):
    with pytest.raises(ValueError, match=message):
        align(target, draft, tokenizer, dataset, teacher, tmp_path, config(**changes))


def test_a_method_that_aligns_on_teacher_beams_needs_teacher_data(target, draft, tokenizer, dataset, tmp_path):
    with pytest.raises(ValueError, match="pass teacher data"):
        align(target, draft, tokenizer, dataset, None, tmp_path, config(method="atspeed-r"))


def test_a_draft_with_another_vocabulary_is_refused(target, tokenizer, dataset, teacher, tmp_path):
    other = build_tokenizer({i: dataset.index[i] for i in range(8)})  # fewer codes: a smaller vocabulary
    with pytest.raises(ValueError, match="draft has vocab_size"):
        align(target, new_model("tiny", other), tokenizer, dataset, teacher, tmp_path, config())


class Interrupted(Exception):
    pass


def interrupt_at(monkeypatch, call: int) -> None:
    """Make the `call`-th training step fail, as a killed run would stop there."""
    calls = iter(range(1, 10**6))

    def failing(*args, **kwargs):
        if next(calls) == call:
            raise Interrupted
        return batch_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "batch_loss", failing)


RESUMABLE = config(batch_size=64, max_steps=None, epochs=2, eval_every=3)  # 4 batches per epoch: checks at 0, 3, 6, 8


@pytest.mark.parametrize("call", [2, 5, 8], ids=["before-the-first-check", "in-the-first-epoch", "in-the-second-epoch"])
def test_a_resumed_run_ends_as_an_uninterrupted_one(call, target, draft, tokenizer, dataset, teacher, tmp_path,
                                                    monkeypatch):
    start, resumed = copy.deepcopy(draft), copy.deepcopy(draft)  # a rerun loads the starting draft again
    whole = align(target, draft, tokenizer, dataset, teacher, tmp_path / "whole", RESUMABLE)
    with monkeypatch.context() as patch:
        interrupt_at(patch, call)
        with pytest.raises(Interrupted):
            align(target, start, tokenizer, dataset, teacher, tmp_path / "resumed", RESUMABLE)
    result = align(target, resumed, tokenizer, dataset, teacher, tmp_path / "resumed", RESUMABLE)
    assert result.resumed_step == 3 * ((call - 1) // 3)
    assert (result.losses, result.history, result.best_step) == (whole.losses, whole.history, whole.best_step)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), draft.state_dict().values(),
                                                 strict=True))


def test_a_finished_run_leaves_no_checkpoint(target, draft, tokenizer, dataset, teacher, tmp_path):
    align(target, draft, tokenizer, dataset, teacher, tmp_path, RESUMABLE)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(trainer.CHECKPOINT)]


def test_a_checkpoint_of_other_settings_is_refused(target, draft, tokenizer, dataset, teacher, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_at(patch, 5)
        with pytest.raises(Interrupted):
            align(target, draft, tokenizer, dataset, teacher, tmp_path, RESUMABLE)
    with pytest.raises(ValueError, match=r"other settings or data \(lr 0.01 -> 0.001\).*delete it"):
        align(target, draft, tokenizer, dataset, teacher, tmp_path, dataclasses.replace(RESUMABLE, lr=1e-3))


def test_the_acceptance_check_counts_each_user_alone_whatever_the_batch(target, rec, dataset):
    draft = copy.deepcopy(target)  # the target, perturbed: some users' levels are accepted, others' not
    torch.manual_seed(0)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.02 * torch.randn_like(p))
    valid = [c.history for c in eval_cases(dataset, "valid")]
    with_draft = dataclasses.replace(rec, draft=draft)
    alone = acceptance(with_draft, valid, config(eval_batch_size=1))
    assert acceptance(with_draft, valid, config(eval_batch_size=5)) == alone  # lockstep batches would accept less


def test_a_checkpoint_left_mid_swap_is_resumed_and_a_half_removed_one_ignored(target, draft, tokenizer, dataset,
                                                                              teacher, tmp_path, monkeypatch):
    start, resumed = copy.deepcopy(draft), copy.deepcopy(draft)
    whole = align(target, draft, tokenizer, dataset, teacher, tmp_path / "whole", RESUMABLE)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 8)  # checkpoints at steps 3 and 6
        with pytest.raises(Interrupted):
            align(target, start, tokenizer, dataset, teacher, tmp_path / "run", RESUMABLE)
    folder = tmp_path / "run" / trainer.CHECKPOINT
    folder.rename(folder.with_name("checkpoint.tmp"))  # killed between the two renames of a save
    (folder.with_name("checkpoint.old")).mkdir()  # and a removal that did not finish: no progress.json
    result = align(target, resumed, tokenizer, dataset, teacher, tmp_path / "run", RESUMABLE)
    assert result.resumed_step == 6
    assert (result.losses, result.history) == (whole.losses, whole.history)


def test_a_checkpoint_made_with_another_target_is_refused(target, draft, tokenizer, dataset, teacher, tmp_path,
                                                          monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_at(patch, 5)
        with pytest.raises(Interrupted):
            align(target, copy.deepcopy(draft), tokenizer, dataset, teacher, tmp_path, RESUMABLE)
    with torch.no_grad():
        target.lm_head.weight.add_(1.0)
    with pytest.raises(ValueError, match=r"other settings or data \(target\)"):
        align(target, draft, tokenizer, dataset, teacher, tmp_path, RESUMABLE)
