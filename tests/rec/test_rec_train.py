"""Training a recommender: only the answer is supervised, batches are right-padded, and a short run
learns, saves a folder that loads back, resumes from its checkpoint and decodes valid items."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from atspeed.rec import train as train_module
from atspeed.rec.data import MODEL_INDEX_FILE, eval_cases, index_sha256, load_dataset, with_valid_in_train
from atspeed.rec.recipes import new_model
from atspeed.rec.tokenizer import decode_items, encode_prompts
from atspeed.rec.train import IGNORE, SampleDataset, WindowDataset, pad_right, residual_dropout, save_final, train
from atspeed.rec.trie import TrieLogitsProcessor

STEPS = 40


@dataclass
class Run:
    model: torch.nn.Module  # the model after training (trained in place)
    final: Path
    batch: dict[str, torch.Tensor]  # a fixed batch of training examples
    loss_before: float
    loss_after: float


def mean_loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.fixture(scope="module")
def samples(synthetic, tokenizer) -> SampleDataset:
    return SampleDataset(synthetic, tokenizer)


@pytest.fixture(scope="module")
def run(synthetic, tokenizer, samples, tmp_path_factory) -> Run:
    torch.manual_seed(0)
    model = new_model("tiny", tokenizer)
    step = len(samples) // 64
    batch = pad_right([samples[i] for i in range(0, 64 * step, step)], tokenizer.pad_token_id)
    before = mean_loss(model, batch)
    out = tmp_path_factory.mktemp("run")
    final = train(model, tokenizer, synthetic, out, max_steps=STEPS, batch_size=32, lr=3e-3, save_steps=STEPS)
    return Run(model.eval(), final, batch, before, mean_loss(model, batch))


def test_recipes_match_the_tokenizer_and_the_draft_is_about_ten_times_smaller(tokenizer):
    target, draft = new_model("target", tokenizer), new_model("draft", tokenizer)
    for model in (target, draft):
        assert model.config.vocab_size == len(tokenizer)
        config = model.config
        assert (config.pad_token_id, config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
        assert model.config.max_position_embeddings >= 1 + 20 * 4 + 4 + 1
    assert 8 < target.num_parameters() / draft.num_parameters() < 16


def test_labels_supervise_only_the_answer_and_eos(samples, vocab):
    for i in range(0, len(samples), 97):
        sample, example = samples.samples[i], samples[i]
        n_prompt = 1 + 4 * len(sample.history)
        answer = [*vocab.tokens[sample.target].tolist(), vocab.eos_token_id]
        assert example["input_ids"][n_prompt:] == answer
        assert example["labels"] == [IGNORE] * n_prompt + answer


def test_sequence_examples_supervise_every_item_after_the_first(synthetic, tokenizer, vocab):
    windows = WindowDataset(synthetic, tokenizer)
    for i in range(0, len(windows), 97):
        items, example = windows.windows[i].items, windows[i]
        ids = [vocab.bos_token_id, *vocab.tokens[list(items)].flatten().tolist()]
        assert example["input_ids"] == ids
        assert example["labels"] == [IGNORE] * 5 + ids[5:]  # BOS and the first item are context


def test_an_unknown_objective_is_refused(synthetic, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="objective"):
        train(new_model("tiny", tokenizer), tokenizer, synthetic, tmp_path, max_steps=1, objective="mlm")


def test_collator_pads_right_and_masks_padding_in_labels():
    features = [
        {"input_ids": [1, 5, 6], "labels": [IGNORE, 5, 6]},
        {"input_ids": [1, 7, 8, 9, 2], "labels": [IGNORE, IGNORE, 8, 9, 2]},
    ]
    batch = pad_right(features, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 0, 0], [1, 7, 8, 9, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[IGNORE, 5, 6, IGNORE, IGNORE], [IGNORE, IGNORE, 8, 9, 2]]


def test_a_short_run_lowers_the_training_loss(run):
    assert run.loss_after < run.loss_before - 0.3


def test_final_folder_loads_back_with_the_same_logits_and_tokenizer(run, tokenizer):
    assert (run.final / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(run.final).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(run.final)
    inputs = {k: run.batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, run.model(**inputs).logits)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded_tokenizer("<a_1><b_2>").input_ids == tokenizer("<a_1><b_2>").input_ids


def test_the_final_folder_records_the_index_it_was_trained_on(run, synthetic):
    recorded = json.loads((run.final / MODEL_INDEX_FILE).read_text())
    assert recorded == {"items": len(synthetic.index), "index_sha256": index_sha256(synthetic.index)}


def test_each_checkpoint_records_the_index_it_was_trained_on(run, synthetic):
    recorded = json.loads((run.final.parent / f"checkpoint-{STEPS}" / MODEL_INDEX_FILE).read_text())
    assert recorded["index_sha256"] == index_sha256(synthetic.index)


def test_resuming_a_checkpoint_trained_on_another_index_is_refused(synthetic, tokenizer, tmp_path):
    train(new_model("tiny", tokenizer), tokenizer, synthetic, tmp_path, max_steps=2, save_steps=2)
    swapped = dict(synthetic.index)
    swapped[0], swapped[1] = synthetic.index[1], synthetic.index[0]  # same tokens, two items exchanged
    with pytest.raises(ValueError, match="another item index"):
        train(new_model("tiny", tokenizer), tokenizer, replace(synthetic, index=swapped), tmp_path, max_steps=4,
              save_steps=2)


def test_resuming_a_checkpoint_of_another_shape_is_refused_before_training(synthetic, tokenizer, tmp_path):
    train(new_model("tiny", tokenizer), tokenizer, synthetic, tmp_path, max_steps=2, save_steps=2)
    with pytest.raises(ValueError, match=r"checkpoint-2 holds a model of another shape .*another --kind"):
        train(new_model("draft", tokenizer), tokenizer, synthetic, tmp_path, max_steps=4, save_steps=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "final"]


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf")])
def test_a_learning_rate_that_cannot_train_is_refused_and_nothing_is_written(synthetic, tokenizer, tmp_path, lr):
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        train(new_model("tiny", tokenizer), tokenizer, synthetic, tmp_path / "out", max_steps=2, lr=lr)
    assert not (tmp_path / "out").exists()


def test_a_failed_final_save_leaves_no_final_folder(run, tmp_path):
    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_final(run.model, BrokenTokenizer(), tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither `final` nor a temporary folder


def test_a_stopped_run_resumes_from_its_checkpoint(synthetic, tokenizer, tmp_path):
    N = 4
    torch.manual_seed(0)
    train(new_model("tiny", tokenizer), tokenizer, synthetic, tmp_path, max_steps=N, save_steps=N, logging_steps=1)
    first = json.loads((tmp_path / f"checkpoint-{N}" / "trainer_state.json").read_text())
    torch.manual_seed(1)  # other initial weights: a run that ignored the checkpoint would log other losses
    train(new_model("tiny", tokenizer), tokenizer, synthetic, tmp_path, max_steps=2 * N, save_steps=N, logging_steps=1)
    resumed = json.loads((tmp_path / f"checkpoint-{2 * N}" / "trainer_state.json").read_text())
    assert resumed["global_step"] == 2 * N
    assert resumed["log_history"][: len(first["log_history"])] == first["log_history"]
    assert [e["step"] for e in resumed["log_history"] if "loss" in e] == list(range(1, 2 * N + 1))


def test_a_final_fit_trains_on_train_and_valid_items(synthetic_dir, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(train_module, "train", lambda model, tokenizer, ds, out, **kw: seen.append(ds) or out)
    train_module.train_recipe(synthetic_dir, tmp_path, "tiny", include_valid=True, eval_users=0, log=lambda _: None)
    assert seen[0].train == with_valid_in_train(load_dataset(synthetic_dir)).train
    assert seen[0].valid == {}


def test_a_final_fit_with_validation_is_refused(synthetic_dir, tmp_path):
    with pytest.raises(ValueError, match="nothing is left to validate on"):
        train_module.train_recipe(synthetic_dir, tmp_path, "tiny", include_valid=True, eval_users=100)


def test_residual_dropout_changes_outputs_in_training_mode_only(samples, tokenizer):
    torch.manual_seed(0)
    model = new_model("tiny", tokenizer)
    batch = pad_right([samples[i] for i in range(4)], tokenizer.pad_token_id)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        plain_train, plain_eval = model.train()(**inputs).logits, model.eval()(**inputs).logits
        hooks = residual_dropout(model, 0.5)
        assert not torch.allclose(model.train()(**inputs).logits, plain_train)
        torch.testing.assert_close(model.eval()(**inputs).logits, plain_eval, rtol=0, atol=0)
        for hook in hooks:
            hook.remove()
        torch.testing.assert_close(model.train()(**inputs).logits, plain_train, rtol=0, atol=0)


def test_training_with_dropout_leaves_a_plain_model_without_hooks(synthetic, tokenizer, tmp_path):
    model = new_model("tiny", tokenizer)
    train(model, tokenizer, synthetic, tmp_path, max_steps=2, save_steps=2, dropout=0.3)
    assert not any(module._forward_hooks for module in model.modules())


def test_dropout_needs_llama_style_blocks():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(ValueError, match="Llama-style"):
        residual_dropout(gpt2, 0.1)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_dropout_outside_zero_to_one_is_refused(tokenizer, p):
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        residual_dropout(new_model("tiny", tokenizer), p)


def test_constrained_beam_search_with_the_trained_model_returns_valid_items(run, synthetic, vocab, trie):
    K = 5
    histories = [case.history for case in eval_cases(synthetic, "test")[:4]]
    input_ids, attention_mask = encode_prompts(vocab, histories)
    processor = TrieLogitsProcessor(trie, input_ids.shape[1], eos_token_id=vocab.eos_token_id)
    with torch.no_grad():
        out = run.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, logits_processor=LogitsProcessorList([processor]),
            num_beams=K, num_return_sequences=K, max_new_tokens=4, do_sample=False,
            pad_token_id=vocab.pad_token_id, eos_token_id=vocab.eos_token_id,
        )
    items = decode_items(vocab, out[:, input_ids.shape[1] :])
    assert None not in items
    for b in range(len(histories)):
        assert len(set(items[b * K : (b + 1) * K])) == K  # K distinct items per user


def test_the_saved_tokenizer_names_a_class_every_supported_transformers_loads(run):
    config = json.loads((run.final / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_the_committed_demo_tokenizers_name_a_portable_class():
    from atspeed.rec.recommend import PRETRAINED

    for folder in ("synthetic-target", "synthetic-draft"):
        config = json.loads((PRETRAINED / folder / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def trainer_state(out: Path) -> dict:
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())


def test_validation_scores_ndcg_of_beam_search_and_the_best_checkpoint_is_the_result(synthetic, tokenizer, tmp_path):
    torch.manual_seed(0)
    final = train(new_model("tiny", tokenizer), tokenizer, synthetic, tmp_path, max_steps=30, save_steps=10,
                  lr=3e-3, eval_users=50, save_total_limit=None)
    state = trainer_state(tmp_path)
    scores = {e["step"]: e["eval_ndcg@10"] for e in state["log_history"] if "eval_ndcg@10" in e}
    assert sorted(scores) == [10, 20, 30]
    best = max(scores, key=lambda step: (scores[step], -step))  # the first of equal bests
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best}")
    loaded = AutoModelForCausalLM.from_pretrained(final)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / f"checkpoint-{best}")
    for a, b in zip(loaded.state_dict().values(), saved.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_training_stops_after_patience_validations_without_improvement(synthetic, tokenizer, tmp_path, monkeypatch):
    import atspeed.rec.metrics

    monkeypatch.setattr(atspeed.rec.metrics, "evaluate", lambda *a, ks: {f"ndcg@{ks[0]}": 0.5})  # never improves
    train(new_model("tiny", tokenizer), tokenizer, synthetic, tmp_path, max_steps=50, save_steps=5, eval_users=5,
          patience=2)
    assert trainer_state(tmp_path)["global_step"] == 15  # best at 5, no better at 10 and 15: stop
