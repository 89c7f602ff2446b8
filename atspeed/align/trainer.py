"""Draft alignment: train the draft so that the target accepts more of its beams (AtSpeed, section 3).

Each training example is one `train_samples` entry (a history and its next item). It contributes
sequences = prompt + answer, the answer being an item's L tokens + EOS:

- the ground-truth item, for L_rec (and the alignment sequence of TVD-KD, as in the paper);
- the target's top `teacher_beams` items for that history (teacher data), for AtSpeed-S / -R,
  WordKD and SeqKD;
- with `on_policy`, also the draft's own top `teacher_beams` items, decoded by the current draft
  for every batch (one trie-constrained draft beam search per step).

    loss = (1 - alpha) * L_rec(ground truth) + alpha * L_align(alignment sequences)

A prompt runs once per step, not once per row: its answers run together on its KV cache
(rows.py: `answer_logits`; `answer_logits_per_row` is the plain form it equals, the reference).

L_align compares draft and frozen target logits at the L item positions, each restricted to the
tokens a valid item may take there (the trie, as decoding does) when `mask_to_valid`; SeqKD is
cross-entropy on the teacher's items; "none" is L_rec alone (the unaligned draft).

The frozen target's logits on rows that are fixed per example (the teacher items, or TVD-KD's
ground truth) can be computed once and read back instead (target_logits.py): `align(...,
target_logits=DIR)` makes them in DIR/teacher or DIR/ground-truth on first use and every later step,
epoch, seed and method reads them. Not with on_policy (the draft's rows change every step) or
without mask_to_valid (they are kept at the trie-allowed tokens only).

Runs under `accelerate launch` as well as in a plain process: the draft, optimizer and data are
prepared by an `Accelerator`; the target is only moved to the device. Every `eval_every` steps (and
before and after training) the strict speculative `recommend` runs on the first `eval_users`
validation users and records accepted levels per round; the draft with the highest acceptance is
saved as `out_dir/final` (an HF folder with the tokenizer, written atomically), the history as
`out_dir/history.json`.

Resumable: after every check but the last, the training state (draft, optimizer, schedule, random
generators, step, history) is saved in `out_dir/checkpoint` (accelerate's `save_state`, swapped in
whole). A run into the same `out_dir` with the same settings and data continues from it, on the
same batches an uninterrupted run would take (epoch e shuffles with seed + e), and removes it when
training ends.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from atspeed.align.losses import ALIGN_LOSSES, combine, rec_loss, seqkd_loss
from atspeed.align.rows import Rows, answer_allowed, answer_logits, encode_rows
from atspeed.align.target_logits import TargetLogits, generate_target_logits, load_target_logits
from atspeed.align.teacher import TeacherData, sha256_json, weights_sha256
from atspeed.decoding.checks import check_positive
from atspeed.files import swap_dir, write_text
from atspeed.rec.data import MAX_HISTORY, RecDataset, eval_cases, train_samples
from atspeed.rec.recommend import Recommender, build_recommender, recommend
from atspeed.rec.tokenizer import ItemVocab
from atspeed.rec.train import save_final
from atspeed.rec.trie import ItemTrie

METHODS = ("atspeed-s", "atspeed-r", "wordkd", "tvdkd", "seqkd", "none")
TEACHER_METHODS = ("atspeed-s", "atspeed-r", "wordkd", "seqkd")  # align on the target's beams
ON_POLICY_METHODS = ("atspeed-s", "atspeed-r", "wordkd")  # compare logits on any sequence, the draft's too
SCHEDULES = {"linear": "linear", "constant": "constant_with_warmup"}  # ours -> transformers.get_scheduler


@dataclass
class AlignConfig:
    method: str = "atspeed-s"  # one of METHODS
    alpha: float = 0.7  # weight of L_align; 1 - alpha weighs L_rec
    top_k: int = 20  # AtSpeed-S: size of the draft's top-k set S
    renormalize: bool = True  # AtSpeed-S: distributions renormalised over S (False: the paper code's default)
    temperature: float = 1.0
    mask_to_valid: bool = True  # compare distributions over the trie's valid tokens only
    teacher_beams: int = 20  # train on the target's top teacher_beams items (<= teacher K)
    on_policy: bool = False  # also align on the draft's own top teacher_beams items
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (None: all epochs)
    batch_size: int = 16  # training examples (histories) per step; each gives 1 + teacher_beams sequences
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "linear"  # "linear" (warmup, then linear decay to 0) or "constant" (after warmup)
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    eval_every: int = 500  # steps between acceptance checks; 0: only before and after training
    eval_users: int = 256  # the first eval_users validation users
    eval_batch_size: int = 16  # users per batch of the acceptance check (each user's rounds are its own)
    k: int = 20  # beams K of the acceptance check
    draft_beams: int | None = None  # draft beams N of the acceptance check (default 2K)
    gamma: int = 3  # drafted levels per round in the acceptance check


@dataclass
class AlignResult:
    final: Path  # out_dir/final: the draft with the best acceptance
    history: list[dict]  # one entry per acceptance check: step, acceptance, target_calls, loss
    losses: list[float] = field(default_factory=list)  # training loss of every step
    best_step: int = 0
    best_acceptance: float = float("-inf")
    resumed_step: int = 0  # the step this call started from (0 unless it resumed a checkpoint)


@dataclass(frozen=True)
class Example:
    """One training sample: a history, its true next item, and the target's best items for it."""

    history: tuple[int, ...]
    target: int
    beams: tuple[int, ...]  # teacher items, best first (empty when the method needs none)
    prompt: int = -1  # the history's row in the teacher data (else: among the distinct histories, first seen first)


# ---------------------------------------------------------------------------------------------
# checks and data
# ---------------------------------------------------------------------------------------------


def check_config(cfg: AlignConfig, teacher: TeacherData | None) -> None:
    """Refuse settings that cannot train, with the fix in the message."""
    if cfg.method not in METHODS:
        raise ValueError(f"Unknown alignment method {cfg.method!r}; choose one of {', '.join(METHODS)}.")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the weight of L_align), got {cfg.alpha}.")
    if cfg.method in TEACHER_METHODS:
        if teacher is None:
            raise ValueError(f"Method {cfg.method!r} trains on the target's beams: pass teacher data "
                             "(atspeed.align.teacher.generate_teacher_data).")
        if not 1 <= cfg.teacher_beams <= teacher.k:
            raise ValueError(f"teacher_beams={cfg.teacher_beams} must be between 1 and the teacher data's "
                             f"K={teacher.k}; lower it or regenerate the teacher data with a larger K.")
    if cfg.on_policy and cfg.method not in ON_POLICY_METHODS:
        raise ValueError(f"on_policy needs a method that compares logits on any sequence "
                         f"({', '.join(ON_POLICY_METHODS)}), not {cfg.method!r}.")
    if cfg.on_policy and cfg.teacher_beams < 1:
        raise ValueError(f"on_policy decodes teacher_beams draft items; teacher_beams must be >= 1, "
                         f"got {cfg.teacher_beams}.")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}.")
    if not cfg.temperature > 0:
        raise ValueError(f"temperature must be > 0, got {cfg.temperature}.")
    check_positive("lr", cfg.lr)
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {cfg.max_steps}.")
    for name in ("top_k", "epochs", "batch_size", "eval_users", "eval_batch_size", "k", "gamma"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}.")
    if cfg.eval_every < 0 or cfg.warmup_steps < 0:
        raise ValueError(f"eval_every and warmup_steps must be >= 0, got {cfg.eval_every}, {cfg.warmup_steps}.")


def training_examples(dataset: RecDataset, teacher: TeacherData | None, beams: int) -> list[Example]:
    """One Example per train sample; `beams` teacher items each (none without teacher data)."""
    max_history = teacher.meta.get("max_history", MAX_HISTORY) if teacher is not None else MAX_HISTORY
    samples = train_samples(dataset, max_history)
    if teacher is None:
        prompts = {h: i for i, h in enumerate(dict.fromkeys(s.history for s in samples))}
        return [Example(s.history, s.target, (), prompts[s.history]) for s in samples]
    if teacher.meta.get("dataset", dataset.name) != dataset.name:
        raise ValueError(f"The teacher data was made for dataset {teacher.meta['dataset']!r}, "
                         f"not {dataset.name!r}.")
    rows = teacher.rows()
    missing = [s.history for s in samples if s.history not in rows]
    if missing:
        raise ValueError(f"{len(missing)} training histories have no teacher lists (e.g. {missing[0]}): the teacher "
                         "data was made from other training data. Regenerate it for this dataset.")
    items = teacher.items[:, :beams].tolist()  # [P][beams]
    return [Example(s.history, s.target, tuple(items[rows[s.history]]), rows[s.history]) for s in samples]


def fixed_rows(
    cfg: AlignConfig, dataset: RecDataset, teacher: TeacherData | None
) -> tuple[str, list[tuple[int, ...]], list[list[int]]] | None:
    """The rows whose target logits a step reads, where they are fixed per example: their name,
    the prompts (numbered as Example.prompt) and each prompt's items. None where the method reads no
    target logits, on_policy adds the draft's own rows, or without mask_to_valid."""
    if cfg.method not in ALIGN_LOSSES or cfg.on_policy or not cfg.mask_to_valid:
        return None
    if cfg.method == "tvdkd":  # every distinct next item of each history, as training_examples without teacher
        truths: dict[tuple[int, ...], dict[int, None]] = {}
        for s in train_samples(dataset, MAX_HISTORY):
            truths.setdefault(s.history, {})[s.target] = None
        return "ground-truth", list(truths), [list(t) for t in truths.values()]
    return "teacher", teacher.histories, teacher.items.tolist()  # all K, whatever teacher_beams


def make_target_logits(
    rec: Recommender, dataset: RecDataset, teacher: TeacherData | None, cfg: AlignConfig,
    folder: str | os.PathLike, progress: bool = True,
) -> Path | None:
    """The target's logits on the fixed rows of `cfg`'s method, made (or resumed, or found) in
    folder/<rows name>; None where the rows are not fixed (fixed_rows)."""
    fixed = fixed_rows(cfg, dataset, teacher)
    if fixed is None:
        return None
    name, prompts, items = fixed
    return generate_target_logits(rec, prompts, items, Path(folder) / name, rows=name, progress=progress)


def batch_rows(vocab: ItemVocab, batch: Sequence[Example], extra: Sequence[Sequence[int]] = ()) -> Rows:
    """One prompt per example. Ground-truth rows first, then each example's teacher items, then
    `extra[b]` items per example (the on-policy ones)."""
    prompt_of = list(range(len(batch)))
    items = [e.target for e in batch]
    for b, e in enumerate(batch):
        more = (*e.beams, *(extra[b] if extra else ()))
        prompt_of += [b] * len(more)
        items += more
    return replace(encode_rows(vocab, [e.history for e in batch], prompt_of, items), n_gt=len(batch),
                   prompt_index=torch.tensor([e.prompt for e in batch], dtype=torch.int64))


# ---------------------------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------------------------


def batch_loss(
    draft: PreTrainedModel,
    target: PreTrainedModel,
    rows: Rows,
    cfg: AlignConfig,
    trie: ItemTrie,
    logits_of: Callable[[PreTrainedModel, Rows], Tensor] = answer_logits,
    cached: TargetLogits | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """(1 - alpha) * L_rec + alpha * L_align on one batch; also both parts as floats, for logging.

    `logits_of` computes the answer logits (answer_logits_per_row: the reference form). `cached`:
    the target's logits are read from there (rows.prompt_index numbers its prompts), not computed."""
    L = trie.id_length
    logits = logits_of(draft, rows)  # [R, L + 1, V]
    gt, rest = slice(0, rows.n_gt), slice(rows.n_gt, None)
    rec = rec_loss(logits[gt], rows.answers[gt])
    if cfg.method == "none":
        return rec, {"rec": rec.item()}
    if cfg.method == "seqkd":
        align = seqkd_loss(logits[rest], rows.answers[rest])
    else:
        on = gt if cfg.method == "tvdkd" else rest  # TVD-KD aligns on ground truth, the others on beams
        items = rows.answers[on, :L]  # [N, L]
        allowed = answer_allowed(trie, items, logits.shape[-1]) if cfg.mask_to_valid else None  # [N, L, V]
        with torch.no_grad():
            if cached is None:
                target_logits = logits_of(target, rows.select(on))[:, :L]  # [N, L, V]
            elif allowed is None or rows.prompt_index is None:
                raise ValueError("Cached target logits need mask_to_valid (they hold the trie-allowed tokens "
                                 "only) and rows numbered by prompt (batch_rows).")
            else:
                target_logits = cached.read(trie, rows.prompt_index[rows.prompt_of[on]], items, allowed)
        mask = torch.ones(items.shape, dtype=torch.bool, device=items.device)  # [N, L]: every item token counts
        extra = {"top_k": cfg.top_k, "renormalize": cfg.renormalize} if cfg.method == "atspeed-s" else {}
        align = ALIGN_LOSSES[cfg.method](logits[on, :L], target_logits, mask,
                                         temperature=cfg.temperature, allowed=allowed, **extra)
    return combine(rec, align, cfg.alpha), {"rec": rec.item(), "align": align.item()}


# ---------------------------------------------------------------------------------------------
# acceptance
# ---------------------------------------------------------------------------------------------


def acceptance(
    rec: Recommender, histories: Sequence[Sequence[int]], cfg: AlignConfig, accelerator: Accelerator | None = None
) -> dict[str, float]:
    """Strict speculative recommend with rec.draft: accepted levels per round, and target calls (one
    per round) per user. On the static engine every user's rounds are its own, whatever the batch
    (`eval_batch_size` only sets the speed). Under several processes each decodes its share of
    `histories` and the counts are summed."""
    share = histories
    if accelerator is not None and accelerator.num_processes > 1:
        n = -(-len(histories) // accelerator.num_processes)
        share = histories[accelerator.process_index * n : (accelerator.process_index + 1) * n]
    counts = torch.zeros(3, dtype=torch.float64)  # accepted levels, rounds, users
    if share:
        out = recommend(rec, share, cfg.k, method="speculative", batch_size=cfg.eval_batch_size, engine="static",
                        draft_beams=cfg.draft_beams, gamma=cfg.gamma)
        counts += torch.tensor([out.accepted_levels, out.rounds, len(share)], dtype=torch.float64)
    if accelerator is not None and accelerator.num_processes > 1:
        counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
    accepted, rounds, users = counts.tolist()
    return {"acceptance": accepted / max(rounds, 1.0), "target_calls": rounds / max(users, 1.0)}


def on_policy_items(rec: Recommender, draft: PreTrainedModel, batch: Sequence[Example], beams: int) -> list[list[int]]:
    """The current draft's own top-`beams` items for each example's history (trie-constrained beam search)."""
    was_training = draft.training
    out = recommend(replace(rec, target=draft.eval(), draft=None), [e.history for e in batch], beams,
                    method="tree", batch_size=len(batch))
    draft.train(was_training)
    return out.items


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def align(
    target: PreTrainedModel,
    draft: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: RecDataset,
    teacher: TeacherData | None,
    out_dir: str | os.PathLike,
    cfg: AlignConfig | None = None,
    target_logits: str | os.PathLike | None = None,
) -> AlignResult:
    """Train `draft` in place to agree with the frozen `target`; save the best draft as `out_dir/final`.

    `draft` may be fresh (`new_model("draft", tokenizer)`) or an already trained, unaligned draft.
    `teacher` is required by the methods that align on the target's beams (TEACHER_METHODS).
    `target_logits`: a folder for the target's logits on the fixed rows (fixed_rows), made there on
    first use (by the main process; resumed if unfinished) and read by every step instead of the
    target's forward; ignored where the rows are not fixed.
    """
    cfg = cfg or AlignConfig()
    check_config(cfg, teacher)
    examples = training_examples(dataset, teacher if cfg.method in TEACHER_METHODS else None, cfg.teacher_beams)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    accelerator = Accelerator()
    set_seed(cfg.seed)
    target = target.to(accelerator.device)
    rec = build_recommender(target, tokenizer, dataset.index, draft)  # checks both vocabularies; trie on device
    cached = None
    if target_logits is not None:
        with accelerator.main_process_first():  # the others find it made
            folder = make_target_logits(rec, dataset, teacher, cfg, target_logits, accelerator.is_local_main_process)
        cached = None if folder is None else load_target_logits(folder).to(accelerator.device)
    valid = [c.history for c in eval_cases(dataset, "valid")[: cfg.eval_users]]
    order = torch.Generator().manual_seed(cfg.seed)  # the shuffle; reseeded per epoch, so a resumed run can redo it
    loader = DataLoader(examples, batch_size=cfg.batch_size, shuffle=True, collate_fn=list, generator=order)
    optimizer = torch.optim.AdamW(draft.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer, loader = accelerator.prepare(draft.train(), optimizer, loader)
    steps = len(loader) * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, len(loader) * cfg.epochs)
    scheduler = get_scheduler(SCHEDULES[cfg.schedule], optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=steps)
    accelerator.register_for_checkpointing(scheduler)
    result = AlignResult(final=out_dir / "final", history=[])
    recent: list[float] = []  # losses since the last check
    checkpoint = Checkpoint(out_dir / CHECKPOINT, {**asdict(cfg), "processes": accelerator.num_processes},
                            examples, target)

    def check(step: int) -> None:
        unwrapped = accelerator.unwrap_model(model)
        stats = acceptance(replace(rec, draft=unwrapped.eval()), valid, cfg, accelerator)
        unwrapped.train()
        loss = sum(recent) / len(recent) if recent else None
        result.history.append({"step": step, **stats, "loss": loss})
        recent.clear()
        if stats["acceptance"] > result.best_acceptance:
            result.best_step, result.best_acceptance = step, stats["acceptance"]
            if accelerator.is_main_process:
                save_final(unwrapped, tokenizer, out_dir, dataset.index)
        if accelerator.is_main_process:
            _write_json(out_dir / "history.json", {"config": asdict(cfg), "best_step": result.best_step,
                                                   "best_acceptance": result.best_acceptance,
                                                   "history": result.history})
        if 0 < step < steps:  # resuming at step 0 is starting afresh
            checkpoint.save(accelerator, step, result)
        accelerator.wait_for_everyone()

    step = result.resumed_step = checkpoint.load(accelerator, result)
    if step == 0:
        check(0)  # the starting draft: the baseline, and the result if training never beats it
    with tqdm(total=steps, initial=step, desc=f"align {cfg.method}", unit="step",
              disable=not accelerator.is_local_main_process) as bar:
        for epoch in range(step // len(loader), cfg.epochs):
            order.manual_seed(cfg.seed + epoch)
            done = step - epoch * len(loader)  # batches of this epoch already trained (resumed)
            for batch in accelerator.skip_first_batches(loader, done) if done else loader:
                if step == steps:
                    break
                extra: list[list[int]] = []
                if cfg.on_policy:  # decoded afresh for every batch, by the draft as it is now
                    extra = on_policy_items(rec, accelerator.unwrap_model(model), batch, cfg.teacher_beams)
                rows = batch_rows(rec.vocab, batch, extra).to(accelerator.device)
                loss, parts = batch_loss(model, target, rows, cfg, rec.trie, cached=cached)
                accelerator.backward(loss)
                if cfg.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step += 1
                result.losses.append(accelerator.reduce(loss.detach(), "mean").item())
                recent.append(result.losses[-1])
                bar.update(1)
                bar.set_postfix(loss=f"{result.losses[-1]:.4f}", **{k: f"{v:.4f}" for k, v in parts.items()})
                if cfg.eval_every and step % cfg.eval_every == 0:
                    check(step)
    if result.history[-1]["step"] != step:
        check(step)
    checkpoint.remove(accelerator)
    return result


# ---------------------------------------------------------------------------------------------
# resuming
# ---------------------------------------------------------------------------------------------

CHECKPOINT = "checkpoint"


@dataclass
class Checkpoint:
    """The training state of `align` in `folder`. A folder holding progress.json is complete: it is
    written last and removed first."""

    folder: Path
    settings: dict  # the config and the number of processes
    examples: Sequence[Example]
    target: PreTrainedModel

    @functools.cached_property
    def key(self) -> dict:
        """What a run must share with the saved one to resume it, as JSON reads it back."""
        examples = sha256_json([[e.history, e.target, e.beams] for e in self.examples])
        return json.loads(json.dumps({**self.settings, "examples": examples, "target": weights_sha256(self.target)}))

    def _sibling(self, suffix: str) -> Path:
        return self.folder.with_name(self.folder.name + suffix)

    def save(self, accelerator: Accelerator, step: int, result: AlignResult) -> None:
        """Write the state into a fresh folder, then swap it in: an interruption anywhere leaves a
        complete checkpoint (the previous one, or the new one as folder.tmp)."""
        tmp, old = self._sibling(".tmp"), self._sibling(".old")
        if accelerator.is_main_process:
            _discard(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # every process's random states are written
        if accelerator.is_main_process:
            progress = {**self.key, "step": step, "history": result.history, "losses": result.losses,
                        "best_step": result.best_step, "best_acceptance": result.best_acceptance}
            _write_json(tmp / "progress.json", progress)
            _discard(old)
            swap_dir(tmp, self.folder, old)
        accelerator.wait_for_everyone()

    def load(self, accelerator: Accelerator, result: AlignResult) -> int:
        """Restore the newest complete state into the prepared objects and `result`; the step to go
        on from (0: nothing saved)."""
        saved = [(json.loads((f / "progress.json").read_text()), f)
                 for f in (self.folder, self._sibling(".tmp"), self._sibling(".old")) if (f / "progress.json").exists()]
        if not saved:
            return 0
        progress, folder = max(saved, key=lambda p: p[0]["step"])
        changed = [k if k in ("examples", "target") else f"{k} {progress.get(k)!r} -> {v!r}"
                   for k, v in self.key.items() if progress.get(k) != v]
        if changed:
            raise ValueError(f"{folder} was saved by a run with other settings or data ({'; '.join(changed)}): "
                             "delete it to start afresh, or resume with the same ones.")
        accelerator.load_state(str(folder))
        result.history, result.losses = progress["history"], progress["losses"]
        result.best_step, result.best_acceptance = progress["best_step"], progress["best_acceptance"]
        return progress["step"]

    def remove(self, accelerator: Accelerator) -> None:
        if accelerator.is_main_process:
            for suffix in ("", ".tmp", ".old"):
                _discard(self._sibling(suffix))
        accelerator.wait_for_everyone()


def _discard(folder: Path) -> None:
    """Remove a checkpoint folder, its progress.json first, so that a half-removed one is not complete."""
    (folder / "progress.json").unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _write_json(path: Path, value: object) -> None:
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")
