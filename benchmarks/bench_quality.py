"""Recommendation quality on every test user: the target and draft beside popularity and SASRec.

    python benchmarks/bench_quality.py --data ../shared/data/beauty \\
        --target atspeed/rec/pretrained/beauty-target --draft atspeed/rec/pretrained/beauty-draft

Same split, same users (`eval_cases(ds, "test")`, all of them unless --users), same metric code
(`atspeed.rec.metrics.evaluate`). The generative models are decoded by trie-constrained beam search
with K beams for each K (tree attention: exactly HF's lists), batched. Popularity ranks the items of
train + valid; SASRec's figures are read from its own run (`benchmarks/sasrec.py`, the JSON given by
--sasrec; the row is left out, with a note, when that file is missing or was made on other
interactions or users: its `splits_sha256` must be this dataset's, so a reindexed copy matches).
The goal lines compare the target with them: Recall/NDCG >= 2x popularity at every K, NDCG@10 >=
SASRec's, and the draft's Recall as a fraction of the target's. Writes benchmarks/results/<data>_quality.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import transformers

from atspeed.files import write_text
from atspeed.rec.baselines import popularity_lists
from atspeed.rec.data import RecDataset, eval_cases, load_dataset, splits_sha256
from atspeed.rec.evaluate import evaluate_decoding
from atspeed.rec.metrics import evaluate
from atspeed.rec.recommend import build_recommender, load_recommender

RESULTS = Path(__file__).resolve().parent / "results"


def beam_search_quality(rec, cases, ks, batch_size: int) -> tuple[dict[str, float], float]:
    """Recall/NDCG at each K (one beam search with K beams per K: `evaluate_decoding`'s tree rows)
    and the decoding seconds."""
    rows = evaluate_decoding(rec, cases, ks, ["tree"], batch_size=batch_size)
    quality = {f"{metric}@{r.k}": getattr(r, metric) for r in rows for metric in ("recall", "ndcg")}
    return quality, sum(r.ms_per_user * r.users for r in rows) / 1e3


def table(rows: dict[str, dict[str, float]], ks) -> str:
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    head = "| model | " + " | ".join(c.replace("recall", "Recall").replace("ndcg", "NDCG") for c in cols) + " |"
    lines = [head, "|---|" + "---|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |" for name, r in rows.items()]
    return "\n".join(lines)


def goals(rows: dict[str, dict[str, float]], ks) -> list[str]:
    """The issue's goals, as measured ratios."""
    target, pop = rows["target"], rows["popularity"]
    lines = ["target / popularity: " + ", ".join(
        f"{m}@{k} {target[f'{m}@{k}'] / pop[f'{m}@{k}']:.2f}x" for k in ks for m in ("recall", "ndcg"))]
    if "SASRec" in rows and "ndcg@10" in target:
        lines.append(f"target NDCG@10 / SASRec NDCG@10: {target['ndcg@10'] / rows['SASRec']['ndcg@10']:.2f}")
    if "draft" in rows:
        lines.append("draft / target Recall: " + ", ".join(
            f"@{k} {rows['draft'][f'recall@{k}'] / target[f'recall@{k}']:.2f}" for k in ks))
    return lines


def sasrec_row(path: Path, ds: RecDataset, users: int) -> dict[str, float] | None:
    """SASRec's test metrics from benchmarks/sasrec.py's JSON where it ran on `ds`'s interactions and
    `users` test users (the split fingerprint; the dataset name for files older than it), else None."""
    if not path.exists():
        print(f"no SASRec row: {path} does not exist")
        return None
    report = json.loads(path.read_text())
    meta = report["meta"]
    same_split = meta["splits_sha256"] == splits_sha256(ds) if "splits_sha256" in meta else meta["dataset"] == ds.name
    if not same_split or meta["users"] != users:
        print(f"no SASRec row: {path} was made on other interactions or users ({meta['dataset']}, {meta['users']} "
              f"test users) than these ({ds.name}, {users})")
        return None
    return report["test"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--target", type=Path, required=True)
    p.add_argument("--draft", type=Path, default=None)
    p.add_argument("--sasrec", type=Path, default=RESULTS / "beauty_sasrec.json", help="benchmarks/sasrec.py's JSON")
    p.add_argument("--ks", default="5,10,20")
    p.add_argument("--users", type=int, default=None, help="the first N test users (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--tag", default="", help="results go to <dataset>_quality[_TAG].{md,json}")
    args = p.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    ds = load_dataset(args.data, allow_duplicate_ids=True)
    cases = eval_cases(ds, "test")[: args.users]
    rec = load_recommender(args.target, args.data, args.draft, allow_duplicate_ids=True)
    rows: dict[str, dict[str, float]] = {"popularity": evaluate(popularity_lists(ds, cases, max(ks)),
                                                                [c.truth for c in cases], ks)}
    sasrec = sasrec_row(args.sasrec, ds, len(cases))
    if sasrec is not None:
        rows["SASRec"] = sasrec
    seconds = {}
    if rec.draft is not None:
        draft = build_recommender(rec.draft, rec.tokenizer, rec.index)
        rows["draft"], seconds["draft"] = beam_search_quality(draft, cases, ks, args.batch_size)
    rows["target"], seconds["target"] = beam_search_quality(rec, cases, ks, args.batch_size)
    sizes = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in (("target", rec.target),
                                                                              ("draft", rec.draft)) if m is not None}
    text = "\n".join([
        f"# Quality on {ds.name}: {len(cases)} test users (history = train + valid, last 20; truth = test items)",
        "",
        f"`python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        "",
        f"target {sizes['target']:.2f} M parameters" + (f", draft {sizes['draft']:.2f} M" if "draft" in sizes else "")
        + f"; beam search with K beams per K, batch {args.batch_size}; "
        + ", ".join(f"{n} decoded in {s:.0f} s" for n, s in seconds.items())
        + f" ({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__})",
        "",
        table(rows, ks),
        "",
        *[f"- {line}" for line in goals(rows, ks)],
        "",
    ])
    print(text)
    report = {"dataset": ds.name, "users": len(cases), "ks": ks, "rows": rows, "seconds": seconds,
              "parameters_m": sizes, "command": sys.argv, "date": time.strftime("%Y-%m-%d")}
    stem = f"{ds.name}_quality" + (f"_{args.tag}" if args.tag else "")
    write_text(RESULTS / f"{stem}.md", text)
    write_text(RESULTS / f"{stem}.json", json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
