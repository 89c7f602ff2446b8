"""One draft-alignment training step, before and after sharing prompts: seconds per step per method.

    python benchmarks/bench_align_step.py --data ../shared/data/beauty --out /tmp/align_step

Before: `answer_logits_per_row`, every row's whole sequence (prompt + answer) through the draft and
the target. After: `answer_logits`, each prompt once and its rows' answers on its KV cache. Both
run `batch_loss` + backward on the same batch of the committed Beauty target and draft, with the
target's top-20 teacher items of the first --users users (made once, cached in OUT/teacher); a
step here is loss + backward (the AdamW step on the 0.46M-parameter draft is the same in both).
Prints, per method, the median of --repeats timed steps of each form, their ratio, the loss of
each form and the largest draft-gradient difference (relative to the gradient's largest entry),
and the hours one epoch over the whole training split would take at that speed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from atspeed.align.rows import answer_logits, answer_logits_per_row
from atspeed.align.teacher import generate_teacher_data, load_teacher_data
from atspeed.align.trainer import METHODS, TEACHER_METHODS, AlignConfig, batch_loss, batch_rows, training_examples
from atspeed.rec.data import first_users, load_dataset, train_samples
from atspeed.rec.recommend import PRETRAINED, load_recommender


def timed_step(rec, draft, rows, cfg: AlignConfig, logits_of) -> tuple[float, float, list[torch.Tensor]]:
    """(seconds, loss, draft gradients) of one loss + backward."""
    draft.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss, _ = batch_loss(draft, rec.target, rows, cfg, rec.trie, logits_of=logits_of)
    loss.backward()
    seconds = time.perf_counter() - start
    return seconds, loss.item(), [p.grad.clone() for p in draft.parameters()]


def compare(rec, draft, rows, cfg: AlignConfig, repeats: int) -> dict:
    """Both forms on the same rows, alternating (so that load on the machine hits both alike)."""
    forms = {"before": answer_logits_per_row, "after": answer_logits}
    times: dict[str, list[float]] = {name: [] for name in forms}
    result = {}
    for i in range(repeats + 1):  # the first round warms up and is not timed
        for name, logits_of in forms.items():
            seconds, loss, grads = timed_step(rec, draft, rows, cfg, logits_of)
            if i:
                times[name].append(seconds)
            result[name] = (loss, grads)
    (before_loss, before_grads), (after_loss, after_grads) = result["before"], result["after"]
    grad_diff = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
                    for a, b in zip(after_grads, before_grads, strict=True))
    return {"before": statistics.median(times["before"]), "after": statistics.median(times["after"]),
            "before_loss": before_loss, "after_loss": after_loss, "grad_diff": grad_diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the Beauty dataset folder")
    ap.add_argument("--out", type=Path, required=True, help="work folder (the teacher data cache)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--users", type=int, default=100, help="teacher data for the train prompts of the first N users")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--teacher-beams", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rec = load_recommender(PRETRAINED / "beauty-target", args.data, PRETRAINED / "beauty-draft",
                           allow_duplicate_ids=True)
    dataset = load_dataset(args.data, allow_duplicate_ids=True)
    samples = len(train_samples(dataset))
    subset = first_users(dataset, args.users)
    teacher = load_teacher_data(generate_teacher_data(rec, subset, args.out / "teacher", k=args.teacher_beams))
    picks = random.Random(args.seed).sample(range(len(train_samples(subset))), args.batch_size)
    draft = rec.draft.train()
    steps = -(-samples // args.batch_size)
    print(f"batch of {args.batch_size} examples (train samples {picks} of the first {args.users} users), "
          f"{torch.get_num_threads()} thread(s); one epoch = {samples} samples = {steps} steps\n")
    print("| method | rows | s/step before | s/step after | speedup | loss before | loss after "
          "| max grad diff | epoch hours before | epoch hours after |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        examples = training_examples(subset, teacher if method in TEACHER_METHODS else None, args.teacher_beams)
        rows = batch_rows(rec.vocab, [examples[i] for i in picks])
        r = compare(rec, draft, rows, AlignConfig(method=method, teacher_beams=args.teacher_beams), args.repeats)
        print(f"| {method} | {rows.answers.shape[0]} | {r['before']:.3f} | {r['after']:.3f} "
              f"| {r['before'] / r['after']:.1f}x | {r['before_loss']:.6f} | {r['after_loss']:.6f} "
              f"| {r['grad_diff']:.1e} | {steps * r['before'] / 3600:.1f} | {steps * r['after'] / 3600:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
