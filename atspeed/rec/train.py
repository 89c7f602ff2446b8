"""Train a recommender (target or draft) on next-item prediction with the Hugging Face Trainer.

Two objectives, the same prompt format (`<s>` + the history's semantic IDs, oldest first):
- "sequence" (the default): one example per `train_windows` entry, a stretch of a user's train
  sequence read causally; every item after the first is supervised, so one forward pass trains
  all of a user's next-item predictions (as SASRec trains). Several times cheaper per epoch.
- "next-item": one example per `train_samples` entry; the answer is the next item's L tokens +
  `</s>`, only the answer supervised (the prompt's labels are -100).
Decoding generates exactly L tokens under the item trie, so neither needs EOS to end an item.

With `eval_users`, the Trainer evaluates Recall/NDCG@`eval_k` of trie-constrained beam search on
that many validation users (history = train, truth = valid) every `save_steps`, keeps the best
checkpoint as the result, and stops early after `patience` evaluations without improvement
(the Trainer's own best-model and early-stopping machinery; `RecTrainer.evaluate` supplies the
metric).

Checkpoints are the Trainer's own (safetensors, every `save_steps`, rotated by `save_total_limit`),
so a stopped run resumes with its optimizer, scheduler, RNG and data position. The Trainer writes a
checkpoint's files one after another, so a run killed while saving leaves a checkpoint without some
of them; a file `COMPLETE` marks the ones whose saving finished, and a resumed run starts from the
newest marked one and deletes the unmarked ones. The result is `out_dir/final`, a
plain `save_pretrained` folder (model + tokenizer) that `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load; it is written to a temporary folder first and renamed, so it
is either complete or absent.

The same code runs with transformers 4.57 and 5.x: it only uses TrainingArguments that both
versions accept with the same meaning (safetensors is the default in both, so it is not named).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.data import Dataset
from transformers import (
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from atspeed.decoding.checks import check_positive
from atspeed.files import write_dir, write_text
from atspeed.hf.compat import length_grouping_args, make_tokenizer_portable, warmup_args
from atspeed.rec.data import (
    MAX_HISTORY,
    MODEL_INDEX_FILE,
    EvalCase,
    RecDataset,
    Sample,
    SemanticID,
    Window,
    check_index,
    eval_cases,
    load_dataset,
    model_index_json,
    train_samples,
    train_windows,
    with_valid_in_train,
)
from atspeed.rec.recipes import new_model
from atspeed.rec.tokenizer import ItemVocab, build_tokenizer, encode_history, item_vocab

IGNORE = -100  # label value the loss skips
OBJECTIVES = ("sequence", "next-item")
COMPLETE = "COMPLETE"  # in a checkpoint folder: its saving finished
log = logging.getLogger(__name__)


class SampleDataset(Dataset):
    """`train_samples(ds)` as token ids: input_ids = prompt + answer + EOS, labels = -100 over the prompt."""

    def __init__(self, ds: RecDataset, tokenizer: PreTrainedTokenizerBase, max_history: int = MAX_HISTORY):
        self.samples: list[Sample] = train_samples(ds, max_history)
        self.vocab: ItemVocab = item_vocab(tokenizer, ds.index)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        s = self.samples[i]
        prompt = encode_history(self.vocab, s.history)  # [1 + L * len(history)]
        answer = [*self.vocab.tokens[s.target].tolist(), self.vocab.eos_token_id]  # [L + 1]
        return {"input_ids": prompt + answer, "labels": [IGNORE] * len(prompt) + answer}


class WindowDataset(Dataset):
    """`train_windows(ds)` as token ids: input_ids = BOS + the window's items, labels = input_ids
    except BOS and the first item (context only)."""

    def __init__(self, ds: RecDataset, tokenizer: PreTrainedTokenizerBase, max_history: int = MAX_HISTORY):
        self.windows: list[Window] = train_windows(ds, max_history)
        self.vocab: ItemVocab = item_vocab(tokenizer, ds.index)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids = encode_history(self.vocab, self.windows[i].items)  # [1 + L * n]
        context = 1 + self.vocab.id_length  # BOS + the first item
        return {"input_ids": ids, "labels": [IGNORE] * context + ids[context:]}


def training_examples(
    objective: str, ds: RecDataset, tokenizer: PreTrainedTokenizerBase, max_history: int = MAX_HISTORY
) -> Dataset:
    """The examples `objective` trains on: "sequence" -> WindowDataset, "next-item" -> SampleDataset."""
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}.")
    return (WindowDataset if objective == "sequence" else SampleDataset)(ds, tokenizer, max_history)


class RecTrainer(Trainer):
    """The HF Trainer whose evaluation is what a recommender is for: Recall/NDCG@k of trie-constrained
    beam search (tree attention, exactly HF's result) on `eval_dataset`, a list of EvalCase."""

    def __init__(self, *args, index: dict, eval_k: int = 10, eval_batch_size: int = 64, **kwargs):
        super().__init__(*args, **kwargs)
        self.index, self.eval_k, self.eval_batch_size = index, eval_k, eval_batch_size

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        from atspeed.rec.metrics import evaluate
        from atspeed.rec.recommend import build_recommender, recommend

        cases: list[EvalCase] = list(self.eval_dataset if eval_dataset is None else eval_dataset)
        was_training = self.model.training
        rec = build_recommender(self.model, self.processing_class, self.index)  # sets eval mode
        out = recommend(rec, [c.history for c in cases], self.eval_k, batch_size=self.eval_batch_size)
        self.model.train(was_training)
        quality = evaluate(out.items, [c.truth for c in cases], ks=[self.eval_k])
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in quality.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def pad_right(features: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Batch examples of different lengths: right padding (pad id / -100 labels / 0 attention)."""
    n = max(len(f["input_ids"]) for f in features)
    B = len(features)
    input_ids = torch.full((B, n), pad_token_id, dtype=torch.int64)  # [B, n]
    labels = torch.full((B, n), IGNORE, dtype=torch.int64)  # [B, n]
    attention_mask = torch.zeros((B, n), dtype=torch.int64)  # [B, n]
    for b, f in enumerate(features):
        k = len(f["input_ids"])
        input_ids[b, :k] = torch.tensor(f["input_ids"])
        labels[b, :k] = torch.tensor(f["labels"])
        attention_mask[b, :k] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: RecDataset,
    out_dir: str | os.PathLike,
    *,
    epochs: float = 1,
    batch_size: int = 64,
    lr: float = 1e-3,
    max_steps: int = -1,
    seed: int = 0,
    resume: bool = True,
    save_steps: int = 500,
    save_total_limit: int = 2,
    logging_steps: int = 50,
    objective: str = "sequence",
    weight_decay: float = 0.1,
    scheduler: str = "cosine",
    warmup_ratio: float = 0.02,
    eval_users: int = 0,
    eval_k: int = 10,
    patience: int = 3,
    dropout: float = 0.0,
) -> Path:
    """Train `model` in place on `dataset`'s train split; return `out_dir/final` (model + tokenizer).

    With `resume` and a complete `checkpoint-*` folder in `out_dir`, training continues from the
    latest one (then `model` only supplies the architecture: its weights are replaced by the
    checkpoint's). `max_steps` > 0 overrides `epochs`. At least 2 checkpoints are kept, so that a
    crash while one is saved leaves the one before. With `eval_users` > 0 the result is the
    checkpoint with the best validation NDCG@`eval_k` (evaluated every `save_steps`), and training
    stops after `patience` evaluations without a better one. `dropout` > 0 drops embeddings and
    each block's attention and MLP outputs while training (`residual_dropout`).
    """
    if save_steps < 1:
        raise ValueError(f"save_steps must be >= 1, got {save_steps}.")
    if save_total_limit is not None and save_total_limit < 2:
        raise ValueError(f"save_total_limit must be >= 2 (or None), got {save_total_limit}.")
    if eval_users < 0:
        raise ValueError(f"eval_users must be >= 0, got {eval_users}.")
    check_positive("lr", lr)
    check_positive("epochs", epochs)
    examples = training_examples(objective, dataset, tokenizer)
    validate = eval_users > 0
    cases = eval_cases(dataset, "valid")[:eval_users] if validate else None
    out_dir = Path(out_dir)
    checkpoint = last_checkpoint(out_dir) if resume else None
    if checkpoint is not None:  # resuming on another index would train its tokens on other items
        check_index(checkpoint, dataset.index, "checkpoint", f"dataset {dataset.name!r}'s")
        check_same_shapes(checkpoint, model)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        weight_decay=weight_decay,
        lr_scheduler_type=scheduler,
        **warmup_args(warmup_ratio),
        **length_grouping_args(),  # windows and prompts vary in length: batch similar ones, pad less
        seed=seed,
        eval_strategy="steps" if validate else "no",
        eval_steps=save_steps if validate else None,
        metric_for_best_model=f"ndcg@{eval_k}" if validate else None,
        load_best_model_at_end=validate,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        logging_steps=logging_steps,
        logging_first_step=True,
        report_to=[],
        disable_tqdm=False,
        remove_unused_columns=False,  # the collator needs "labels" as built, nothing to drop
        dataloader_num_workers=0,  # CPU-friendly: examples are cheap to build in-process
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning only helps (and only works) with a GPU
    )
    trainer = RecTrainer(
        model=model,
        args=args,
        train_dataset=examples,
        eval_dataset=cases,
        data_collator=partial(pad_right, pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,  # checkpoints then hold the tokenizer too
        callbacks=[_MarkComplete(dataset.index), *([EarlyStoppingCallback(patience)] if validate else [])],
        index=dataset.index,
        eval_k=eval_k,
    )
    hooks = residual_dropout(model, dropout)
    try:
        trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    finally:
        for hook in hooks:
            hook.remove()
    return save_final(trainer.model, tokenizer, out_dir, dataset.index)


def residual_dropout(model: PreTrainedModel, p: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Dropout on the token embeddings and on every block's attention and MLP output before it joins the
    residual stream (GPT-2's and SASRec's placement), active only in training mode.

    Llama-family models have no such dropout (only on attention weights), and small recommenders
    overfit without it. It is added by forward hooks rather than a model subclass, so the trained
    model stays a plain HF model; the hooks are removed after training. Returns the hook handles."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}.")
    if p == 0.0:
        return []
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in layers):
        raise ValueError(f"dropout > 0 needs a Llama-style model (model.layers[i].self_attn/.mlp); "
                         f"{type(model).__name__} has another structure.")

    def drop(module: torch.nn.Module, args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple:
        if not module.training:
            return output
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (torch.nn.functional.dropout(output[0], p, True), *output[1:])
        return torch.nn.functional.dropout(output, p, True)

    modules = [base.embed_tokens] + [m for layer in layers for m in (layer.self_attn, layer.mlp)]
    return [m.register_forward_hook(drop) for m in modules]


def train_recipe(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    kind: str,
    *,
    allow_duplicate_ids: bool = False,
    include_valid: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = print,
    **settings: object,
) -> Path:
    """A fresh, seeded model of recipe `kind` with a tokenizer for `data_dir`'s catalogue, trained by
    `train` (`settings`: epochs, batch_size, ...; a complete checkpoint in `out_dir` is resumed).
    `include_valid` trains on train + valid (`with_valid_in_train`), without validation.
    What `atspeed train` and the demo run; `log` gets the model's size and the checkpoint resumed."""
    ds = load_dataset(data_dir, allow_duplicate_ids=allow_duplicate_ids)
    if include_valid:
        if settings.get("eval_users", 0):
            raise ValueError("include_valid trains on the validation items, so nothing is left to validate on: "
                             "set eval_users to 0 (--eval-users 0) and take the epochs from a validated run.")
        ds = with_valid_in_train(ds)
    tokenizer = build_tokenizer(ds.index)
    torch.manual_seed(seed)
    model = new_model(kind, tokenizer)
    log(f"{kind}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {ds.name} "
        f"({ds.num_items} items)")
    checkpoint = last_checkpoint(out_dir) if settings.get("resume", True) and Path(out_dir).is_dir() else None
    if checkpoint is not None:
        log(f"resuming from {checkpoint}")
    return train(model, tokenizer, ds, out_dir, seed=seed, **settings)


class _MarkComplete(TrainerCallback):
    """Marks a checkpoint COMPLETE once the Trainer has written all of its files, with the fingerprint
    of the item index it is trained on (MODEL_INDEX_FILE): a checkpoint is a model folder too."""

    def __init__(self, index: Mapping[int, SemanticID]):
        self.index_json = model_index_json(index)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_text(folder / MODEL_INDEX_FILE, self.index_json)
            write_text(folder / COMPLETE, f"{state.global_step}\n")


def check_same_shapes(checkpoint: Path, model: PreTrainedModel) -> None:
    """A checkpoint resumes only into a model of its own shape (another --kind, or a recipe changed since,
    would fail inside the Trainer with a list of size mismatches)."""
    weights = checkpoint / "model.safetensors"
    if not weights.exists():  # not ours to judge: the Trainer reports what it cannot load
        return
    with safe_open(weights, framework="pt") as f:
        saved = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    for name, tensor in model.state_dict().items():
        if name in saved and saved[name] != tuple(tensor.shape):
            raise ValueError(f"{checkpoint} holds a model of another shape ({name}: {list(saved[name])}, this "
                             f"model's {list(tensor.shape)}), e.g. another --kind: train into a new folder, or "
                             "start over with --no-resume.")


def last_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete `checkpoint-N` in `out_dir` (None if there is none); incomplete ones, left by a
    run killed while saving, are deleted (a resumed run would otherwise fail on them or rotate them in)."""
    out_dir = Path(out_dir)
    steps = {int(m[1]): p for p in out_dir.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))}
    complete = None
    for step, path in sorted(steps.items()):
        if (path / COMPLETE).exists():
            complete = path
        else:
            log.warning("removing %s: a run was stopped while saving it", path)
            shutil.rmtree(path)
    return complete


def save_final(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike,
    index: Mapping[int, SemanticID] | None = None,
) -> Path:
    """`save_pretrained` model and tokenizer into `out_dir/final`, atomically (temp folder, then rename),
    with the fingerprint of the item `index` it was trained on (MODEL_INDEX_FILE), checked at loading."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        make_tokenizer_portable(tmp)  # loads with transformers 4.57 and 5.x alike
        if index is not None:
            (tmp / MODEL_INDEX_FILE).write_text(model_index_json(index))

    return write_dir(Path(out_dir) / "final", write)
