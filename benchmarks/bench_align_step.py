"""One draft-alignment training step, before and after sharing prompts, and with cached target
logits: seconds per step per method.

    python benchmarks/bench_align_step.py --data ../shared/data/beauty --out /tmp/align_step

Before: `answer_logits_per_row`, every row's whole sequence (prompt + answer) through the draft and
the target. After: `answer_logits`, each prompt once and its rows' answers on its KV cache. Cached:
after, with the target's logits read from `generate_target_logits` instead of its forward (the
methods that align on fixed rows; made afresh for the first --users users in a temporary folder
under OUT, its cost printed per prompt and scaled to the whole training split). All run
`batch_loss` + backward on the same batch of the committed Beauty target and draft, with the
target's top-20 teacher items of the first --users users (made once, cached in OUT/teacher); a
step here is loss + backward (the AdamW step on the 0.46M-parameter draft is the same in all).
Prints, per method, the median of --repeats timed steps of each form, their ratios, the loss of
each form and the largest draft-gradient difference from before (relative to the gradient's
largest entry), and the hours one epoch over the whole training split would take at that speed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from atspeed.align.rows import answer_logits, answer_logits_per_row
from atspeed.align.target_logits import LOGITS_FILE, TargetLogits, generate_target_logits, load_target_logits
from atspeed.align.teacher import generate_teacher_data, load_teacher_data, teacher_prompts
from atspeed.align.trainer import (
    METHODS,
    TEACHER_METHODS,
    AlignConfig,
    batch_loss,
    batch_rows,
    fixed_rows,
    training_examples,
)
from atspeed.rec.data import first_users, load_dataset, train_samples
from atspeed.rec.recommend import PRETRAINED, Recommender, load_recommender

FORMS = ("before", "after", "cached")


def timed_step(rec, draft, rows, cfg: AlignConfig, **form) -> tuple[float, float, list[torch.Tensor]]:
    """(seconds, loss, draft gradients) of one loss + backward; `form`: batch_loss's logits_of, cached."""
    draft.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss, _ = batch_loss(draft, rec.target, rows, cfg, rec.trie, **form)
    loss.backward()
    seconds = time.perf_counter() - start
    return seconds, loss.item(), [p.grad.clone() for p in draft.parameters()]


def compare(rec, draft, rows, cfg: AlignConfig, repeats: int, cached: TargetLogits | None) -> dict:
    """Every form on the same rows, alternating (so that load on the machine hits them alike)."""
    forms = {"before": {"logits_of": answer_logits_per_row}, "after": {"logits_of": answer_logits}}
    if cached is not None:
        forms["cached"] = {"logits_of": answer_logits, "cached": cached}
    times: dict[str, list[float]] = {name: [] for name in forms}
    result = {}
    for i in range(repeats + 1):  # the first round warms up and is not timed
        for name, form in forms.items():
            seconds, loss, grads = timed_step(rec, draft, rows, cfg, **form)
            if i:
                times[name].append(seconds)
            result[name] = (loss, grads)
    reference = result["before"][1]
    out = {}
    for name, (loss, grads) in result.items():
        out[name] = {"seconds": statistics.median(times[name]), "loss": loss,
                     "grad_diff": max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
                                      for a, b in zip(grads, reference, strict=True))}
    return out


def made_afresh(rec: Recommender, prompts, items, name: str, work: Path, full_prompts: int) -> TargetLogits:
    """The target logits of these rows, made in a new folder under `work`; prints their cost and
    size, per prompt and scaled to `full_prompts` prompts."""
    folder = Path(tempfile.mkdtemp(dir=work, prefix=f"target-logits-{name}-"))
    try:
        start = time.perf_counter()
        generate_target_logits(rec, prompts, items, folder, rows=name, progress=False)
        seconds = time.perf_counter() - start
        size = (folder / LOGITS_FILE).stat().st_size
        cached = load_target_logits(folder)
    finally:
        shutil.rmtree(folder)
    per_prompt = seconds / len(prompts)
    per_size = size / len(prompts)
    print(f"target logits on the {name} rows ({sum(map(len, items))} rows of {len(prompts)} prompts): made in "
          f"{seconds:.1f} s = {1e3 * per_prompt:.1f} ms and {per_size / 1e3:.2f} KB per prompt ({size / 1e6:.2f} MB); "
          f"all {full_prompts} training prompts: ~{per_prompt * full_prompts / 60:.0f} min, "
          f"~{per_size * full_prompts / 1e6:.0f} MB", flush=True)
    return cached


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
    full_prompts = len(teacher_prompts(dataset))
    made: dict[str, TargetLogits] = {}  # rows name -> their target logits, shared by the methods
    table = []
    for method in args.methods.split(","):
        examples = training_examples(subset, teacher if method in TEACHER_METHODS else None, args.teacher_beams)
        cfg = AlignConfig(method=method, teacher_beams=args.teacher_beams)
        cached = None
        if (fixed := fixed_rows(cfg, subset, teacher)) is not None:
            name, prompts, items = fixed
            if name not in made:
                made[name] = made_afresh(rec, prompts, items, name, args.out, full_prompts)
            cached = made[name]
        rows = batch_rows(rec.vocab, [examples[i] for i in picks])
        table.append((method, rows, compare(rec, draft, rows, cfg, args.repeats, cached)))
    print("\n| method | rows | s/step before | after | cached | before/after | after/cached | loss before | after "
          "| cached | max grad diff after | cached | epoch hours before | after | cached |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method, rows, r in table:
        seconds = {name: form["seconds"] for name, form in r.items()}
        cells = [method, rows.answers.shape[0], *(_cell(r, name, "seconds", ".3f") for name in FORMS),
                 f"{seconds['before'] / seconds['after']:.1f}x",
                 f"{seconds['after'] / seconds['cached']:.1f}x" if "cached" in r else "—",
                 *(_cell(r, name, "loss", ".6f") for name in FORMS),
                 *(_cell(r, name, "grad_diff", ".1e") for name in FORMS[1:]),
                 *(f"{steps * seconds[name] / 3600:.2f}" if name in r else "—" for name in FORMS)]
        print("| " + " | ".join(map(str, cells)) + " |", flush=True)


def _cell(result: dict, form: str, key: str, fmt: str) -> str:
    return format(result[form][key], fmt) if form in result else "—"


if __name__ == "__main__":
    main()
