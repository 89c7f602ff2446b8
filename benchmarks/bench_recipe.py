"""Training recipes, compared: which settings give the best validation NDCG@10 for the time spent.

    python benchmarks/bench_recipe.py --data ../shared/data/beauty --kind draft --epochs 3 \\
        --out /tmp/recipes --runs recipe,next-item,lr3e-3,no-decay

Each run trains a fresh, identically seeded model of recipe `--kind` (`atspeed.rec.train.train`)
with one change from the default recipe, validates it on the first `--eval-users` validation users
every epoch (trie-constrained beam search, K = 10; history = train, truth = valid) and keeps the
best epoch. Prints a markdown table (run, change, best validation Recall@10 / NDCG@10, the epoch it
came from, training minutes) and writes it with a JSON copy to OUT/recipes_<data>_<kind>.{md,json}
and benchmarks/results/. A run whose OUT/<run>/final exists is not trained again.

Runs train one after another in this process: their minutes are comparable only on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from atspeed.files import write_text
from atspeed.rec.data import load_dataset
from atspeed.rec.recipes import new_model
from atspeed.rec.tokenizer import build_tokenizer
from atspeed.rec.train import train

RESULTS = Path(__file__).resolve().parent / "results"
RUNS: dict[str, dict[str, object]] = {  # one change each from the default recipe of `train`
    "recipe": {},
    "next-item": {"objective": "next-item"},
    "lr3e-3": {"lr": 3e-3},
    "lr3e-4": {"lr": 3e-4},
    "no-decay": {"weight_decay": 0.0},
    "linear": {"scheduler": "linear", "warmup_ratio": 0.0},
    "batch256": {"batch_size": 256},
}


def run_one(name: str, data: Path, kind: str, out: Path, epochs: float, eval_users: int, seed: int) -> dict:
    """Train run `name` (or read its recorded result) and return its row."""
    done = out / name / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    ds = load_dataset(data, allow_duplicate_ids=True)
    tokenizer = build_tokenizer(ds.index)
    settings = {"batch_size": 64, **RUNS[name]}
    steps_per_epoch = -(-_examples(ds, tokenizer, settings) // int(settings["batch_size"]))
    torch.manual_seed(seed)
    model = new_model(kind, tokenizer)
    start = time.perf_counter()
    train(model, tokenizer, ds, out / name, epochs=epochs, seed=seed, save_steps=steps_per_epoch,
          eval_users=eval_users, patience=epochs + 1, save_total_limit=2, **settings)
    minutes = (time.perf_counter() - start) / 60
    history = _validations(out / name)
    best = max(history, key=lambda row: row["eval_ndcg@10"])
    row = {"run": name, "change": RUNS[name] or "(default recipe)", "kind": kind, "epochs": epochs,
           "best_epoch": best["epoch"], "recall@10": best["eval_recall@10"], "ndcg@10": best["eval_ndcg@10"],
           "minutes": minutes, "history": history}
    write_text(done, json.dumps(row, indent=1) + "\n")
    return row


def _examples(ds, tokenizer, settings: dict) -> int:
    from atspeed.rec.train import training_examples

    return len(training_examples(str(settings.get("objective", "sequence")), ds, tokenizer))


def _validations(run_dir: Path) -> list[dict]:
    """The validation rows of the run's last trainer_state.json (every checkpoint's state holds all)."""
    last = max(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    log = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return [{k: e[k] for k in ("epoch", "eval_recall@10", "eval_ndcg@10")} for e in log if "eval_ndcg@10" in e]


def table(rows: list[dict]) -> str:
    lines = ["| run | change | best epoch | valid Recall@10 | valid NDCG@10 | train minutes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        change = ", ".join(f"{k}={v}" for k, v in r["change"].items()) if isinstance(r["change"], dict) else r["change"]
        lines.append(f"| {r['run']} | {change} | {r['best_epoch']:.0f} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} "
                     f"| {r['minutes']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--kind", default="draft")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--eval-users", type=int, default=1000)
    p.add_argument("--runs", default=",".join(RUNS), help=f"subset of {', '.join(RUNS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    names = [n for n in args.runs.split(",") if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    rows = []
    for name in names:
        rows.append(run_one(name, args.data, args.kind, args.out, args.epochs, args.eval_users, args.seed))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    name = load_dataset(args.data, allow_duplicate_ids=True).name
    text = (f"# Training recipes: {args.kind} on {name}, {args.epochs} epochs, {args.eval_users} validation users\n\n"
            f"`python {' '.join(shlex.quote(a) for a in sys.argv)}`\n\n{table(rows)}\n")
    print(text)
    for folder in (args.out, RESULTS):
        write_text(folder / f"recipes_{name}_{args.kind}.md", text)
        write_text(folder / f"recipes_{name}_{args.kind}.json", json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
