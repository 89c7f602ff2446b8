"""Draft alignment, compared: how much each alignment method speeds up speculative beam search.

    # 1. teacher data (target's top-20) for the train prompts of the first --train-users users
    # 2. fine-tune a copy of the starting draft with each method for --epochs epochs (default 1) or
    #    --steps steps (same seed / data); --skip-eval stops here (split the methods over processes)
    # 3. on the first --eval-users test users, for each K: HF beam search and tree attention once,
    #    then strict and relaxed speculative beam search with every draft (and the untouched start);
    #    --time-users T times only the first T and counts acceptance and quality on all, untimed
    python benchmarks/bench_align.py --data .beauty --target /tmp/beauty/beauty-target/final \\
        --draft /tmp/beauty/beauty-draft/final --out /tmp/ba/beauty --train-users 2000 --steps 300 \\
        --eval-users 200 --ks 1,3,5,10,20

Prints a markdown table (method x verification x K: accepted levels per round, target calls per
user, ms per user, speedup vs HF and vs tree attention, Recall@K / NDCG@K and their change vs HF,
lists that differ from HF's) and writes it with a JSON copy to OUT/align_<data>.{md,json} and to
benchmarks/results/align_<data>.{md,json}.

Timing is per user (batch size 1) after a warm-up, and every speedup divides times measured in this
same run. Strict verification must reproduce HF's lists exactly (0 in the last column); relaxed
verification samples, so its lists differ and its quality change is reported instead.

The target's logits on the teacher rows (and TVD-KD's ground-truth rows) are computed once, in
OUT/target-logits, and read by every method's steps (`--no-target-logits`: the target runs in
every step, as before; the same losses up to float rounding).

Resumable: the teacher cache and the target logits resume, a method whose OUT/<method>/done.json
exists is not trained again (delete the folder to retrain), and one that was interrupted goes on
from its last acceptance check (OUT/<method>/checkpoint; s/step then counts this run's steps).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

from atspeed.align.teacher import generate_teacher_data, load_teacher_data, sha256_json, weights_sha256
from atspeed.align.trainer import METHODS, TEACHER_METHODS, AlignConfig, align, make_target_logits
from atspeed.files import write_text
from atspeed.rec.data import RecDataset, eval_cases, first_users, load_dataset
from atspeed.rec.metrics import evaluate
from atspeed.rec.recommend import Recommender, load_model, load_recommender, recommend
from atspeed.rec.train import save_final
from atspeed.timing import Timer

RESULTS = Path(__file__).resolve().parent / "results"
VERIFICATIONS = {"strict": "speculative", "relaxed": "speculative-relaxed"}


def _ints(value: str) -> list[int]:
    return [int(x) for x in value.split(",") if x.strip()]


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _shard(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"([0-9]+)/([0-9]+)", value)
    if match is None or not int(match[1]) < int(match[2]):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {value!r}")
    return int(match[1]), int(match[2])


def _methods(value: str) -> list[str]:
    methods = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
    return methods


def load_draft(path: Path, device: str) -> torch.nn.Module:
    return load_model(path, device, torch.float32)


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def train_all(args, rec: Recommender, subset: RecDataset, teacher, log) -> dict[str, dict]:
    """Align a fresh copy of the starting draft with each method; returns per-method training info."""
    info: dict[str, dict] = {}
    for method in args.methods:
        out = args.out / method
        done = out / "done.json"
        if done.exists():
            info[method] = json.loads(done.read_text())
            log(f"[{method}] already trained ({done}); reusing it")
            continue
        draft = load_draft(args.draft, args.device).train()
        cfg = AlignConfig(method=method, alpha=args.alpha, epochs=args.epochs, max_steps=args.steps,
                          batch_size=args.batch_size,
                          lr=args.lr, seed=args.seed, eval_every=args.align_eval_every,
                          eval_users=args.align_eval_users, k=args.teacher_k, draft_beams=args.draft_beams,
                          gamma=args.gamma, teacher_beams=args.teacher_k)
        method_teacher = teacher if method in TEACHER_METHODS else None
        logits_dir = args.out / "target-logits" if args.target_logits else None
        if logits_dir is not None:  # made by the first method that reads them, outside its s/step
            with Timer(args.device) as timer:
                made = make_target_logits(rec, subset, method_teacher, cfg, logits_dir)
            if made is not None:
                log(f"[{method}] target logits in {made} ({timer.time_cost:.0f}s; 0 if made before)")
        torch.manual_seed(args.seed)
        with Timer(args.device) as timer:
            result = align(rec.target, draft, rec.tokenizer, subset, method_teacher, out, cfg, logits_dir)
        seconds = timer.time_cost
        save_final(draft.eval(), rec.tokenizer, out / "last")  # the draft after the last step -> last/final
        losses = result.losses
        nan = sum(1 for x in losses if not math.isfinite(x))
        head, tail = losses[: max(1, len(losses) // 10)], losses[-max(1, len(losses) // 10):]
        trained = len(losses) - result.resumed_step  # steps of this call (a resumed run trained the others before)
        info[method] = {
            "method": method, "steps": len(losses), "seconds": seconds, "sec_per_step": seconds / max(1, trained),
            "resumed_step": result.resumed_step,
            "best_step": result.best_step, "best_acceptance": result.best_acceptance, "history": result.history,
            "loss_first10pct": sum(head) / len(head) if head else None,
            "loss_last10pct": sum(tail) / len(tail) if tail else None, "nonfinite_losses": nan,
            "config": asdict(cfg),
        }
        write_text(done, json.dumps(info[method], indent=2, default=str) + "\n")
        log(f"[{method}] {len(losses)} steps, {trained} in {seconds:.0f}s ({seconds / max(1, trained):.2f}s/step); "
            f"loss {info[method]['loss_first10pct']:.4f} -> {info[method]['loss_last10pct']:.4f}; "
            f"val acceptance (strict, K={cfg.k}) by step: "
            + ", ".join(f"{h['step']}:{h['acceptance']:.3f}" for h in result.history)
            + f"; kept step {result.best_step}" + (f"; {nan} NON-FINITE LOSSES" if nan else ""))
    return info


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


def run(rec: Recommender, histories, k: int, method: str, args) -> dict:
    settings = {"method": method, "batch_size": 1, "draft_beams": max(args.draft_beams, k), "gamma": args.gamma,
                "seed": args.seed}
    if args.warmup:
        recommend(rec, histories[: args.warmup], k, **settings)
    out = recommend(rec, histories, k, **settings)
    return {"items": out.items, "ms": 1e3 * out.seconds / len(histories), "calls": out.target_calls,
            "acc": out.accepted_levels / out.rounds if out.rounds else None}


def quality(items: list[list[int]], hf_items: list[list[int]], q_hf: dict, truths, k: int) -> dict:
    """Recall@K / NDCG@K of a run's lists, their change against HF's (whose metrics are q_hf), and how
    many lists differ from HF's."""
    q = evaluate(items, truths, ks=[k])
    return {"recall": q[f"recall@{k}"], "ndcg": q[f"ndcg@{k}"],
            "recall_change_vs_hf": q[f"recall@{k}"] - q_hf[f"recall@{k}"],
            "ndcg_change_vs_hf": q[f"ndcg@{k}"] - q_hf[f"ndcg@{k}"],
            "lists_differing_from_hf": sum(list(a) != list(b) for a, b in zip(items, hf_items, strict=True))}


def evaluate_all(args, rec: Recommender, drafts: dict[str, torch.nn.Module], cases) -> list[dict]:
    histories = [c.history for c in cases]
    truths = [c.truth for c in cases]
    rows: list[dict] = []
    bar = tqdm(total=len(args.ks) * (2 + 2 * len(drafts)), desc="evaluate", unit="run")
    for k in args.ks:
        runs: dict[tuple[str, str], dict] = {}
        for method in ("hf", "tree"):
            bar.set_postfix_str(f"K={k} {method}")
            runs[("-", method)] = run(rec, histories, k, method, args)
            bar.update()
        for name, draft in drafts.items():
            with_draft = replace(rec, draft=draft.eval())
            for verification, method in VERIFICATIONS.items():
                bar.set_postfix_str(f"K={k} {name} {verification}")
                runs[(name, verification)] = run(with_draft, histories, k, method, args)
                bar.update()
        hf, tree = runs[("-", "hf")], runs[("-", "tree")]
        q_hf = evaluate(hf["items"], truths, ks=[k])
        for (name, verification), r in runs.items():
            rows.append({
                "k": k, "draft": name, "verification": verification, "users": len(cases),
                "draft_beams": max(args.draft_beams, k) if name != "-" else None,
                "accepted_levels_per_round": r["acc"], "target_calls_per_user": r["calls"],
                "ms_per_user": r["ms"], "speedup_vs_hf": hf["ms"] / r["ms"], "speedup_vs_tree": tree["ms"] / r["ms"],
                **quality(r["items"], hf["items"], q_hf, truths, k),
            })
    bar.close()
    return rows


def count_run(rec: Recommender, histories, k: int, method: str, args, folder: Path,
              cached_only: bool = False) -> dict | None:
    """One untimed run over all evaluation users: the lists, and each user's rounds and accepted
    levels as if decoded alone (strict runs on the static engine, whose users accept on their own
    whatever the batch; relaxed verification samples in lockstep within a batch, so it runs one user
    at a time). Saved in `folder` under a name made from what it depends on, so that a rerun, or a
    run of another seed that decodes the same thing (the tree path, the start draft's strict
    runs), reads it instead of decoding again. `cached_only`: None instead of decoding."""
    sampled = method == VERIFICATIONS["relaxed"]
    meta = {"method": method, "k": k, "histories": sha256_json([list(h) for h in histories]),
            "target": weights_sha256(rec.target),
            "draft": weights_sha256(rec.draft) if rec.draft is not None and method != "tree" else None,
            "draft_beams": max(args.draft_beams, k), "gamma": args.gamma, "seed": args.seed if sampled else None}
    path = folder / f"k{k}-{method}-{sha256_json(meta)[:16]}.json"
    if path.exists():
        return json.loads(path.read_text())
    if cached_only:
        return None
    out = recommend(rec, histories, k, method=method, batch_size=1 if sampled else args.count_batch,
                    draft_beams=meta["draft_beams"], gamma=args.gamma, seed=args.seed,
                    engine="auto" if sampled else "static")
    result = {"meta": meta, "items": out.items, "rounds": out.rounds, "accepted": out.accepted_levels}
    folder.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(result) + "\n")
    return result


def count_all(args, rec: Recommender, drafts: dict[str, torch.nn.Module], cases,
              shard: tuple[int, int] = (0, 1), cached_only: bool = False) -> list[dict] | None:
    """Accepted levels per round, target calls (one per round) and quality of every run on all `cases`,
    untimed and resumable (in --count-cache); HF's lists are the tree path's here (the same lists:
    tests/test_tree_beam_search_exact.py), decoded in batches. With `shard` = (i, n), only every n-th
    run from the i-th is counted and nothing is returned: n processes fill the cache side by side.
    `cached_only`: the rows of the runs already counted (a K without its tree run has none), decoding none."""
    histories = [c.history for c in cases]
    truths = [c.truth for c in cases]
    folder = args.count_cache or args.out / "eval-all"
    runs = [(k, name, verification) for k in args.ks
            for name, verification in [("-", "tree")] + [(d, v) for d in drafts for v in VERIFICATIONS]]
    # counted in order of cost (the tree path, then strict runs, batched, then relaxed ones, one user at
    # a time), so that an interrupted count has whole verifications done; reported per K as listed
    order = sorted(runs, key=lambda run: ("tree", *VERIFICATIONS).index(run[2]))
    counted = {}
    for k, name, verification in tqdm(order[shard[0] :: shard[1]], desc="count (all users)", unit="run"):
        with_draft = rec if name == "-" else replace(rec, draft=drafts[name].eval())
        method = "tree" if name == "-" else VERIFICATIONS[verification]
        counted[(k, name, verification)] = count_run(with_draft, histories, k, method, args, folder, cached_only)
    if shard[1] > 1:
        return None
    rows: list[dict] = []
    for k, name, verification in runs:  # per K, the tree path comes first
        r = counted[(k, name, verification)]
        if name == "-":
            ref = r
            q_ref = None if r is None else evaluate(r["items"], truths, ks=[k])
            continue
        if r is None or ref is None:  # cached_only: not counted yet
            continue
        rows.append({
            "k": k, "draft": name, "verification": verification, "users": len(cases),
            "accepted_levels_per_round": r["accepted"] / r["rounds"],
            "target_calls_per_user": r["rounds"] / len(cases),
            **quality(r["items"], ref["items"], q_ref, truths, k),
        })
    return rows


def count_table(rows: list[dict]) -> str:
    head = ("| K | draft | verification | accepted levels/round | target calls/user | Recall@K | NDCG@K "
            "| ΔRecall vs HF | ΔNDCG vs HF | lists ≠ HF |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['draft']} | {r['verification']} | {r['accepted_levels_per_round']:.3f} "
            f"| {r['target_calls_per_user']:.2f} | {r['recall']:.4f} | {r['ndcg']:.4f} "
            f"| {r['recall_change_vs_hf']:+.4f} | {r['ndcg_change_vs_hf']:+.4f} | {r['lists_differing_from_hf']}"
            f"{' (sampled)' if r['verification'] == 'relaxed' else ''} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _f(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def table(rows: list[dict]) -> str:
    head = ("| K | draft | verification | accepted levels/round | target calls/user | ms/user | speedup vs HF "
            "| speedup vs tree | Recall@K | NDCG@K | ΔRecall vs HF | ΔNDCG vs HF | lists ≠ HF |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        exact = r["verification"] in ("hf", "tree", "strict")
        lines.append(
            f"| {r['k']} | {r['draft']} | {r['verification']} | {_f(r['accepted_levels_per_round'], '.3f')} "
            f"| {r['target_calls_per_user']:.2f} | {r['ms_per_user']:.1f} | {r['speedup_vs_hf']:.2f}x "
            f"| {r['speedup_vs_tree']:.2f}x | {r['recall']:.4f} | {r['ndcg']:.4f} "
            f"| {r['recall_change_vs_hf']:+.4f} | {r['ndcg_change_vs_hf']:+.4f} "
            f"| {r['lists_differing_from_hf']}{'' if exact or r['lists_differing_from_hf'] == 0 else ' (sampled)'} |")
    return "\n".join(lines)


def acceptance_summary(rows: list[dict], drafts: list[str], ks: list[int]) -> str:
    """Accepted levels per round only: drafts as rows, (verification, K) as columns."""
    cols = [(v, k) for v in VERIFICATIONS for k in ks]
    lines = ["| draft | " + " | ".join(f"{v} K={k}" for v, k in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    by = {(r["draft"], r["verification"], r["k"]): r for r in rows}
    for d in drafts:  # a run not counted (yet) is "—"
        lines.append(f"| {d} | " + " | ".join(_f(by.get((d, v, k), {}).get("accepted_levels_per_round"), ".3f")
                                          for v, k in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="dataset folder (index + sequential_*.txt)")
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--draft", type=Path, required=True, help="the unaligned starting draft")
    ap.add_argument("--out", type=Path, required=True, help="work folder: teacher/, <method>/, log, results")
    ap.add_argument("--methods", type=_methods, default=list(METHODS), help="comma-separated (default: all)")
    ap.add_argument("--train-users", type=int, default=2000, help="align on the train sequences of the first N users")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per method (default: --epochs epochs)")
    ap.add_argument("--epochs", type=int, default=1, help="passes over the alignment samples (unless --steps)")
    ap.add_argument("--eval-users", type=int, default=200, help="the first M test users")
    ap.add_argument("--time-users", type=_positive, default=None,
                    help="time only the first T of them (default: all); accepted levels, target calls and quality "
                    "are then also counted on all M, untimed and resumable (OUT/eval-all/)")
    ap.add_argument("--count-only", action="store_true",
                    help="only the untimed runs on all M users, into the count cache, without a report (a last run "
                    "without this flag reads them)")
    ap.add_argument("--count-progress", action="store_true",
                    help="print the untimed runs counted so far (while --count-only processes run) and exit; "
                    "decodes nothing")
    ap.add_argument("--count-shard", type=_shard, default=(0, 1), metavar="I/N",
                    help="with --count-only: every N-th untimed run from the I-th, so N processes share the work")
    ap.add_argument("--count-batch", type=_positive, default=16, help="users per batch of the untimed strict runs")
    ap.add_argument("--count-cache", type=Path, default=None,
                    help="where the untimed runs are kept (default OUT/eval-all; share one between seeds)")
    ap.add_argument("--ks", type=_ints, default=[1, 3, 5, 10, 20])
    ap.add_argument("--draft-beams", type=int, default=40, help="N (at least K)")
    ap.add_argument("--gamma", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16, help="training histories per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--alpha", type=float, default=0.7, help="(1 - alpha) L_rec + alpha L_align")
    ap.add_argument("--teacher-k", type=int, default=20, help="target beams per training prompt (and K of the "
                    "acceptance checks during training)")
    ap.add_argument("--align-eval-every", type=int, default=None,
                    help="steps between acceptance checks in training (default: steps // 4); the best is kept")
    ap.add_argument("--align-eval-users", type=int, default=64, help="validation users of each acceptance check")
    ap.add_argument("--checkpoint", choices=["final", "last"], default="final",
                    help="evaluate the best-acceptance draft (final) or the one after the last step (last)")
    ap.add_argument("--target-logits", action=argparse.BooleanOptionalAction, default=True,
                    help="compute the target's logits on the fixed training rows once, in OUT/target-logits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-eval", action="store_true",
                    help="train (and make the caches) only: split the methods over processes, then evaluate once")
    ap.add_argument("--warmup", type=int, default=2, help="untimed users before each timed run")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help="also write align_<data>.{md,json} here")
    args = ap.parse_args()
    if args.count_shard != (0, 1) and not args.count_only:
        ap.error("--count-shard needs --count-only")
    if args.count_progress and args.count_only:
        ap.error("--count-progress reads what --count-only processes write: give one of them")
    if args.count_progress:
        args.count_only = True  # the same needs (trained drafts, the counts' settings) and no training
    if args.count_only:
        if args.time_users is None or args.time_users >= args.eval_users:
            ap.error("--count-only fills the counts of a run with --time-users below --eval-users; give both")
        untrained = [m for m in args.methods if not (args.out / m / "done.json").exists()]
        if untrained:  # count-only processes run side by side: they would train the same folders at once
            ap.error(f"--count-only needs every method trained first; not yet: {', '.join(untrained)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def log(msg: str) -> None:
        tqdm.write(msg)
        log_lines.append(msg)

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    mach = machine()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    log(f"command: {command}")
    log("machine: " + ", ".join(f"{k} {v}" for k, v in mach.items()))
    log("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    wall = Timer(args.device).__enter__()  # the whole run (read at the end)

    ds = load_dataset(args.data, allow_duplicate_ids=True)
    rec = load_recommender(args.target, args.data, device=args.device, allow_duplicate_ids=True)
    start_draft = load_draft(args.draft, args.device)
    subset = first_users(ds, args.train_users)
    n_samples = sum(max(0, len(s) - 1) for s in subset.train.values())
    log(f"data {ds.name}: {ds.num_items} items, {len(ds.users)} users; alignment on the first "
        f"{len(subset.users)} users ({n_samples} train samples, {n_samples / args.batch_size:.0f} batches of "
        f"{args.batch_size}); target {n_params(rec.target) / 1e6:.2f}M params, draft "
        f"{n_params(start_draft) / 1e6:.2f}M params")
    steps = args.steps or args.epochs * math.ceil(n_samples / args.batch_size)
    if args.align_eval_every is None:
        args.align_eval_every = max(1, steps // 4)

    teacher = None
    if any(m in TEACHER_METHODS for m in args.methods) and not args.count_only:  # count-only: all trained
        with Timer(args.device) as timer:
            generate_teacher_data(rec, subset, args.out / "teacher", k=args.teacher_k)
            teacher = load_teacher_data(args.out / "teacher")
        log(f"teacher data: {len(teacher)} prompts x top-{teacher.k} in {timer.time_cost:.0f}s "
            f"({args.out / 'teacher'})")

    training = {} if args.count_only else train_all(args, rec, subset, teacher, log)
    if args.skip_eval:
        return
    drafts = {"start": start_draft}
    for method in args.methods:
        drafts[method] = load_draft(args.out / method / ("final" if args.checkpoint == "final" else "last/final"),
                                    args.device)

    cases = eval_cases(ds, "test")[: args.eval_users]
    if args.count_progress:
        rows_all = count_all(args, rec, drafts, cases, cached_only=True)
        runs = len(args.ks) * (1 + 2 * len(drafts))
        print(f"\nCounted so far on the first {len(cases)} test users: {len(rows_all)} of {runs - len(args.ks)} "
              f"speculative runs (those of a K whose tree run is counted)\n")
        print(acceptance_summary(rows_all, list(drafts), args.ks) + "\n\n" + count_table(rows_all))
        return
    if args.count_only:
        count_all(args, rec, drafts, cases, args.count_shard)
        return
    timed = cases[: args.time_users] if args.time_users else cases
    with Timer(args.device) as timer:
        rows = evaluate_all(args, rec, drafts, timed)
        rows_all = count_all(args, rec, drafts, cases) if len(timed) < len(cases) else None
    eval_seconds = timer.time_cost
    wall.__exit__()
    total = wall.time_cost

    strict_bad = [r for r in rows if r["verification"] in ("tree", "strict") and r["lists_differing_from_hf"]]
    md = [f"# Draft alignment on {ds.name}", "", f"`{command}`", "",
          "machine: " + ", ".join(f"{k} {v}" for k, v in mach.items()), "",
          (f"target {n_params(rec.target) / 1e6:.2f}M params ({args.target}), drafts "
          f"{n_params(start_draft) / 1e6:.2f}M params (start: {args.draft}); alignment: first {args.train_users} "
          f"users' train prompts, {steps} steps x batch {args.batch_size}, lr {args.lr}, alpha {args.alpha}, "
          f"teacher top-{args.teacher_k}, seed {args.seed}, "
          f"evaluated checkpoint: {args.checkpoint}; evaluation: first {len(timed)} test users, batch 1, "
          f"N = max({args.draft_beams}, K) draft beams, gamma {args.gamma}, {args.warmup} warm-up users per run."), "",
          "## Training", "",
          (f"| method | steps | s/step | loss first 10% -> last 10% | val acceptance (strict, K={args.teacher_k}) "
           "by step | kept step |"), "|---|---|---|---|---|---|"]
    for m, t in training.items():
        bad = f" (NON-FINITE: {t['nonfinite_losses']})" if t["nonfinite_losses"] else ""
        hist = ", ".join(f"{h['step']}: {h['acceptance']:.3f}" for h in t["history"])
        md.append(f"| {m} | {t['steps']} | {t['sec_per_step']:.2f} | {_f(t['loss_first10pct'], '.4f')} -> "
                  f"{_f(t['loss_last10pct'], '.4f')}{bad} "
                  f"| {hist} | {t['best_step']} |")
    md += ["", "## Accepted levels per round", "", acceptance_summary(rows, list(drafts), args.ks), "",
           "## All runs", "", table(rows), ""]
    if rows_all is not None:
        md += [f"## Counted on the first {len(cases)} test users", "",
               (f"Untimed: strict runs in batches of {args.count_batch} on the static engine (each user's own "
                "rounds), relaxed runs one user at a time, HF's lists from the tree path; target calls = rounds."), "",
               acceptance_summary(rows_all, list(drafts), args.ks), "", count_table(rows_all), ""]
        strict_bad += [r for r in rows_all if r["verification"] == "strict" and r["lists_differing_from_hf"]]
    md.append(f"Tree / strict speculative runs whose lists differ from HF's: {len(strict_bad)}. "
              f"Runtime: {total / 60:.1f} min (evaluation {eval_seconds / 60:.1f} min).")
    text = "\n".join(md) + "\n"
    print("\n" + text)
    result = {"command": command, "machine": mach, "settings": settings, "dataset": ds.name,
              "target_params": n_params(rec.target), "draft_params": n_params(start_draft),
              "training": training, "rows": rows, "rows_all": rows_all, "seconds_total": total,
              "seconds_eval": eval_seconds, "log": log_lines}
    for folder in {args.out, args.results_dir}:
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / f"align_{ds.name}.md", text)
        write_text(folder / f"align_{ds.name}.json", json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out / f'align_{ds.name}.md'} and {args.results_dir / f'align_{ds.name}.md'} (+ .json)")


if __name__ == "__main__":
    main()
